/**
 * The trainer: LoRA, QLoRA and full fine-tuning of a Hugging Face model folder on a user's data, with
 * held-out, extra and retain-set evaluation, checkpoints that resume bit-identically on the CPU, and a
 * handle that reports progress as events while the event loop stays responsive.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitTypeError } from '../errors';
import { backend } from '../backend';
import { checkChoice, checkDevice, checkSetting, describe } from '../check';
import { INIT_LORA_WEIGHTS, isTargetSpec } from '../lora/config';
import { readState, saveWeights, writeFolderAtomically } from './checkpoint';
import { prepareOut, removeStaleTemporaries } from './outdir';
import { writeJsonFile } from '../io/config';
import { isObject } from '../check';
import { makeDir } from '../io/fs';
import { PACKAGE_ROOT } from '../native/binding';
import { Progress } from './progress';
import { nearestTrainOption, TRAIN_OPTION_KEYS } from './config';
import { METHODS, type EvalRecord, type Resolved, type TrainOptions } from './options';
import { prepareData, type TrainData } from './prepare';
import { buildModel, type BuiltModel, type Resume } from './build';
import { Evaluator } from './evaluator';
import { Checkpointer } from './checkpointer';
import { trainLoop } from './loop';
import { metricsWriter, type RunIO } from './run-io';

export type { Method, TrainOptions, EvalRecord } from './options';

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

/** Checkpoint period when none is given: a stopped or crashed run loses at most this many steps. */
export const DEFAULT_SAVE_EVERY = 100;
/** Fewer optimizer steps than this rarely teach a model anything; the run says so. */
const SHORT_RUN_STEPS = 20;

function fail(msg: string): LorakitTypeError {
  return new LorakitTypeError('ERR_INVALID_ARG', `train: ${msg}`);
}

const positiveInt = (name: string, v: unknown, min = 1): number => checkSetting('train', name, v, { integer: true, min });
const finite = (name: string, v: unknown, min: number, max?: number): number => checkSetting('train', name, v, { min, max });

