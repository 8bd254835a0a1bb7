/**
 * Runs a sweep: one trainer run per (configuration, seed) in out/runs/<config-id>/seed-<s>/, each finished
 * run sealed by its result.json, so a sweep killed part-way picks up where it stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { ioError, readJsonFile, writeJsonFile } from '../io/config';
import { LorakitError, LorakitRangeError } from '../errors';
import { assertOutputApart, makeDir } from '../io/fs';
import { childRunner } from './child';
import { trainOne, type RunOne, type RunOutcome } from './run-one';
import { compareAll, summarize, type Comparison, type Summary } from './stats';
import { configurations, jobFor, truncatedData, type Configuration, type SweepSpec } from './spec';

export interface RunRecord extends RunOutcome {
  configId: string;
  seed: number;
  /** final retain loss minus its value before training; null without retain data. */
  forgetting: number | null;
}

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
  intruders: Summary;
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

export interface RunSweepOptions {
  runOne?: RunOne;
  log?: (line: string) => void;
}

export { trainOne, type RunOne, type RunOutcome } from './run-one';

/** One run of a sweep: a configuration and a seed, at a fixed index of the sweep's run list. */
export interface SweepRun {
  index: number;
  config: Configuration;
  seed: number;
  /** out/runs/<config-id>/seed-<s>: finished when it holds result.json. */
  dir: string;
}

/**
 * The sweep as a fixed list: configurations in spec order, each with every seed in spec order. The index
 * is what a scheduler's array task or indexed job is given, so it must not depend on what has finished.
 */
export function listRuns(spec: SweepSpec): SweepRun[] {
  return configurations(spec).flatMap((config, c) =>
    spec.seeds.map((seed, s) => ({ index: c * spec.seeds.length + s, config, seed, dir: path.join(spec.out, 'runs', config.id, `seed-${seed}`) })),
  );
}

export const resultFile = (run: SweepRun): string => path.join(run.dir, 'result.json');

/** The finished runs' records, by index. */
export function readResults(spec: SweepSpec, runs = listRuns(spec)): Map<number, RunRecord> {
  const records = new Map<number, RunRecord>();
  for (const r of runs) if (fs.existsSync(resultFile(r))) records.set(r.index, readJsonFile('sweep', resultFile(r), 'ERR_IO') as RunRecord);
  return records;
}

export function checkOut(spec: SweepSpec): void {
  // Runs are deleted and rewritten under out: it must not be, hold, or lie inside the model or a data file.
  assertOutputApart('sweep', spec.out, { 'base.model': spec.base.model, 'base.data': spec.base.data, 'base.evalData': spec.base.evalData, 'base.retainData': spec.base.retainData }, "the spec's out");
}

/** Trains one run from nothing and seals it with its result.json, written aside and renamed. */
async function trainRun(spec: SweepSpec, run: SweepRun, runOne: RunOne): Promise<RunRecord> {
  const { config: c, seed, dir } = run;
  makeDir('sweep', path.dirname(dir));
  writeJsonFile('sweep', path.join(path.dirname(dir), 'config.json'), { label: c.label, values: c.values });
  // A run without result.json was cut short: start it again from nothing rather than trust its state.
  try {
    fs.rmSync(dir, { recursive: true, force: true });
  } catch (e) {
    throw ioError('sweep', 'remove the unfinished run', dir, e);
  }
  makeDir('sweep', dir);
  const size = c.values.dataSize;
  const data = size === undefined ? spec.base.data : truncatedData(spec.base.data, size as number, path.join(spec.out, 'data'));
  const outcome = await runOne({ ...jobFor(spec, c, dir, data), seed });
  const forgetting = 'retain' in outcome.final && 'retain' in outcome.start ? outcome.final.retain! - outcome.start.retain! : null;
  const record: RunRecord = { configId: c.id, seed, forgetting, ...outcome };
  // A task killed mid-write must not leave a result.json that looks finished.
  writeJsonFile('sweep', resultFile(run), record);
  return record;
}

/**
 * Runs exactly the run at `index` (what a scheduler's task does). A run whose result.json exists is left
 * alone and its record returned with `ran: false`: a retried or requeued task costs nothing.
 */
