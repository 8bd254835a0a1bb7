/**
 * The trainer: LoRA, QLoRA and full fine-tuning of a Hugging Face model folder on a user's data, with
 * held-out, extra and retain-set evaluation, checkpoints that resume bit-identically on the CPU, and a
 * handle that reports progress as events while the event loop stays responsive.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { Batcher, loadExamples, seededPermutation, type Example } from '../data';
import { addAdapter, loadAdapter } from '../lora/adapter';
import { backend } from '../backend';
import { loadModel } from '../models';
import { type CausalLM } from '../models/causal-lm';
import { ByteTokenizer, loadTokenizer, type Tokenizer } from '../tokenizer';
import { type Device, checkDevice, describe } from '../tensor/tensor';
import { AdamW } from './adamw';
import { evaluateAsync } from './evaluate';
import { loadOptimizer, readState, saveCheckpoint, saveWeights, writeFolderAtomically, type TrainerState } from './checkpoint';
import { prepareOut, removeStaleTemporaries, runCheckpoints } from './outdir';
import { ioError, isObject, readModelConfig, writeJsonFile } from '../io/config';
import { makeDir } from '../io/fs';
import { PACKAGE_ROOT } from '../native/binding';
import { Progress, type ProgressMode } from './progress';
import { nearestTrainOption, TRAIN_OPTION_KEYS } from './config';
import { learningRate, type ScheduleKind } from './schedule';

export type Method = 'lora' | 'qlora' | 'full';

export interface TrainOptions {
  /** Model folder (config.json + safetensors + tokenizer.json). */
  model: string;
  /** Training data: .jsonl (text, prompt/completion, messages, input_ids) or .txt. */
  data: string;
  method?: Method;
  /** LoRA rank (default 16). */
  r?: number;
  /** LoRA alpha (default 2r). */
  alpha?: number;
  /** 'all-linear' (default), 'attention', 'mlp', or module names. */
  target?: string | string[];
  rslora?: boolean;
  /** PEFT's init_lora_weights: true (A Kaiming-uniform, B zero; default), 'gaussian', 'pissa', or false. */
  init?: boolean | 'gaussian' | 'pissa';
  /** LoRA dropout (default 0.05). */
  dropout?: number;
  /** Peak learning rate (default 2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning). */
  lr?: number;
  /** Optimizer steps; or give epochs. */
  steps?: number;
  epochs?: number;
  batchSize?: number;
  gradAccum?: number;
  seqLen?: number;
  /** Warmup steps (default 3% of the run). */
  warmup?: number;
  schedule?: ScheduleKind;
  /** Decoupled weight decay on matrices (default 0 for LoRA/QLoRA, 0.01 for full). */
  weightDecay?: number;
  maxGradNorm?: number;
  /** Pack examples into full rows (default true). */
  pack?: boolean;
  /** Share of the training examples held out for evaluation when no evalData is given (default 0.05). */
  evalSplit?: number;
  evalData?: string;
  /** Text from the base model's own distribution; the rise of its loss measures forgetting. */
  retainData?: string;
  /** Evaluate every N steps (default: 5 times per run), and always at the end. */
  evalEvery?: number;
  /** Checkpoint every N steps (default 100; 0: only at the end and on a stop). */
  saveEvery?: number;
  /** How many of this run's checkpoints to keep, newest first (default 2). */
  saveTotalLimit?: number;
  out?: string;
  /** Replace the run an existing `out` holds (its checkpoints, last/, best/, metrics and run.json). */
  overwrite?: boolean;
  seed?: number;
  /** A checkpoint folder to continue from. */
  resume?: string;
  device?: Device;
  progress?: ProgressMode;
}

export interface EvalRecord {
  step: number;
  split: string;
  loss: number;
  perplexity: number;
  tokens: number;
}

export interface TrainResult {
  steps: number;
  /** Mean training loss over the last logged steps. */
  trainLoss: number;
  /** Every evaluation of this process (a fresh run's include the one before training, at step 0). */
  evals: EvalRecord[];
  /** Each eval split's loss before training began, kept across resumes. */
  baselines: Record<string, number>;
  /** The folder holding the final adapter (or full weights). */
  lastDir: string;
  /** The folder holding the weights with the best held-out/eval loss. */
  bestDir: string | null;
  checkpointDir: string;
  metricsFile: string;
  /** True when the run was stopped (stop() or SIGINT) before its last step. */
  stopped: boolean;
}

