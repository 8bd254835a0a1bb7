/**
 * `lorakit lab`: every arm fine-tuned on both tasks over several seeds, from the shipped pre-trained
 * model, each run measured the same way, and the seeds summarized with Student-t intervals. Each run
 * leaves its result file, so a killed lab picks up where it stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { readJsonFile, writeJsonFile } from '../io/config';
import { assertOutputApart, makeDir, writeTextFile } from '../io/fs';
import { type Example } from '../data/example';
import { loadExamples } from '../data/load';
import { runIntruders } from '../analysis/analyze-run';
import { loadAdapter } from '../adapters/adapter';
import { loadModel, type CausalLM } from '../models';
import { native, PACKAGE_ROOT } from '../native/binding';
import { summarize, type Summary } from '../sweep/stats';
import { tensor } from '../tensor/tensor';
import { loadTokenizer } from '../tokenizer';
import { train } from '../train/trainer';
import { ARMS, armScale, trainableParameters, type Arm } from './arms';
import { TASKS, makeTask, type Pair, type TaskName } from './world';

export const LAB_BASE = path.join(PACKAGE_ROOT, 'assets', 'default');

export interface LabSettings {
  steps: number;
  batchSize: number;
  seqLen: number;
  /** Held-out questions scored per task (null: all of them). */
  evalExamples: number | null;
  /** Documents of retain.txt the forgetting is measured on (null: all of them). */
  retainDocs: number | null;
  loraLr: number;
  fullLr: number;
}

/** Sized for a 2-core CPU inside ten minutes: few steps, and subsets of the eval and retain text. */
export const QUICK: Readonly<LabSettings> = { steps: 40, batchSize: 8, seqLen: 64, evalExamples: 64, retainDocs: 64, loraLr: 2e-3, fullLr: 5e-4 };
/** The lab as meant: long enough for the knowledge task to be learned, every eval and retain document. */
export const FULL: Readonly<LabSettings> = { steps: 300, batchSize: 16, seqLen: 128, evalExamples: null, retainDocs: null, loraLr: 2e-3, fullLr: 5e-4 };

export interface LabOptions {
  out: string;
  quick?: boolean;
  /** Overrides of QUICK or FULL. */
  settings?: Partial<LabSettings>;
  tasks?: readonly TaskName[];
  /** Arm ids (default: all of ARMS). */
  arms?: readonly string[];
  seeds?: readonly number[];
  base?: string;
  log?: (line: string) => void;
}

export interface Score {
  /** Token-weighted completion loss. */
  loss: number;
  /** Share of examples whose every completion token is the argmax: what greedy decoding would write. */
  exactMatch: number;
  /** Positions the loss counted. */
  tokens: number;
}

export interface RunResult {
  task: TaskName;
  arm: string;
  seed: number;
  settings: LabSettings;
  trainableParameters: number;
  trainLoss: number;
  eval: Score;
  retainLoss: number;
  /** Retain loss rise over the base the arm started from (the NF4 base for QLoRA). */
  forgetting: number;
  /** At k = 10, epsilon = 0.5; for full fine-tuning, over every changed matrix against the base. */
  intruders: number;
  /** Merged against unmerged logits on the float32 base, on the first eval question; null for full fine-tuning. */
  mergeError: { maxAbs: number; relative: number } | null;
  trainSeconds: number;
  measureSeconds: number;
  /** The largest native host allocation seen at any step, and the largest resident set. */
  peakHostBytes: number;
  peakRssBytes: number;
}

export interface ArmSummary {
  arm: string;
  what: string;
  method: Arm['method'];
  target: Arm['target'];
  r: number;
  alpha: number;
  rslora: boolean;
  scale: number | null;
  trainableParameters: number;
  seeds: number[];
  evalLoss: Summary;
  exactMatch: Summary;
  forgetting: Summary;
  intruders: Summary;
  mergeErrorRelative: Summary | null;
  trainSeconds: Summary;
  peakHostBytes: Summary;
}

