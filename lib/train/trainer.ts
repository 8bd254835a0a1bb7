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
import { evaluate } from './evaluate';
import { loadOptimizer, readState, saveCheckpoint, saveWeights, type TrainerState } from './checkpoint';
import { Progress, type ProgressMode } from './progress';
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
  /** Checkpoint every N steps (default: at the end only). */
  saveEvery?: number;
  out?: string;
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
  /** Every evaluation, including the one before training (step 0). */
  evals: EvalRecord[];
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
  on(event: 'step', fn: (s: { step: number; loss: number; lr: number; gradNorm: number; tokens: number; tokensPerSec: number }) => void): this;
  on(event: 'eval', fn: (e: EvalRecord) => void): this;
  on(event: 'checkpoint', fn: (c: { step: number; dir: string }) => void): this;
  on(event: 'log', fn: (line: string) => void): this;
  /** Stops after the current step, saving a checkpoint. */
  stop(): void;
}

interface Resolved extends Required<Omit<TrainOptions, 'steps' | 'epochs' | 'evalData' | 'retainData' | 'resume' | 'evalEvery' | 'saveEvery' | 'warmup'>> {
  steps: number | null;
  epochs: number | null;
  evalData: string | null;
  retainData: string | null;
  evalEvery: number | null;
  saveEvery: number | null;
  warmup: number | null;
}

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
  for (const k of ['model', 'data'] as const) if (typeof o[k] !== 'string' || o[k] === '') throw fail(`'${k}' must be a path, got ${describe(o[k])}`);
  const method = o.method ?? 'lora';
  if (!['lora', 'qlora', 'full'].includes(method)) throw fail(`'method' must be lora, qlora or full, got ${describe(method)}`);
  // Validated against the loaded backend, so a machine without a GPU hears why.
  const device = checkDevice('train', o.device);
  const r = positiveInt('r', o.r ?? 16);
  if (o.steps != null && o.epochs != null) throw fail(`give 'steps' or 'epochs', not both`);
  const target = o.target ?? 'all-linear';
  if (typeof target === 'string' && !(target in TARGETS) && !/^[\w.,|\\()*+?-]+$/.test(target)) throw fail(`'target' ${describe(target)} is not all-linear, attention, mlp or module names`);
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
    saveEvery: o.saveEvery == null ? null : positiveInt('saveEvery', o.saveEvery),
    out: o.out ?? 'lorakit-out',
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
  fs.mkdirSync(o.out, { recursive: true });
  const metricsFile = path.join(o.out, 'metrics.jsonl');
  if (!resumeState) fs.writeFileSync(metricsFile, '');
  const metric = (m: Record<string, unknown>) => fs.appendFileSync(metricsFile, `${JSON.stringify(m)}\n`);

  const tokenizer = tokenizerFor(o.model, log);
  const all = loadExamples(o.data, tokenizer);
  const split = o.evalData ? { train: all, heldOut: [] } : holdOut(all, o.evalSplit, o.seed);
  const evalSets: [string, Example[]][] = [];
  if (split.heldOut.length) evalSets.push(['heldout', split.heldOut]);
  if (o.evalData) evalSets.push(['eval', loadExamples(o.evalData, tokenizer)]);
  if (o.retainData) evalSets.push(['retain', loadExamples(o.retainData, tokenizer)]);
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
      const target = typeof t !== 'string' ? t : t in TARGETS ? TARGETS[t]! : /^[\w.,]+$/.test(t) ? t.split(',').filter(Boolean) : t;
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

    const evals: EvalRecord[] = [];
    const baseline = new Map<string, number>(Object.entries(resumeState?.baselines ?? {}));
    const runEvals = async (step: number): Promise<number | null> => {
      let primary: number | null = null;
      for (const [name, ex] of evalSets) {
        await new Promise<void>((r) => setImmediate(r));
        const r = evaluate(model, ex);
        const rec: EvalRecord = { step, split: name, loss: r.loss, perplexity: r.perplexity, tokens: r.tokens };
        evals.push(rec);
        metric({ type: 'eval', ...rec });
        emitter.emit('eval', rec);
        if (!baseline.has(name)) baseline.set(name, r.loss);
        const delta = r.loss - baseline.get(name)!;
        log(`eval ${name} @ step ${step}: loss ${r.loss.toFixed(4)} (ppl ${r.perplexity.toFixed(2)}, ${r.tokens} tokens)${step > 0 ? `, ${delta >= 0 ? '+' : ''}${delta.toFixed(4)} vs start${name === 'retain' ? ' (forgetting)' : ''}` : ''}`);
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
      version: 1, step, totalSteps, microBatches: micro, bestEvalLoss: best, baselines: Object.fromEntries(baseline),
      options: { ...o, steps: totalSteps, epochs: null } as unknown as Record<string, unknown>,
    });
    const checkpoint = () => {
      const dir = checkpointDir(step);
      saveCheckpoint(dir, model, optimizer!, orderedNames, state(), o.model);
      metric({ type: 'checkpoint', step, dir });
      emitter.emit('checkpoint', { step, dir });
      log(`checkpoint: ${dir}`);
      // Keep the two newest checkpoints.
      const old = fs.readdirSync(o.out).filter((f) => /^checkpoint-\d+$/.test(f)).map((f) => Number(f.slice(11))).sort((a, b) => b - a).slice(2);
      for (const s of old) fs.rmSync(checkpointDir(s), { recursive: true, force: true });
    };

    let sigint = false;
    const onSigint = () => {
      sigint = true;
    };
    process.on('SIGINT', onSigint);
    if (step === 0 && evalSets.length) await runEvals(0);
    const start = Date.now();
    let tokensSeen = 0;
    const recent: number[] = [];
    let stopped = false;
    try {
      while (step < totalSteps) {
        if (stopRequested() || sigint) {
          stopped = true;
          log(`${sigint ? 'interrupted' : 'stopped'} at step ${step}: saving a checkpoint`);
          checkpoint();
          log(`resume with: lorakit train --resume ${checkpointDir(step)}`);
          break;
        }
        const lr = learningRate(step, totalSteps, o.lr, warmup, o.schedule);
        model.zeroGrad();
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
        const loss = tokens > 0 ? lossSum / tokens : NaN;
        if (!Number.isFinite(loss)) throw new LorakitError('ERR_NATIVE', `train: the loss is ${loss} at step ${step + 1}; stopping (the last good checkpoint is kept)`);
        let res;
        try {
          res = optimizer.step(grads, { gradScale: 1 / microPerStep, maxGradNorm: o.maxGradNorm, lr });
        } catch (e) {
          if (e instanceof LorakitRangeError && /gradient norm/.test(e.message)) throw new LorakitError('ERR_NATIVE', `train: the gradient norm is not finite at step ${step + 1}; stopping (the last good checkpoint is kept)`);
          throw e;
        }
        step++;
        tokensSeen += tokens;
        const elapsed = (Date.now() - start) / 1000;
        const tps = tokensSeen / Math.max(elapsed, 1e-3);
        recent.push(loss);
        if (recent.length > 20) recent.shift();
        metric({ type: 'step', step, loss, lr, gradNorm: res.gradNorm, tokens, tokensPerSec: tps, elapsed });
        emitter.emit('step', { step, loss, lr, gradNorm: res.gradNorm ?? NaN, tokens, tokensPerSec: tps });
        progress.step({ step, total: totalSteps, loss, lr, tokensPerSec: tps, elapsedSec: elapsed });
        if (step % evalEvery === 0 || step === totalSteps) {
          const primary = await runEvals(step);
          if (primary !== null && (best === null || primary < best)) {
            best = primary;
            saveWeights(model, bestDir, o.method, o.model);
          }
        }
        if ((o.saveEvery && step % o.saveEvery === 0) || step === totalSteps) checkpoint();
      }
    } finally {
      process.off('SIGINT', onSigint);
      progress.end();
    }
    saveWeights(model, lastDir, o.method, o.model);
    log(`${o.method === 'full' ? 'weights' : 'adapter'} saved to ${lastDir}${best !== null ? ` (best eval: ${bestDir})` : ''}`);
    return {
      steps: step,
      trainLoss: recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN,
      evals,
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