export interface TrainHandle {
  /** Settles with the final metrics, or rejects with the error that ended the run. */
  readonly done: Promise<TrainResult>;
  /** `tokens` and `tokensPerSec` count the tokens the loss is computed on (not padding or prompts). */
  on(event: 'step', fn: (s: { step: number; loss: number; lr: number; gradNorm: number; tokens: number; tokensPerSec: number }) => void): this;
  on(event: 'eval', fn: (e: EvalRecord) => void): this;
  on(event: 'checkpoint', fn: (c: { step: number; dir: string }) => void): this;
  on(event: 'log', fn: (line: string) => void): this;
  /** Stops after the current step, saving a checkpoint. */
  stop(): void;
}

interface Resolved extends Required<Omit<TrainOptions, 'steps' | 'epochs' | 'evalData' | 'retainData' | 'resume' | 'evalEvery' | 'warmup'>> {
  steps: number | null;
  epochs: number | null;
  evalData: string | null;
  retainData: string | null;
  evalEvery: number | null;
  warmup: number | null;
}

/** Checkpoint period when none is given: a stopped or crashed run loses at most this many steps. */
export const DEFAULT_SAVE_EVERY = 100;
/** Fewer optimizer steps than this rarely teach a model anything; the run says so. */
const SHORT_RUN_STEPS = 20;

const TARGETS: Record<string, string[] | 'all-linear'> = {
  'all-linear': 'all-linear',
  attention: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'c_attn', 'attn.c_proj'],
  mlp: ['gate_proj', 'up_proj', 'down_proj', 'c_fc', 'mlp.c_proj'],
};

function fail(msg: string): LorakitTypeError {
  return new LorakitTypeError('ERR_INVALID_ARG', `train: ${msg}`);
}

function positiveInt(name: string, v: unknown, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `train: '${name}' must be an integer >= ${min}, got ${describe(v)}`);
  return v;
}

function finite(name: string, v: unknown, min: number, max = Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `train: '${name}' must be a number in [${min}, ${max}], got ${describe(v)}`);
  return v;
}