export interface TaskReport {
  train: number;
  eval: number;
  base: Score;
  nf4Base: Score;
  /** What loading the base in NF4 (block 64, double quant) costs on this task's eval data. */
  quantizationTax: { lossRise: number; exactMatchChange: number };
  arms: ArmSummary[];
}

export interface LabReport {
  version: 1;
  quick: boolean;
  settings: LabSettings;
  base: string;
  seeds: number[];
  retain: { documents: number; baseLoss: number; nf4BaseLoss: number };
  tasks: Partial<Record<TaskName, TaskReport>>;
  runs: RunResult[];
  ran: number;
  skipped: number;
  wallSeconds: number;
}

function writeJsonl(file: string, pairs: readonly Pair[]): void {
  makeDir('lab', path.dirname(file));
  writeTextFile('lab', file, pairs.map((p) => JSON.stringify(p)).join('\n') + '\n');
}

/** Loss and greedy exact match in one forward pass per example. */
export function score(model: CausalLM, examples: readonly Example[], exact = true): Score {
  const vocab = model.config.vocabSize;
  let sum = 0, tokens = 0, hits = 0;
  for (const ex of examples) {
    const n = ex.inputIds.length;
    using ids = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, n]);
    using labels = tensor(BigInt64Array.from(ex.labels, BigInt), [1, n]);
    const r = model.forward(ids, { labels, returnLogits: exact });
    if (r.tokens > 0) {
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
    if (!r.logits) continue;
    using logits = r.logits;
    const l = logits.toFloat32Array();
    let all = true;
    // Position t predicts label t+1; when every such argmax is the label, greedy decoding writes the completion.
    for (let t = 0; t + 1 < n && all; t++) {
      const want = ex.labels[t + 1]!;
      if (want === -100) continue;
      let best = 0;
      for (let v = 1; v < vocab; v++) if (l[t * vocab + v]! > l[t * vocab + best]!) best = v;
      all = best === want;
    }
    // An example with nothing to predict matches nothing.
    if (all && r.tokens > 0) hits++;
  }
  return { loss: tokens > 0 ? sum / tokens : NaN, exactMatch: examples.length ? hits / examples.length : NaN, tokens };
}

function hostBytes(): number {
  return native().memory().hostBytes;
}

interface Prepared {
  trainExamples: number;
  trainFile: string;
  evalFile: string;
  evalExamples: Example[];
}

/** Writes a task's data under DIR/data (deterministic, so a resumed lab writes the same files). */
function prepareTask(out: string, task: TaskName, settings: LabSettings, base: string): Prepared {
  const t = makeTask(task);
  const evalPairs = settings.evalExamples === null ? t.eval : t.eval.slice(0, settings.evalExamples);
  const trainFile = path.join(out, 'data', task, 'train.jsonl'), evalFile = path.join(out, 'data', task, 'eval.jsonl');
  writeJsonl(trainFile, t.train);
  writeJsonl(evalFile, evalPairs);
  return { trainExamples: t.train.length, trainFile, evalFile, evalExamples: loadExamples(evalFile, loadTokenizer(base)) };
}

function prepareRetain(out: string, settings: LabSettings, base: string): { file: string; examples: Example[] } {
  const source = path.join(base, 'retain.txt');
  const docs = fs.readFileSync(source, 'utf8').split(/\n\s*\n/).map((d) => d.trim()).filter(Boolean);
  const file = path.join(out, 'data', 'retain.txt');
  makeDir('lab', path.dirname(file));
  writeTextFile('lab', file, (settings.retainDocs === null ? docs : docs.slice(0, settings.retainDocs)).join('\n\n') + '\n');
  return { file, examples: loadExamples(file, loadTokenizer(base)) };
}

