/**
 * A run's training loop: optimizer steps from the run's first (or resumed) step to its last, with
 * evaluations, checkpoints, and a stop (stop() or Ctrl-C) that ends at a step boundary and saves.
 */
import { LorakitError } from '../errors';
import { type Batcher } from '../data';
import { type CausalLM } from '../models/causal-lm';
import { type Tensor } from '../tensor/tensor';
import { type AdamW, type StepOutcome } from './adamw';
import { saveWeights, writeFolderAtomically, type TrainerState } from './checkpoint';
import { type BuiltModel, type Resume } from './build';
import { type Checkpointer } from './checkpointer';
import { type Evaluator } from './evaluator';
import { type TrainData } from './prepare';
import { type RunIO } from './run-io';
import { learningRate } from './schedule';
import type { Resolved } from './options';

export interface StepInput {
  model: CausalLM;
  optimizer: AdamW;
  grads: readonly Tensor[];
  batcher: Batcher;
  o: Pick<Resolved, 'gradAccum' | 'device' | 'seed' | 'maxGradNorm'>;
  /** Steps done before this one (the messages count from 1). */
  step: number;
  /** Micro-batches done before this step: which batches it takes, and their dropout seeds. */
  micro: number;
  lr: number;
}

/**
 * One optimizer step, as a value: a non-finite loss or gradient norm is an outcome (nothing was
 * updated), which the loop turns into the error that stops the run.
 */
export type TrainStepOutcome =
  | { ok: true; loss: number; tokens: number; gradNorm?: number }
  | { ok: false; reason: 'loss'; loss: number }
  | Exclude<StepOutcome, { ok: true }>;

/** Forward and backward over the step's micro-batches (a turn for the event loop after each), then the update. */
export async function optimizerStep(input: StepInput): Promise<TrainStepOutcome> {
  const { model, batcher, o } = input;
  model.zeroGrad();
  let lossSum = 0, tokens = 0;
  for (let m = 0; m < o.gradAccum; m++) {
    const micro = input.micro + m;
    const b = batcher.batch(Math.floor(micro / batcher.batchesPerEpoch), micro % batcher.batchesPerEpoch, o.device);
    try {
      const r = model.forwardBackward(b.inputIds, { labels: b.labels, positions: b.positions, docStarts: b.docStarts, train: true, seed: o.seed * 1_000_003 + micro });
      if (r.tokens > 0) {
        lossSum += r.loss * r.tokens;
        tokens += r.tokens;
      }
    } finally {
      for (const t of [b.inputIds, b.labels, b.positions, b.docStarts]) t.dispose();
    }
    await new Promise<void>((r) => setImmediate(r));
  }
  if (tokens === 0)
    throw new LorakitError(
      'ERR_INVALID_ARG',
      `train: the batches of step ${input.step + 1} hold no token the loss is computed on (only prompts or padding); give a larger --seq-len or --batch-size`,
    );
  const loss = lossSum / tokens;
  if (!Number.isFinite(loss)) return { ok: false, reason: 'loss', loss };
  const r = input.optimizer.tryStep(input.grads, { gradScale: 1 / o.gradAccum, maxGradNorm: o.maxGradNorm, lr: input.lr });
  if (!r.ok) return r;
  return { ok: true, loss, tokens, gradNorm: r.gradNorm };
}

/** The error a refused step ends the run with (step counts from 0). */
export function nonFiniteError(outcome: Exclude<TrainStepOutcome, { ok: true }>, step: number): LorakitError {
  const what = outcome.reason === 'loss' ? `the loss is ${outcome.loss}` : 'the gradient norm is not finite';
  return new LorakitError('ERR_NATIVE', `train: ${what} at step ${step + 1}; stopping (the last good checkpoint is kept)`);
}

export interface LoopInput {
  o: Resolved;
  data: TrainData;
  built: BuiltModel;
  runId: string;
  resume: Resume | null;
  evaluator: Evaluator;
  checkpointer: Checkpointer;
  io: RunIO;
  /** The handle's stop() was called. */
  stopRequested: () => boolean;
  bestDir: string;
}

export interface LoopResult {
  /** The step the run ended at. */
  step: number;
  /** The best primary eval loss, the one best/ holds (null: none yet). */
  best: number | null;
  /** Stopped before the last step. */
  stopped: boolean;
  /** Training losses of the last (up to 20) steps. */
  recent: number[];
}

/** Where the loop is, shared with the Ctrl-C handler. */
interface LoopState {
  step: number;
  micro: number;
  best: number | null;
  /** True while a step's micro-batches run: a stop then waits for the step's end. */
  inStep: boolean;
  interrupts: number;
}

