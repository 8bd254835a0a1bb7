/**
 * Runs a sweep: one trainer run per (configuration, seed) in out/runs/<config-id>/seed-<s>/, each finished
 * run sealed by its result.json, so a sweep killed part-way picks up where it stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { memory } from '../tensor/tensor';
import { train, type TrainOptions } from '../train/trainer';
import { compareAll, summarize, type Comparison, type Summary } from './stats';
import { configurations, jobFor, truncatedData, type Configuration, type SweepSpec } from './spec';

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
}

export interface RunRecord extends RunOutcome {
  configId: string;
  seed: number;
  /** final retain loss minus its value before training; null without retain data. */
  forgetting: number | null;
}

export type RunOne = (options: TrainOptions) => Promise<RunOutcome>;

export interface ConfigReport {
  id: string;
  label: string;
  values: Configuration['values'];
  seeds: number[];
  /** Final loss on the sweep's metric split. */
  loss: Summary;
  forgetting: Summary | null;
  wallSec: Summary;
  tokensPerSec: Summary;
  peakRssBytes: number;
}

export interface SweepReport {
  out: string;
  /** The split the comparisons use: eval when the job has evalData, else heldout. */
  metric: string;
  configs: ConfigReport[];
  /** Every pair compared on the metric's final loss (Welch's t-test, Holm-corrected). */
  comparisons: Comparison[];
  /** Runs done in this invocation, and those found finished and skipped. */
  ran: number;
  skipped: number;
  /** Set when runs shared the process (parallel > 1), which muddies their time, speed and memory. */
  caveat: string | null;
}

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
  return { start, final, wallSec, tokensPerSec: lastStep?.tokensPerSec ?? NaN, peakRssBytes: peakRss, peakTensorBytes: peakTensor };
};

export interface RunSweepOptions {
  runOne?: RunOne;
  log?: (line: string) => void;
}

function writeJson(file: string, value: unknown): void {
  // Written aside and renamed: a sweep killed mid-write must not leave a result.json that looks finished.
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(value, null, 2)}\n`);
  fs.renameSync(`${file}.tmp`, file);
}

export async function runSweep(spec: SweepSpec, { runOne = trainOne, log = () => {} }: RunSweepOptions = {}): Promise<SweepReport> {
  const configs = configurations(spec);
  const jobs = configs.flatMap((c) => spec.seeds.map((seed) => ({ c, seed, dir: path.join(spec.out, 'runs', c.id, `seed-${seed}`) })));
  const records = new Map<string, RunRecord>();
  const pending: typeof jobs = [];
  for (const j of jobs) {
    const file = path.join(j.dir, 'result.json');
    if (fs.existsSync(file)) records.set(j.dir, JSON.parse(fs.readFileSync(file, 'utf8')) as RunRecord);
    else pending.push(j);
  }
  const skipped = jobs.length - pending.length;
  if (skipped) log(`${skipped} of ${jobs.length} runs already finished: skipping them`);
  for (const c of configs) {
    fs.mkdirSync(path.join(spec.out, 'runs', c.id), { recursive: true });
    writeJson(path.join(spec.out, 'runs', c.id, 'config.json'), { label: c.label, values: c.values });
  }

  let next = 0, done = 0;
  const worker = async () => {
    while (next < pending.length) {
      const { c, seed, dir } = pending[next++]!;
      // A run without result.json was cut short: start it again from nothing rather than trust its state.
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir, { recursive: true });
      const size = c.values.dataSize;
      const data = size === undefined ? spec.base.data : truncatedData(spec.base.data, size as number, path.join(spec.out, 'data'));
      const outcome = await runOne({ ...jobFor(spec, c, dir, data), seed });
      const forgetting = 'retain' in outcome.final && 'retain' in outcome.start ? outcome.final.retain! - outcome.start.retain! : null;
      const record: RunRecord = { configId: c.id, seed, forgetting, ...outcome };
      writeJson(path.join(dir, 'result.json'), record);
      records.set(dir, record);
      log(`run ${skipped + ++done}/${jobs.length}: ${c.label || 'base'} seed ${seed} done in ${outcome.wallSec.toFixed(1)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(spec.parallel, Math.max(1, pending.length)) }, worker));

  const metric = spec.base.evalData ? 'eval' : 'heldout';
  const runsOf = (c: Configuration) => spec.seeds.map((s) => records.get(path.join(spec.out, 'runs', c.id, `seed-${s}`))!);
  const reports = configs.map((c): ConfigReport => {
    const runs = runsOf(c);
    const forgetting = runs.map((r) => r.forgetting).filter((f): f is number => f !== null);
    return {
      id: c.id, label: c.label, values: c.values, seeds: spec.seeds,
      loss: summarize(runs.map((r) => r.final[metric] ?? NaN)),
      forgetting: forgetting.length ? summarize(forgetting) : null,
      wallSec: summarize(runs.map((r) => r.wallSec)),
      tokensPerSec: summarize(runs.map((r) => r.tokensPerSec)),
      peakRssBytes: Math.max(...runs.map((r) => r.peakRssBytes)),
    };
  });
  const report: SweepReport = {
    out: spec.out,
    metric,
    configs: reports,
    comparisons: compareAll(configs.map((c) => ({ id: c.id, values: runsOf(c).map((r) => r.final[metric] ?? NaN) }))),
    ran: pending.length,
    skipped,
    caveat: spec.parallel > 1 && pending.length > 1 ? `runs shared one process ${spec.parallel} at a time: wall time, tokens/s and peak memory are of the shared process` : null,
  };
  writeJson(path.join(spec.out, 'sweep.json'), report);
  return report;
}
