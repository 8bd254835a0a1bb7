import yargs from 'yargs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../../errors';
import { assertOutputApart } from '../../io/fs';
import { layerKey } from '../../analysis';
import { analyzeRun, type AnalyzeReport } from '../../analysis/analyze-run';
import { writeReport } from '../../report';
import { command, print, printReportWritten } from '../run';
import { jsonOption } from '../options';

/*
 * `analyze --json` prints one AnalyzeReport (lib/analysis/analyze-run.ts):
 *   base, tuned: { kind: 'adapter' | 'checkpoint', dir }, k, epsilon,
 *   intruders: { total, byMatrix: { '<module>.weight': count }, byLayer: { '<layer index>' | 'other': count },
 *                sweep: [{ epsilon, total }] at ε = 0.1 … 0.9 },
 *   spectra: { '<module>.weight': { singularValues, effectiveRank, topREnergy } } of ΔW (s·B·A, or W − W0
 *            over the matrices a checkpoint changed),
 *   forgetting (with --retain): { file, examples, tokens, baseLoss, tunedLoss, rise },
 *   quantization: { blockSize: 64, byMatrix: { '<module>.weight': { relative, relativeDoubleQuant } },
 *                   total: { relative, relativeDoubleQuant },
 *                   data (with --data): { file, examples, tokens, floatLoss, nf4Loss, rise, klMean, positions } },
 *   merge (adapters only): { probe, float32, bfloat16, nf4: { maxAbs, relative } }.
 * Losses are in nats per token; fields for options not given are absent.
 */

const fmt = (x: number, digits = 4) => x.toFixed(digits);
const exp = (x: number) => x.toExponential(3);
const signed = (x: number) => `${x >= 0 ? '+' : ''}${fmt(x)}`;

/** The module's path inside its layer (GPT-2 has a c_proj in both attn and mlp). */
const shortName = (key: string) => key.replace(/\.weight$/, '').replace(/^.*\.(?:layers|h)\.\d+\./, '');

function summary(r: AnalyzeReport): string[] {
  const lines: string[] = [];
  const matrices = Object.keys(r.intruders.byMatrix);
  lines.push(`${path.basename(r.tuned.dir)} (${r.tuned.kind}) against ${path.basename(r.base)}`);
  lines.push(`intruder dimensions (top ${r.k} singular vectors, ε ${r.epsilon}): ${r.intruders.total} in ${matrices.length} matrices`);
  for (const [layer, count] of Object.entries(r.intruders.byLayer)) {
    const inLayer = matrices.filter((m) => layerKey(m) === layer);
    lines.push(`  ${layer === 'other' ? 'other' : `layer ${layer}`}: ${count} (${inLayer.map((m) => `${shortName(m)} ${r.intruders.byMatrix[m]}`).join(', ')})`);
  }
  lines.push(`  ε sweep: ${r.intruders.sweep.map((s) => `${s.epsilon} → ${s.total}`).join(', ')}`);
  const spectra = Object.values(r.spectra);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / (xs.length || 1);
  lines.push(`update spectra: mean effective rank ${fmt(mean(spectra.map((s) => s.effectiveRank)), 2)}, mean top-r energy ${fmt(mean(spectra.map((s) => s.topREnergy)))}`);
  if (r.forgetting) {
    const f = r.forgetting;
    lines.push(`forgetting on ${path.basename(f.file)}: loss ${fmt(f.baseLoss)} → ${fmt(f.tunedLoss)} (${signed(f.rise)}) over ${f.tokens} tokens in ${f.examples} examples`);
  }
  const q = r.quantization;
  const worst = Object.entries(q.byMatrix).reduce((a, b) => (b[1].relative > a[1].relative ? b : a));
  lines.push(`quantization tax (NF4, block ${q.blockSize}): relative weight error ${exp(q.total.relative)} (double quant ${exp(q.total.relativeDoubleQuant)}), worst ${worst[0]} ${exp(worst[1].relative)}`);
  if (q.data) {
    const d = q.data;
    lines.push(`  on ${path.basename(d.file)}: loss ${fmt(d.floatLoss)} → ${fmt(d.nf4Loss)} (${signed(d.rise)}), mean KL(float ‖ NF4) ${exp(d.klMean)} nats over ${d.positions} positions`);
  }
  if (r.merge) {
    const m = r.merge;
    const e = (x: { maxAbs: number; relative: number }) => `max |Δlogit| ${exp(x.maxAbs)}, relative ${exp(x.relative)}`;
    lines.push(`merge error on ${m.probe}:`);
    lines.push(`  float32: ${e(m.float32)}`);
    lines.push(`  bfloat16: ${e(m.bfloat16)}`);
    lines.push(`  nf4: ${e(m.nf4)}`);
  }
  return lines;
}