export async function runIndex(spec: SweepSpec, index: number, options: { runOne?: RunOne } = {}): Promise<{ run: SweepRun; record: RunRecord; ran: boolean }> {
  const runs = listRuns(spec);
  if (!Number.isInteger(index) || index < 0 || index >= runs.length)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `sweep: --index must be an integer from 0 to ${runs.length - 1} (the sweep has ${runs.length} runs), got ${index}`);
  checkOut(spec);
  const run = runs[index]!;
  if (fs.existsSync(resultFile(run))) return { run, record: readJsonFile('sweep', resultFile(run), 'ERR_IO') as RunRecord, ran: false };
  return { run, record: await trainRun(spec, run, options.runOne ?? trainOne), ran: true };
}

/** The sweep's summary from every run's record; a run without a result is an error naming it. */
export function summarizeRuns(spec: SweepSpec, records: Map<number, RunRecord>, counts: { ran: number; skipped: number; caveat: string | null } = { ran: 0, skipped: records.size, caveat: null }): SweepReport {
  const runs = listRuns(spec);
  const missing = runs.filter((r) => !records.has(r.index));
  if (missing.length) {
    const some = missing.slice(0, 5).map((r) => `${r.index} (${r.config.label || 'base'} seed ${r.seed})`).join(', ');
    throw new LorakitError('ERR_INVALID_ARG', `sweep: ${missing.length} of ${runs.length} runs have no result in ${path.join(spec.out, 'runs')}: ${some}${missing.length > 5 ? ', ...' : ''}; \`lorakit sweep status\` says where they are`);
  }
  const configs = configurations(spec);
  const metric = spec.base.evalData ? 'eval' : 'heldout';
  const runsOf = (c: Configuration) => runs.filter((r) => r.config.id === c.id).map((r) => records.get(r.index)!);
  const reports = configs.map((c): ConfigReport => {
    const rs = runsOf(c);
    const forgetting = rs.map((r) => r.forgetting).filter((f): f is number => f !== null);
    return {
      id: c.id, label: c.label, values: c.values, seeds: spec.seeds,
      loss: summarize(rs.map((r) => r.final[metric] ?? NaN)),
      forgetting: forgetting.length ? summarize(forgetting) : null,
      wallSec: summarize(rs.map((r) => r.wallSec)),
      tokensPerSec: summarize(rs.map((r) => r.tokensPerSec)),
      // Results written before intruders were recorded read as NaN, not as zero intruders.
      intruders: summarize(rs.map((r) => r.intruders ?? NaN)),
      peakRssBytes: Math.max(...rs.map((r) => r.peakRssBytes)),
    };
  });
  return {
    out: spec.out,
    metric,
    configs: reports,
    comparisons: compareAll(configs.map((c) => ({ id: c.id, values: runsOf(c).map((r) => r.final[metric] ?? NaN) }))),
    ...counts,
  };
}

/** The report of a sweep whose runs finished anywhere (here, on SLURM, on Kubernetes), written to out/sweep.json. */
export function gatherReport(spec: SweepSpec): SweepReport {
  const report = summarizeRuns(spec, readResults(spec));
  writeJsonFile('sweep', path.join(spec.out, 'sweep.json'), report);
  return report;
}

/**
 * Runs the sweep. One run at a time trains in this process; `parallel` > 1 starts each run in its
 * own process with an equal share of the cores, so runs do not share a thread pool or memory figures.
 */
export async function runSweep(spec: SweepSpec, options: RunSweepOptions = {}): Promise<SweepReport> {
  const threads = Math.max(1, Math.floor(os.cpus().length / spec.parallel));
  const { runOne = spec.parallel > 1 ? childRunner(threads) : trainOne, log = () => {} } = options;
  checkOut(spec);
  const runs = listRuns(spec);
  const records = readResults(spec, runs);
  const pending = runs.filter((r) => !records.has(r.index));
  const skipped = runs.length - pending.length;
  if (skipped) log(`${skipped} of ${runs.length} runs already finished: skipping them`);

  let next = 0, done = 0;
  const worker = async () => {
    while (next < pending.length) {
      const run = pending[next++]!;
      const record = await trainRun(spec, run, runOne);
      records.set(run.index, record);
      log(`run ${skipped + ++done}/${runs.length}: ${run.config.label || 'base'} seed ${run.seed} done in ${record.wallSec.toFixed(1)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(spec.parallel, Math.max(1, pending.length)) }, worker));

  const report = summarizeRuns(spec, records, {
    ran: pending.length,
    skipped,
    caveat: spec.parallel > 1 && pending.length > 1 ? `runs went ${spec.parallel} at a time in separate processes sharing the CPU (${threads} kernel thread(s) each): wall time and tokens/s reflect that sharing` : null,
  });
  writeJsonFile('sweep', path.join(spec.out, 'sweep.json'), report);
  return report;
}