/** Runs the remaining steps; removes its Ctrl-C handler and ends the progress display on every path. */
export async function trainLoop(input: LoopInput): Promise<LoopResult> {
  const { o, data, io, resume } = input;
  const s: LoopState = { step: resume?.state.step ?? 0, micro: resume?.state.microBatches ?? 0, best: resume?.state.bestEvalLoss ?? null, inStep: false, interrupts: 0 };
  // An eval is cut short by a stop: the checkpoint it delays does not need it.
  const stopping = () => input.stopRequested() || s.interrupts > 0;
  const checkpoint = () => input.checkpointer.save(trainerState(input, s));
  const onSigint = sigintHandler(s, input);
  process.on('SIGINT', onSigint);
  const firstStep = s.step;
  let stopped = false;
  const recent: number[] = [];
  try {
    if (s.step === 0 && data.evalSets.length) await input.evaluator.run(0, stopping);
    const start = Date.now();
    let tokensSeen = 0;
    while (s.step < data.totalSteps) {
      if (stopping()) {
        stopped = true;
        io.log(`${s.interrupts > 0 ? 'interrupted' : 'stopped'} at step ${s.step}: saving a checkpoint`);
        if (input.checkpointer.lastSaved?.step !== s.step) checkpoint();
        io.log(`resume with: lorakit train --resume ${input.checkpointer.lastSaved!.dir}`);
        break;
      }
      const lr = learningRate(s.step, data.totalSteps, o.lr, data.warmup, o.schedule);
      s.inStep = true;
      const r = await optimizerStep({ model: input.built.model, optimizer: input.built.optimizer, grads: input.built.grads, batcher: data.batcher, o, step: s.step, micro: s.micro, lr });
      if (!r.ok) throw nonFiniteError(r, s.step);
      s.micro += o.gradAccum;
      s.step++;
      s.inStep = false;
      tokensSeen += r.tokens;
      const elapsed = (Date.now() - start) / 1000;
      recent.push(r.loss);
      if (recent.length > 20) recent.shift();
      reportStep(io, { step: s.step, total: data.totalSteps, stepsThisRun: s.step - firstStep, loss: r.loss, lr, gradNorm: r.gradNorm, tokens: r.tokens, tokensPerSec: tokensSeen / Math.max(elapsed, 1e-3), elapsed });
      if (s.step % data.evalEvery === 0 || s.step === data.totalSteps) await evaluateAndKeepBest(input, s, stopping);
      if ((o.saveEvery > 0 && s.step % o.saveEvery === 0) || s.step === data.totalSteps) checkpoint();
    }
  } finally {
    process.off('SIGINT', onSigint);
    io.progress.end();
  }
  return { step: s.step, best: s.best, stopped, recent };
}

/** What a checkpoint records of the run, for --resume. */
function trainerState(input: LoopInput, s: LoopState): TrainerState {
  return {
    version: 1, step: s.step, totalSteps: input.data.totalSteps, microBatches: s.micro, bestEvalLoss: s.best, runId: input.runId,
    baselines: Object.fromEntries(input.evaluator.baseline),
    options: { ...input.o, steps: input.data.totalSteps, epochs: null } as unknown as Record<string, unknown>,
  };
}

/**
 * The first Ctrl-C stops at the end of the step (abandoning an eval) and saves; the handler runs
 * between micro-batches and eval examples, which hand the event loop a turn. A second Ctrl-C exits
 * at once, since finishing the step or saving may take long on a big model.
 */
function sigintHandler(s: LoopState, input: LoopInput): () => void {
  return () => {
    s.interrupts++;
    if (s.interrupts === 1) {
      input.io.log(`Ctrl-C: stopping ${s.inStep ? `after step ${s.step + 1}` : 'now'} to save a checkpoint; press Ctrl-C again to exit at once without saving (${input.checkpointer.savedNote()})`);
      return;
    }
    input.io.progress.line(`second Ctrl-C: exiting now, step ${s.step} not saved; ${input.checkpointer.savedNote()}`);
    process.exit(130);
  };
}

interface StepReport {
  step: number;
  total: number;
  stepsThisRun: number;
  loss: number;
  lr: number;
  gradNorm: number | undefined;
  tokens: number;
  tokensPerSec: number;
  elapsed: number;
}

/** A finished step's metrics.jsonl line, 'step' event and progress display. */
function reportStep(io: RunIO, r: StepReport): void {
  const { step, loss, lr, gradNorm, tokens, tokensPerSec, elapsed } = r;
  io.metric({ type: 'step', step, loss, lr, gradNorm, tokens, tokensPerSec, elapsed });
  io.emitter.emit('step', { step, loss, lr, gradNorm: gradNorm ?? NaN, tokens, tokensPerSec });
  io.progress.step({ step, total: r.total, stepsThisRun: r.stepsThisRun, loss, lr, tokensPerSec, elapsedSec: elapsed });
}

/** Evaluates, and saves best/ when the primary eval loss is the lowest yet. */
async function evaluateAndKeepBest(input: LoopInput, s: LoopState, stopping: () => boolean): Promise<void> {
  const primary = await input.evaluator.run(s.step, stopping);
  if (primary !== null && (s.best === null || primary < s.best)) {
    s.best = primary;
    writeFolderAtomically(input.bestDir, (tmp) => saveWeights(input.built.model, tmp, input.o.method, input.o.model));
  }
}