async function runOne(
  args: { out: string; base: string; task: TaskName; arm: Arm; seed: number; settings: LabSettings; params: number; data: Prepared; retain: Example[]; retainBase: { float: number; nf4: number } },
): Promise<RunResult> {
  const { out, base, task, arm, seed, settings, data } = args;
  const trainOut = path.join(out, 'train');
  fs.rmSync(trainOut, { recursive: true, force: true });
  let peakHost = hostBytes(), peakRss = process.memoryUsage().rss;
  const t0 = Date.now();
  const handle = train({
    model: base, data: data.trainFile, method: arm.method, seed, out: trainOut, progress: 'none',
    steps: settings.steps, batchSize: settings.batchSize, seqLen: settings.seqLen, evalSplit: 0,
    lr: arm.method === 'full' ? settings.fullLr : settings.loraLr,
    ...(arm.method === 'full' ? {} : { r: arm.r, alpha: arm.alpha, rslora: arm.rslora, target: arm.target, dropout: 0 }),
  });
  handle.on('step', () => {
    peakHost = Math.max(peakHost, hostBytes());
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  });
  const trained = await handle.done;
  const trainSeconds = (Date.now() - t0) / 1000;
  // The trainer's resumable checkpoints are not needed once the run has a result file.
  for (const f of fs.readdirSync(trainOut)) if (/^checkpoint-\d+$/.test(f)) fs.rmSync(path.join(trainOut, f), { recursive: true, force: true });

  const t1 = Date.now();
  let evalScore: Score, retainLoss: number, intruders: number, mergeError: RunResult['mergeError'] = null;
  if (arm.method === 'full') {
    using tuned = loadModel(trained.lastDir);
    evalScore = score(tuned, data.evalExamples);
    retainLoss = score(tuned, args.retain, false).loss;
    intruders = runIntruders(base, 'full', trained.lastDir);
  } else {
    using tuned = loadModel(base, { quantize: arm.method === 'qlora' });
    loadAdapter(tuned, trained.lastDir);
    evalScore = score(tuned, data.evalExamples);
    retainLoss = score(tuned, args.retain, false).loss;
    intruders = runIntruders(base, arm.method, trained.lastDir);
    using float = loadModel(base);
    loadAdapter(float, trained.lastDir);
    const probe = data.evalExamples[0]!.inputIds;
    using ids = tensor(BigInt64Array.from(probe, BigInt), [1, probe.length]);
    mergeError = float.mergeError(ids);
  }
  return {
    task, arm: arm.id, seed, settings, trainableParameters: args.params, trainLoss: trained.trainLoss,
    eval: evalScore, retainLoss, forgetting: retainLoss - (arm.method === 'qlora' ? args.retainBase.nf4 : args.retainBase.float),
    intruders, mergeError, trainSeconds, measureSeconds: (Date.now() - t1) / 1000, peakHostBytes: peakHost, peakRssBytes: peakRss,
  };
}

function summarizeArm(arm: Arm, params: number, runs: RunResult[]): ArmSummary {
  const of = (f: (r: RunResult) => number) => summarize(runs.map(f));
  return {
    arm: arm.id, what: arm.what, method: arm.method, target: arm.target, r: arm.r, alpha: arm.alpha, rslora: arm.rslora, scale: armScale(arm),
    trainableParameters: params, seeds: runs.map((r) => r.seed),
    evalLoss: of((r) => r.eval.loss), exactMatch: of((r) => r.eval.exactMatch), forgetting: of((r) => r.forgetting),
    intruders: of((r) => r.intruders), mergeErrorRelative: arm.method === 'full' ? null : of((r) => r.mergeError!.relative),
    trainSeconds: of((r) => r.trainSeconds), peakHostBytes: of((r) => r.peakHostBytes),
  };
}