function requireFolder(flag: string, dir: string): void {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new LorakitError('ERR_INVALID_ARG', `--${flag} ${dir}: no such folder`);
}

export const analyzeCommand = command({
  usage: 'analyze',
  describe: 'Intruder dimensions, update spectra, forgetting, NF4 quantization tax and merge error of a fine-tune against its base',
  options: (a) =>
    a
      .option('base', { type: 'string', demandOption: true, describe: 'base model folder' })
      .option('adapter', { type: 'string', describe: 'PEFT adapter folder (or --tuned)' })
      .option('tuned', { type: 'string', describe: 'fine-tuned checkpoint folder (or --adapter)' })
      .option('data', { type: 'string', describe: 'examples (.jsonl or .txt) for the NF4 loss and KL; the first probes the merge error' })
      .option('retain', { type: 'string', describe: 'examples (.jsonl or .txt) to measure forgetting on' })
      .option('k', { type: 'number', default: 10, describe: 'top singular vectors examined per matrix' })
      .option('epsilon', { type: 'number', default: 0.5, describe: 'intruder threshold on |cosine|' })
      .option('rank', { type: 'number', default: 16, describe: 'rank whose energy share a checkpoint update spectrum reports' })
      .option('json', jsonOption('print one JSON object (shape in lib/cli/commands/analyze.ts)'))
      .option('report', { type: 'string', describe: 'also write a self-contained HTML report to this file' }),
  run: (argv) => {
    // Checked here rather than by yargs so that these are one-line errors with exit code 1.
    if ((argv.adapter === undefined) === (argv.tuned === undefined)) throw new LorakitError('ERR_INVALID_ARG', 'give exactly one of --adapter and --tuned');
    requireFolder('base', argv.base);
    if (argv.adapter !== undefined) requireFolder('adapter', argv.adapter);
    if (argv.tuned !== undefined) requireFolder('tuned', argv.tuned);
    // Checked before the (long) analysis: the report must not land on, or inside, anything it reads.
    if (argv.report !== undefined)
      assertOutputApart('analyze', argv.report, { '--base': argv.base, '--adapter': argv.adapter, '--tuned': argv.tuned, '--data': argv.data, '--retain': argv.retain }, '--report');
    const report = analyzeRun({ base: argv.base, adapter: argv.adapter, tuned: argv.tuned, data: argv.data, retain: argv.retain, k: argv.k, epsilon: argv.epsilon, rank: argv.rank,
      onWarning: (m) => process.stderr.write(`lorakit analyze: warning: ${m}\n`) });
    if (argv.report !== undefined) {
      const file = writeReport(argv.report, { title: `lorakit analyze: ${path.basename(report.tuned.dir)} against ${path.basename(report.base)}`, analysis: report });
      printReportWritten(file, argv.json);
    }
    if (argv.json) return print(JSON.stringify(report));
    for (const line of summary(report)) print(line);
  },
});

class UsageError extends Error {}

/**
 * Runs `analyze` alone, in this process (tests, and callers without the full CLI): usage errors are one
 * line on stderr and exit code 2, as in the `lorakit` command.
 */
export function runAnalyze(argv: string[]): void {
  try {
    analyzeCommand(yargs(argv).scriptName('lorakit'))
      .strict()
      .exitProcess(false)
      // Thrown, so that yargs stops before the handler (it would run it after a failure without exitProcess).
      .fail((msg, err) => {
        throw err ?? new UsageError(msg);
      })
      .parse();
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`lorakit: ${e.message}\n`);
    process.exitCode = 2;
  }
}