/** Fills in lorakit's defaults and checks every option. */
export function resolveOptions(o: TrainOptions): Resolved {
  if (o === null || typeof o !== 'object') throw fail(`options must be an object, got ${describe(o)}`);
  for (const k of Object.keys(o))
    if (!(TRAIN_OPTION_KEYS as readonly string[]).includes(k) && (o as unknown as Record<string, unknown>)[k] !== undefined)
      throw fail(`'${k}' is not an option${nearestTrainOption(k)}`);
  for (const k of ['model', 'data'] as const) if (typeof o[k] !== 'string' || o[k] === '') throw fail(`'${k}' must be a path, got ${describe(o[k])}`);
  const method = o.method ?? 'lora';
  if (!['lora', 'qlora', 'full'].includes(method)) throw fail(`'method' must be lora, qlora or full, got ${describe(method)}`);
  // Validated against the loaded backend, so a machine without a GPU hears why.
  const device = checkDevice('train', o.device);
  const r = positiveInt('r', o.r ?? 16);
  if (o.steps != null && o.epochs != null) throw fail(`give 'steps' or 'epochs', not both`);
  const target = o.target ?? 'all-linear';
  if (typeof target === 'string' && !Object.hasOwn(TARGETS, target) && !/^[\w.,|\\()*+?-]+$/.test(target)) throw fail(`'target' ${describe(target)} is not all-linear, attention, mlp or module names`);
  const full = method === 'full';
  return {
    model: o.model,
    data: o.data,
    method,
    r,
    alpha: finite('alpha', o.alpha ?? 2 * r, 0),
    target,
    rslora: o.rslora === true,
    init: (() => {
      const v = o.init ?? true;
      if (v !== true && v !== false && v !== 'gaussian' && v !== 'pissa') throw fail(`'init' must be true, false, gaussian or pissa, got ${describe(v)}`);
      return v;
    })(),
    dropout: finite('dropout', o.dropout ?? 0.05, 0, 0.99),
    lr: finite('lr', o.lr ?? (full ? 2e-5 : 2e-4), 0, 1),
    steps: o.steps == null ? null : positiveInt('steps', o.steps),
    epochs: o.epochs == null ? null : finite('epochs', o.epochs, 1e-9),
    batchSize: positiveInt('batchSize', o.batchSize ?? 8),
    gradAccum: positiveInt('gradAccum', o.gradAccum ?? 1),
    seqLen: positiveInt('seqLen', o.seqLen ?? 256, 2),
    warmup: o.warmup == null ? null : positiveInt('warmup', o.warmup, 0),
    schedule: (() => {
      const s = o.schedule ?? 'cosine';
      if (!['cosine', 'linear', 'constant'].includes(s)) throw fail(`'schedule' must be cosine, linear or constant, got ${describe(s)}`);
      return s;
    })(),
    weightDecay: finite('weightDecay', o.weightDecay ?? (full ? 0.01 : 0), 0, 1),
    maxGradNorm: finite('maxGradNorm', o.maxGradNorm ?? 1, 0),
    pack: o.pack ?? true,
    evalSplit: finite('evalSplit', o.evalSplit ?? 0.05, 0, 0.5),
    evalData: o.evalData ?? null,
    retainData: o.retainData ?? null,
    evalEvery: o.evalEvery == null ? null : positiveInt('evalEvery', o.evalEvery),
    saveEvery: positiveInt('saveEvery', o.saveEvery ?? DEFAULT_SAVE_EVERY, 0),
    saveTotalLimit: positiveInt('saveTotalLimit', o.saveTotalLimit ?? 2),
    out: (() => {
      const v = o.out ?? 'lorakit-out';
      if (typeof v !== 'string' || v === '') throw fail(`'out' must be a folder path, got ${describe(v)}`);
      return v;
    })(),
    overwrite: o.overwrite === true,
    seed: positiveInt('seed', o.seed ?? 42, 0),
    device,
    progress: o.progress ?? 'auto',
  };
}

/** Loads the model folder's tokenizer, or the byte tokenizer (said out loud) when it has none. */
function tokenizerFor(dir: string, log: (s: string) => void): Tokenizer {
  if (fs.existsSync(path.join(dir, 'tokenizer.json'))) return loadTokenizer(dir);
  log(`note: ${dir} has no tokenizer.json; using lorakit's byte tokenizer (ids 0-255 are UTF-8 bytes)`);
  return new ByteTokenizer();
}

/** Deterministic split of the training examples into train and held-out parts. */
function holdOut(examples: Example[], share: number, seed: number): { train: Example[]; heldOut: Example[] } {
  if (share === 0 || examples.length < 2) return { train: examples, heldOut: [] };
  const n = Math.max(1, Math.round(examples.length * share));
  // Stream -1: never an epoch number, so the split is independent of every epoch's order.
  const held = new Set(seededPermutation(examples.length, seed, -1).subarray(0, n));
  return { train: examples.filter((_, i) => !held.has(i)), heldOut: examples.filter((_, i) => held.has(i)) };
}

/** Starts a training run. */
export function train(options: TrainOptions): TrainHandle {
  const emitter = new EventEmitter();
  let stopRequested = false;
  const handle = Object.assign(emitter, {
    stop: () => {
      stopRequested = true;
    },
  }) as unknown as TrainHandle & EventEmitter;
  const stack = new Error().stack;
  const done = (async () => {
    await new Promise<void>((r) => setImmediate(r)); // let the caller attach listeners first
    return run(options, emitter, () => stopRequested);
  })().catch((e: unknown) => {
    if (e instanceof Error && stack) e.stack = `${e.stack}\n    --- train() called at ---\n${stack.split('\n').slice(1).join('\n')}`;
    throw e;
  });
  Object.defineProperty(handle, 'done', { value: done });
  return handle;
}