/** Runs (or resumes) the lab and writes DIR/lab.json. */
export async function runLab(options: LabOptions): Promise<LabReport> {
  const start = Date.now();
  const quick = options.quick === true;
  const settings: LabSettings = { ...(quick ? QUICK : FULL), ...options.settings };
  const base = options.base ?? LAB_BASE;
  const tasks = options.tasks ?? TASKS;
  const seeds = [...(options.seeds ?? [1, 2, 3])];
  const armIds = options.arms ?? ARMS.map((a) => a.id);
  const arms = armIds.map((id) => {
    const arm = ARMS.find((a) => a.id === id);
    if (!arm) throw new LorakitError('ERR_INVALID_ARG', `lab: unknown arm '${id}'; the arms are ${ARMS.map((a) => a.id).join(', ')}`);
    return arm;
  });
  const log = options.log ?? (() => {});
  // Runs are deleted and rewritten under out: it must not be, hold, or lie inside the model the lab tunes.
  assertOutputApart('lab', options.out, { 'the lab model': base });
  makeDir('lab', options.out);

  const retain = prepareRetain(options.out, settings, base);
  const params = new Map(arms.map((a) => [a.id, trainableParameters(base, a)]));
  const baseScores = (examples: Example[]) => {
    using float = loadModel(base);
    using nf4 = loadModel(base, { quantize: true });
    return { float: score(float, examples), nf4: score(nf4, examples) };
  };
  const retainBase = baseScores(retain.examples);
  const report: LabReport = {
    version: 1, quick, settings, base, seeds,
    retain: { documents: retain.examples.length, baseLoss: retainBase.float.loss, nf4BaseLoss: retainBase.nf4.loss },
    tasks: {}, runs: [], ran: 0, skipped: 0, wallSeconds: 0,
  };
  const total = tasks.length * arms.length * seeds.length;
  for (const task of tasks) {
    const data = prepareTask(options.out, task, settings, base);
    const b = baseScores(data.evalExamples);
    const summaries: ArmSummary[] = [];
    for (const arm of arms) {
      const runs: RunResult[] = [];
      for (const seed of seeds) {
        const dir = path.join(options.out, 'runs', task, arm.id, `seed-${seed}`);
        const file = path.join(dir, 'result.json');
        const done = report.ran + report.skipped + 1;
        if (fs.existsSync(file)) {
          const previous = readJsonFile('lab', file, 'ERR_IO') as RunResult;
          // A result from other settings (a quick run under a full lab's folder) is measured again.
          if (JSON.stringify(previous.settings) === JSON.stringify(settings)) {
            runs.push(previous);
            report.skipped++;
            log(`[${done}/${total}] ${task} ${arm.id} seed ${seed}: done before, skipped`);
            continue;
          }
        }
        const r = await runOne({ out: dir, base, task, arm, seed, settings, params: params.get(arm.id)!, data, retain: retain.examples, retainBase: { float: retainBase.float.loss, nf4: retainBase.nf4.loss } });
        writeJsonFile('lab', file, r);
        runs.push(r);
        report.ran++;
        log(`[${done}/${total}] ${task} ${arm.id} seed ${seed}: eval loss ${r.eval.loss.toFixed(3)}, exact ${(100 * r.eval.exactMatch).toFixed(0)}%, forgetting ${r.forgetting >= 0 ? '+' : ''}${r.forgetting.toFixed(3)}, ${r.trainSeconds.toFixed(1)} s`);
      }
      report.runs.push(...runs);
      summaries.push(summarizeArm(arm, params.get(arm.id)!, runs));
    }
    report.tasks[task] = {
      train: data.trainExamples, eval: data.evalExamples.length, base: b.float, nf4Base: b.nf4,
      quantizationTax: { lossRise: b.nf4.loss - b.float.loss, exactMatchChange: b.nf4.exactMatch - b.float.exactMatch },
      arms: summaries,
    };
  }
  report.wallSeconds = (Date.now() - start) / 1000;
  writeJsonFile('lab', path.join(options.out, 'lab.json'), report);
  return report;
}