/** Fills in lorakit's defaults and checks every option. */
export function resolveOptions(o: TrainOptions): Resolved {
  if (o === null || typeof o !== 'object') throw fail(`options must be an object, got ${describe(o)}`);
  for (const k of Object.keys(o))
    if (!(TRAIN_OPTION_KEYS as readonly string[]).includes(k) && (o as unknown as Record<string, unknown>)[k] !== undefined)
      throw fail(`'${k}' is not an option${nearestTrainOption(k)}`);
  for (const k of ['model', 'data'] as const) if (typeof o[k] !== 'string' || o[k] === '') throw fail(`'${k}' must be a path, got ${describe(o[k])}`);
  const method = o.method ?? 'lora';
  checkChoice('train', 'method', method, METHODS, 'lora, qlora or full');
  // Validated against the loaded backend, so a machine without a GPU hears why.
  const device = checkDevice('train', o.device);
  const r = positiveInt('r', o.r ?? 16);
  if (o.steps != null && o.epochs != null) throw fail(`give 'steps' or 'epochs', not both`);
  const target = o.target ?? 'all-linear';
  if (typeof target === 'string' && !isTargetSpec(target)) throw fail(`'target' ${describe(target)} is not all-linear, attention, mlp or module names`);
  const full = method === 'full';
  return {
    model: o.model,
    data: o.data,
    method,
    r,
    alpha: finite('alpha', o.alpha ?? 2 * r, 0),
    target,
    rslora: o.rslora === true,
    init: checkChoice('train', 'init', o.init ?? true, INIT_LORA_WEIGHTS, 'true, false, gaussian or pissa'),
    dropout: finite('dropout', o.dropout ?? 0.05, 0, 0.99),
    lr: finite('lr', o.lr ?? (full ? 2e-5 : 2e-4), 0, 1),
    steps: o.steps == null ? null : positiveInt('steps', o.steps),
    epochs: o.epochs == null ? null : finite('epochs', o.epochs, 1e-9),
    batchSize: positiveInt('batchSize', o.batchSize ?? 8),
    gradAccum: positiveInt('gradAccum', o.gradAccum ?? 1),
    seqLen: positiveInt('seqLen', o.seqLen ?? 256, 2),
    warmup: o.warmup == null ? null : positiveInt('warmup', o.warmup, 0),
    schedule: checkChoice('train', 'schedule', o.schedule ?? 'cosine', ['cosine', 'linear', 'constant'] as const, 'cosine, linear or constant'),
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

/** The run's options, and the checkpoint it continues from. */
function resolveRun(options: TrainOptions): { o: Resolved; resume: Resume | null } {
  if (!options?.resume) return { o: resolveOptions(options), resume: null };
  const state = readState(options.resume);
  // A resumed run is the same job: its saved options, with only the step budget allowed to grow.
  const o = resolveOptions({ ...(state.options as unknown as TrainOptions), steps: options.steps ?? (state.options.steps as number | undefined), progress: options.progress, resume: undefined });
  return { o, resume: { dir: options.resume, state } };
}

/** Readies the output folder: a fresh run's must hold no other run; a resumed run's loses only dead temporaries. */
function prepareOutput(op: string, o: Resolved, resume: Resume | null, log: (line: string) => void): void {
  if (resume) {
    makeDir(op, o.out);
    for (const note of removeStaleTemporaries(op, o.out)) log(note);
  } else {
    for (const note of prepareOut(op, o.out, o.overwrite, { model: o.model, data: o.data, 'eval data': o.evalData, 'retain data': o.retainData })) log(note);
  }
}

/** The lines that open a run's log: what trains where, on how much data, and where checkpoints go. */
function logPlan(o: Resolved, data: TrainData, built: BuiltModel, resume: Resume | null, log: (line: string) => void): void {
  const { batcher, totalSteps } = data;
  const b = o.device === 'cpu' ? undefined : backend();
  const where = b ? `${o.device} (${b.gpus.find((g) => g.device === o.device)?.name ?? 'GPU'}, ${b.active})` : 'cpu';
  log(`lorakit train: ${o.method} on ${path.basename(path.resolve(o.model))} (${built.model.config.modelType}), ${built.trainable.toLocaleString('en-US')} trainable parameters, on ${where}`);
  log(`data: ${data.train.length} training examples, ${batcher.batchesPerEpoch} batches of ${o.batchSize} x ${o.seqLen} per epoch; ${totalSteps} steps (grad accum ${o.gradAccum}), lr ${o.lr} ${o.schedule}, warmup ${data.warmup}`);
  log(
    o.saveEvery > 0
      ? `checkpoints: every ${o.saveEvery} steps and at the end, in ${o.out}/checkpoint-N (the newest ${o.saveTotalLimit} kept)`
      : `checkpoints: at the end only (--save-every 0), in ${o.out}/checkpoint-N`,
  );
  if (!resume && totalSteps < SHORT_RUN_STEPS)
    log(
      `warning: this run has only ${totalSteps} optimizer step${totalSteps === 1 ? '' : 's'}` +
        (o.steps === null
          ? ` (${o.epochs ?? 1} epoch${(o.epochs ?? 1) === 1 ? '' : 's'} of ${data.train.length} examples packs into ${batcher.batchesPerEpoch} batch${batcher.batchesPerEpoch === 1 ? '' : 'es'} of ${o.batchSize} x ${o.seqLen}${o.gradAccum > 1 ? `, ${o.gradAccum} per step` : ''})`
          : '') +
        `; fewer than ${SHORT_RUN_STEPS} rarely teach a model anything: give more --steps or --epochs (the data repeats), or a smaller --batch-size or --seq-len`,
    );
}

/**
 * The run's record, run.json: what was asked for, resolved, so that a folder says how it was made; a
 * resume adds itself to the list. Written once the job has loaded, so that a run that failed to start
 * leaves no run behind.
 */
function writeRunRecord(op: string, o: Resolved, runId: string, resume: Resume | null): void {
  const runFile = path.join(o.out, 'run.json');
  const startedAt = new Date().toISOString();
  const record = { lorakit: lorakitVersion(), runId, model: path.resolve(o.model), startedAt, options: o };
  if (!resume) return writeJsonFile(op, runFile, record);
  let earlier: unknown = null;
  try {
    earlier = JSON.parse(fs.readFileSync(runFile, 'utf8'));
  } catch {
    // No readable record (a checkpoint copied elsewhere, or one from before run.json): start one.
  }
  const resumes = isObject(earlier) && Array.isArray(earlier.resumes) ? earlier.resumes : [];
  writeJsonFile(op, runFile, { ...(isObject(earlier) ? earlier : record), resumes: [...resumes, { from: path.resolve(resume.dir), step: resume.state.step, at: startedAt }] });
}

/** The run, step by step; the model and optimizer are freed on every path once built. */
async function run(options: TrainOptions, emitter: EventEmitter, stopRequested: () => boolean): Promise<TrainResult> {
  const op = 'train';
  const { o, resume } = resolveRun(options);
  const progress = new Progress(o.progress);
  const log = (line: string) => {
    progress.line(line);
    emitter.emit('log', line);
  };
  const runId = resume?.state.runId ?? `${new Date().toISOString().replace(/[-:.]/g, '')}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  prepareOutput(op, o, resume, log);
  const data = prepareData(o, log);
  const built = buildModel(o, resume);
  try {
    logPlan(o, data, built, resume, log);
    const metricsFile = path.join(o.out, 'metrics.jsonl');
    const io: RunIO = { log, metric: metricsWriter(op, metricsFile, !resume), emitter, progress };
    writeRunRecord(op, o, runId, resume);
    const evaluator = new Evaluator(built.model, data.evalSets, o, resume?.state.baselines ?? {}, io);
    const checkpointer = new Checkpointer(op, o, built, runId, resume, io);
    const bestDir = path.join(o.out, 'best');
    const lastDir = path.join(o.out, 'last');
    const end = await trainLoop({ o, data, built, runId, resume, evaluator, checkpointer, io, stopRequested, bestDir });
    writeFolderAtomically(lastDir, (tmp) => saveWeights(built.model, tmp, o.method, o.model));
    log(`${o.method === 'full' ? 'weights' : 'adapter'} saved to ${lastDir}${end.best !== null ? ` (best eval: ${bestDir})` : ''}`);
    return {
      steps: end.step,
      trainLoss: end.recent.length ? end.recent.reduce((a, b) => a + b, 0) / end.recent.length : NaN,
      evals: evaluator.evals,
      baselines: Object.fromEntries(evaluator.baseline),
      lastDir,
      bestDir: end.best !== null ? bestDir : null,
      checkpointDir: checkpointer.dir(end.step),
      metricsFile,
      stopped: end.stopped,
    };
  } finally {
    built.optimizer.dispose();
    built.model.dispose();
  }
}