/** lorakit's version, for run.json. */
function lorakitVersion(): string {
  try {
    const pkg: unknown = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8'));
    return isObject(pkg) && typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

async function run(options: TrainOptions, emitter: EventEmitter, stopRequested: () => boolean): Promise<TrainResult> {
  let o: Resolved;
  let resumeState: TrainerState | null = null;
  if (options?.resume) {
    resumeState = readState(options.resume);
    // A resumed run is the same job: its saved options, with only the step budget allowed to grow.
    o = resolveOptions({ ...(resumeState.options as unknown as TrainOptions), steps: options.steps ?? (resumeState.options.steps as number | undefined), progress: options.progress, resume: undefined });
  } else {
    o = resolveOptions(options);
  }
  const progress = new Progress(o.progress);
  const log = (line: string) => {
    progress.line(line);
    emitter.emit('log', line);
  };
  const op = 'train';
  const runId = resumeState?.runId ?? `${new Date().toISOString().replace(/[-:.]/g, '')}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  if (resumeState) {
    makeDir(op, o.out);
    for (const note of removeStaleTemporaries(op, o.out)) log(note);
  } else {
    for (const note of prepareOut(op, o.out, o.overwrite, { model: o.model, data: o.data, 'eval data': o.evalData, 'retain data': o.retainData })) log(note);
  }
  const tokenizer = tokenizerFor(o.model, log);
  // Every file's examples longer than the model's context are split there: evaluation takes a whole example
  // at a time, and its attention costs memory quadratic in the length.
  const reading = { maxLength: readModelConfig(o.model).maxPositions, onWarning: (m: string) => log(`warning: ${m}`) };
  const all = loadExamples(o.data, tokenizer, reading);
  const split = o.evalData ? { train: all, heldOut: [] } : holdOut(all, o.evalSplit, o.seed);
  const evalSets: [string, Example[]][] = [];
  if (split.heldOut.length) evalSets.push(['heldout', split.heldOut]);
  if (o.evalData) evalSets.push(['eval', loadExamples(o.evalData, tokenizer, reading)]);
  if (o.retainData) evalSets.push(['retain', loadExamples(o.retainData, tokenizer, reading)]);
  const padId = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  const batcher = new Batcher(split.train, { seqLen: o.seqLen, batchSize: o.batchSize, pack: o.pack, seed: o.seed, padId });
  const microPerStep = o.gradAccum;
  const totalSteps = o.steps ?? Math.max(1, Math.ceil(((o.epochs ?? 1) * batcher.batchesPerEpoch) / microPerStep));
  const warmup = o.warmup ?? Math.floor(totalSteps * 0.03);
  const evalEvery = o.evalEvery ?? Math.max(1, Math.ceil(totalSteps / 5));

  // Full fine-tuning resumes from the checkpoint's weights; adapters load onto the base below.
  const model: CausalLM =
    o.method === 'qlora'
      ? loadModel(o.model, { quantize: true, device: o.device })
      : loadModel(resumeState && o.method === 'full' ? options.resume! : o.model, { device: o.device });
  let optimizer: AdamW | undefined;
  try {
    if (o.method === 'full') model.requireFullGrad();
    else if (resumeState) loadAdapter(model, options.resume!);
    else {
      // A preset, a comma-separated list of module names, or (with regex characters) PEFT's regex form.
      const t = o.target;
      // The attention and mlp presets name both families' modules; each model gets those it has, since
      // addAdapter refuses names that match nothing.
      const has = (n: string) => [...model.linears.keys()].some((k) => k === n || k.endsWith(`.${n}`));
      const preset = typeof t === 'string' && Object.hasOwn(TARGETS, t) ? TARGETS[t] : undefined;
      const target = typeof t !== 'string' ? t : preset ? (preset === 'all-linear' ? preset : preset.filter(has)) : /^[\w.,]+$/.test(t) ? t.split(',').filter(Boolean) : t;
      addAdapter(model, { r: o.r, loraAlpha: o.alpha, loraDropout: o.dropout, targetModules: target, useRslora: o.rslora, initLoraWeights: o.init, seed: o.seed });
    }
    if (o.method !== 'full') for (const l of model.linears.values()) if (l.adapter) l.adapter.dropout = o.dropout;
    const params = model.parameters();
    // Decay matrices only: biases and norm weights keep their scale (Hugging Face Trainer's rule).
    const decay = params.filter((p) => p.param.ndim >= 2), keep = params.filter((p) => p.param.ndim < 2);
    const ordered = [...decay, ...keep];
    optimizer = new AdamW(
      [{ params: decay.map((p) => p.param), weightDecay: o.weightDecay }, ...(keep.length ? [{ params: keep.map((p) => p.param), weightDecay: 0 }] : [])],
      { lr: o.lr, betas: [0.9, 0.999], eps: 1e-8 },
    );
    const orderedNames = ordered.map((p) => p.name);
    const grads = ordered.map((p) => p.grad);
    if (resumeState) loadOptimizer(options.resume!, optimizer, orderedNames);

    const trainable = ordered.reduce((s, p) => s + p.param.numel, 0);
    const b = o.device === 'cpu' ? undefined : backend();
    const where = b ? `${o.device} (${b.gpus.find((g) => g.device === o.device)?.name ?? 'GPU'}, ${b.active})` : 'cpu';
    log(`lorakit train: ${o.method} on ${path.basename(path.resolve(o.model))} (${model.config.modelType}), ${trainable.toLocaleString('en-US')} trainable parameters, on ${where}`);
    log(`data: ${split.train.length} training examples, ${batcher.batchesPerEpoch} batches of ${o.batchSize} x ${o.seqLen} per epoch; ${totalSteps} steps (grad accum ${o.gradAccum}), lr ${o.lr} ${o.schedule}, warmup ${warmup}`);
    log(
      o.saveEvery > 0
        ? `checkpoints: every ${o.saveEvery} steps and at the end, in ${o.out}/checkpoint-N (the newest ${o.saveTotalLimit} kept)`
        : `checkpoints: at the end only (--save-every 0), in ${o.out}/checkpoint-N`,
    );
    if (!resumeState && totalSteps < SHORT_RUN_STEPS)
      log(
        `warning: this run has only ${totalSteps} optimizer step${totalSteps === 1 ? '' : 's'}` +
          (o.steps === null
            ? ` (${o.epochs ?? 1} epoch${(o.epochs ?? 1) === 1 ? '' : 's'} of ${split.train.length} examples packs into ${batcher.batchesPerEpoch} batch${batcher.batchesPerEpoch === 1 ? '' : 'es'} of ${o.batchSize} x ${o.seqLen}${o.gradAccum > 1 ? `, ${o.gradAccum} per step` : ''})`
            : '') +
          `; fewer than ${SHORT_RUN_STEPS} rarely teach a model anything: give more --steps or --epochs (the data repeats), or a smaller --batch-size or --seq-len`,
      );

    const metricsFile = path.join(o.out, 'metrics.jsonl');
    const append = (text: string) => {
      try {
        fs.appendFileSync(metricsFile, text);
      } catch (e) {
        throw ioError(op, 'write', metricsFile, e);
      }
    };
    if (!resumeState) append('');
    const metric = (m: Record<string, unknown>) => append(`${JSON.stringify(m)}\n`);
    // Written once the job has loaded, so that a run that failed to start leaves no run behind.
    // The run's record: what was asked for, resolved, so that a folder says how it was made.
    const runFile = path.join(o.out, 'run.json');
    const startedAt = new Date().toISOString();
    const record = { lorakit: lorakitVersion(), runId, model: path.resolve(o.model), startedAt, options: o };
    if (!resumeState) writeJsonFile(op, runFile, record);
    else {
      let earlier: unknown = null;
      try {
        earlier = JSON.parse(fs.readFileSync(runFile, 'utf8'));
      } catch {
        // No readable record (a checkpoint copied elsewhere, or one from before run.json): start one.
      }
      const resumes = isObject(earlier) && Array.isArray(earlier.resumes) ? earlier.resumes : [];
      writeJsonFile(op, runFile, { ...(isObject(earlier) ? earlier : record), resumes: [...resumes, { from: path.resolve(options.resume!), step: resumeState.step, at: startedAt }] });
    }

    const evals: EvalRecord[] = [];
    const baseline = new Map<string, number>(Object.entries(resumeState?.baselines ?? {}));
    let retainWarned = false;
    let interrupts = 0;
    // True while a step's micro-batches run: a stop then waits for the step's end.
    let inStep = false;
    // An eval is cut short by a stop: the checkpoint it delays does not need it.
    const stopping = () => stopRequested() || interrupts > 0;
    const runEvals = async (step: number): Promise<number | null> => {
      let primary: number | null = null;
      for (const [name, ex] of evalSets) {
        const r = await evaluateAsync(model, ex, stopping);
        if (r === null) return null;
        const rec: EvalRecord = { step, split: name, loss: r.loss, perplexity: r.perplexity, tokens: r.tokens };
        evals.push(rec);
        metric({ type: 'eval', ...rec });
        emitter.emit('eval', rec);
        if (!baseline.has(name)) baseline.set(name, r.loss);
        const start = baseline.get(name)!, delta = r.loss - start;
        log(`eval ${name} @ step ${step}: loss ${r.loss.toFixed(4)} (ppl ${r.perplexity.toFixed(2)}, ${r.tokens} tokens)${step > 0 ? `, ${delta >= 0 ? '+' : ''}${delta.toFixed(4)} vs start${name === 'retain' ? ' (forgetting)' : ''}` : ''}`);
        if (name === 'retain' && !retainWarned && (r.loss > 2 * start || delta > 1)) {
          retainWarned = true;
          log(
            `warning: the retain loss rose from ${start.toFixed(4)} to ${r.loss.toFixed(4)}: the model is losing what it knew. ` +
              `The learning rate ${o.lr} is likely too high${o.method === 'full' ? ' for full fine-tuning, which needs rates about 10x below LoRA\'s (lorakit\'s default for full is 2e-5)' : ''}; lower --lr`,
          );
        }
        if (name !== 'retain' && primary === null) primary = r.loss;
      }
      return primary;
    };

    let step = resumeState?.step ?? 0;
    let micro = resumeState?.microBatches ?? 0;
    let best = resumeState?.bestEvalLoss ?? null;
    const bestDir = path.join(o.out, 'best');
    const lastDir = path.join(o.out, 'last');
    const checkpointDir = (s: number) => path.join(o.out, `checkpoint-${s}`);
    const state = (): TrainerState => ({
      version: 1, step, totalSteps, microBatches: micro, bestEvalLoss: best, runId, baselines: Object.fromEntries(baseline),
      options: { ...o, steps: totalSteps, epochs: null } as unknown as Record<string, unknown>,
    });
    // This run's checkpoints, oldest first: only these are pruned, never another run's.
    const kept = resumeState ? runCheckpoints(op, o.out, runId).filter((s) => s <= resumeState!.step) : [];
    // The newest checkpoint on disk for this run, for the stop messages.
    let lastSaved: { step: number; dir: string } | null = resumeState ? { step: resumeState.step, dir: options.resume! } : null;
    const checkpoint = () => {
      const dir = checkpointDir(step);
      saveCheckpoint(dir, model, optimizer!, orderedNames, state(), o.model);
      lastSaved = { step, dir };
      metric({ type: 'checkpoint', step, dir });
      emitter.emit('checkpoint', { step, dir });
      log(`checkpoint: ${dir}`);
      if (!kept.includes(step)) kept.push(step);
      while (kept.length > o.saveTotalLimit) {
        const p = checkpointDir(kept.shift()!);
        try {
          fs.rmSync(p, { recursive: true, force: true });
        } catch (e) {
          throw ioError(op, 'remove old checkpoint', p, e);
        }
      }
    };
    const saved = () =>
      lastSaved === null
        ? 'nothing was saved: this run has written no checkpoint yet'
        : `the last checkpoint is ${lastSaved.dir} (step ${lastSaved.step}); resume with: lorakit train --resume ${lastSaved.dir}`;

    // The first Ctrl-C stops at the end of the step (abandoning an eval) and saves; the handler runs
    // between micro-batches and eval examples, which hand the event loop a turn. A second Ctrl-C exits
    // at once, since finishing the step or saving may take long on a big model.
    const onSigint = () => {
      interrupts++;
      if (interrupts === 1) {
        log(`Ctrl-C: stopping ${inStep ? `after step ${step + 1}` : 'now'} to save a checkpoint; press Ctrl-C again to exit at once without saving (${saved()})`);
        return;
      }
      progress.line(`second Ctrl-C: exiting now, step ${step} not saved; ${saved()}`);
      process.exit(130);
    };
    process.on('SIGINT', onSigint);
    const firstStep = step;
    let stopped = false;
    const recent: number[] = [];
    try {
      if (step === 0 && evalSets.length) await runEvals(0);
      const start = Date.now();
      let tokensSeen = 0;
      while (step < totalSteps) {
        if (stopping()) {
          stopped = true;
          log(`${interrupts > 0 ? 'interrupted' : 'stopped'} at step ${step}: saving a checkpoint`);
          if (lastSaved?.step !== step) checkpoint();
          log(`resume with: lorakit train --resume ${lastSaved!.dir}`);
          break;
        }
        const lr = learningRate(step, totalSteps, o.lr, warmup, o.schedule);
        model.zeroGrad();
        inStep = true;
        let lossSum = 0, tokens = 0;
        for (let m = 0; m < microPerStep; m++) {
          const epoch = Math.floor(micro / batcher.batchesPerEpoch);
          const b = batcher.batch(epoch, micro % batcher.batchesPerEpoch, o.device);
          try {
            const r = model.forwardBackward(b.inputIds, { labels: b.labels, positions: b.positions, docStarts: b.docStarts, train: true, seed: o.seed * 1_000_003 + micro });
            if (r.tokens > 0) {
              lossSum += r.loss * r.tokens;
              tokens += r.tokens;
            }
          } finally {
            for (const t of [b.inputIds, b.labels, b.positions, b.docStarts]) t.dispose();
          }
          micro++;
          await new Promise<void>((r) => setImmediate(r));
        }
        if (tokens === 0)
          throw new LorakitError(
            'ERR_INVALID_ARG',
            `train: the batches of step ${step + 1} hold no token the loss is computed on (only prompts or padding); give a larger --seq-len or --batch-size`,
          );
        const loss = lossSum / tokens;
        if (!Number.isFinite(loss)) throw new LorakitError('ERR_NATIVE', `train: the loss is ${loss} at step ${step + 1}; stopping (the last good checkpoint is kept)`);
        let res;
        try {
          res = optimizer.step(grads, { gradScale: 1 / microPerStep, maxGradNorm: o.maxGradNorm, lr });
        } catch (e) {
          if (e instanceof LorakitRangeError && /gradient norm/.test(e.message)) throw new LorakitError('ERR_NATIVE', `train: the gradient norm is not finite at step ${step + 1}; stopping (the last good checkpoint is kept)`);
          throw e;
        }
        step++;
        inStep = false;
        tokensSeen += tokens;
        const elapsed = (Date.now() - start) / 1000;
        const tps = tokensSeen / Math.max(elapsed, 1e-3);
        recent.push(loss);
        if (recent.length > 20) recent.shift();
        metric({ type: 'step', step, loss, lr, gradNorm: res.gradNorm, tokens, tokensPerSec: tps, elapsed });
        emitter.emit('step', { step, loss, lr, gradNorm: res.gradNorm ?? NaN, tokens, tokensPerSec: tps });
        progress.step({ step, total: totalSteps, stepsThisRun: step - firstStep, loss, lr, tokensPerSec: tps, elapsedSec: elapsed });
        if (step % evalEvery === 0 || step === totalSteps) {
          const primary = await runEvals(step);
          if (primary !== null && (best === null || primary < best)) {
            best = primary;
            writeFolderAtomically(bestDir, (tmp) => saveWeights(model, tmp, o.method, o.model));
          }
        }
        if ((o.saveEvery > 0 && step % o.saveEvery === 0) || step === totalSteps) checkpoint();
      }
    } finally {
      process.off('SIGINT', onSigint);
      progress.end();
    }
    writeFolderAtomically(lastDir, (tmp) => saveWeights(model, tmp, o.method, o.model));
    log(`${o.method === 'full' ? 'weights' : 'adapter'} saved to ${lastDir}${best !== null ? ` (best eval: ${bestDir})` : ''}`);
    return {
      steps: step,
      trainLoss: recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN,
      evals,
      baselines: Object.fromEntries(baseline),
      lastDir,
      bestDir: best !== null ? bestDir : null,
      checkpointDir: checkpointDir(step),
      metricsFile,
      stopped,
    };
  } finally {
    optimizer?.dispose();
    model.dispose();
  }
}
