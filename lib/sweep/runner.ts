/**
 * Runs a sweep: one trainer run per (configuration, seed) in out/runs/<config-id>/seed-<s>/, each finished
 * run sealed by its result.json, so a sweep killed part-way picks up where it stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { ioError, readJsonFile, writeJsonFile } from '../io/config';
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

/**
 * Runs the sweep. One run at a time trains in this process; `parallel` > 1 starts each run in its
 * own process with an equal share of the cores, so runs do not share a thread pool or memory figures.
 */
export async function runSweep(spec: SweepSpec, options: RunSweepOptions = {}): Promise<SweepReport> {
  const threads = Math.max(1, Math.floor(os.cpus().length / spec.parallel));
  const { runOne = spec.parallel > 1 ? childRunner(threads) : trainOne, log = () => {} } = options;
  // Runs are deleted and rewritten under out: it must not be, hold, or lie inside the model or a data file.
  assertOutputApart('sweep', spec.out, { 'base.model': spec.base.model, 'base.data': spec.base.data, 'base.evalData': spec.base.evalData, 'base.retainData': spec.base.retainData }, "the spec's out");
  const configs = configurations(spec);
  const jobs = configs.flatMap((c) => spec.seeds.map((seed) => ({ c, seed, dir: path.join(spec.out, 'runs', c.id, `seed-${seed}`) })));
  const records = new Map<string, RunRecord>();
  const pending: typeof jobs = [];
  for (const j of jobs) {
    const file = path.join(j.dir, 'result.json');
    if (fs.existsSync(file)) records.set(j.dir, readJsonFile('sweep', file, 'ERR_IO') as RunRecord);
    else pending.push(j);
  }
  const skipped = jobs.length - pending.length;
  if (skipped) log(`${skipped} of ${jobs.length} runs already finished: skipping them`);
  for (const c of configs) {
    makeDir('sweep', path.join(spec.out, 'runs', c.id));
    writeJsonFile('sweep', path.join(spec.out, 'runs', c.id, 'config.json'), { label: c.label, values: c.values });
  }

  let next = 0, done = 0;
  const worker = async () => {
    while (next < pending.length) {
      const { c, seed, dir } = pending[next++]!;
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
      // Written aside and renamed: a sweep killed mid-write must not leave a result.json that looks finished.
      writeJsonFile('sweep', path.join(dir, 'result.json'), record);
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
      // Results written before intruders were recorded read as NaN, not as zero intruders.
      intruders: summarize(runs.map((r) => r.intruders ?? NaN)),
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
    caveat: spec.parallel > 1 && pending.length > 1 ? `runs went ${spec.parallel} at a time in separate processes sharing the CPU (${threads} kernel thread(s) each): wall time and tokens/s reflect that sharing` : null,
  };
  writeJsonFile('sweep', path.join(spec.out, 'sweep.json'), report);
  return report;
}
