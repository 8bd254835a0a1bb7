/** One sweep run: the trainer with its time, speed and memory measured. */
import * as fs from 'node:fs';
import { memory } from '../tensor/tensor';
import { train, type TrainOptions } from '../train/trainer';
import { runIntruders } from '../analysis/analyze-run';

/** What one run measured. */
export interface RunOutcome {
  /** Eval loss per split (heldout, eval, retain) before training and at the end. */
  start: Record<string, number>;
  final: Record<string, number>;
  wallSec: number;
  tokensPerSec: number;
  /** High-water mark of the process's resident memory sampled during the run. */
  peakRssBytes: number;
  /** High-water mark of lorakit's own tensor memory during the run. */
  peakTensorBytes: number;
  /** Intruder dimensions of the trained weights against the base (k = 10, ε = 0.5). */
  intruders: number;
}

export type RunOne = (options: TrainOptions) => Promise<RunOutcome>;

/** The default run: the trainer in this process, with its memory sampled while it works. */
export const trainOne: RunOne = async (options) => {
  let peakRss = process.memoryUsage.rss(), peakTensor = memory().hostBytes;
  const sample = () => {
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
    peakTensor = Math.max(peakTensor, memory().hostBytes);
  };
  const t0 = performance.now();
  const handle = train(options);
  handle.on('step', sample);
  const timer = setInterval(sample, 20);
  let result;
  try {
    result = await handle.done;
  } finally {
    clearInterval(timer);
  }
  sample();
  const wallSec = (performance.now() - t0) / 1000;
  const start: Record<string, number> = {}, final: Record<string, number> = {};
  for (const e of result.evals) {
    if (!(e.split in start)) start[e.split] = e.loss;
    final[e.split] = e.loss;
  }
  const steps = fs.readFileSync(result.metricsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; tokensPerSec?: number });
  const lastStep = steps.filter((m) => m.type === 'step').pop();
  const intruders = runIntruders(options.model, options.method ?? 'lora', result.lastDir);
  return { start, final, wallSec, tokensPerSec: lastStep?.tokensPerSec ?? NaN, peakRssBytes: peakRss, peakTensorBytes: peakTensor, intruders };
};

