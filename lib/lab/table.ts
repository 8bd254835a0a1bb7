/** The lab's tables: one per task, every arm's mean ± 95% half-width over seeds, and the quantization tax. */
import { type Summary } from '../sweep/stats';
import { type LabReport } from './lab';
import { TASKS } from './world';

function pm(s: Summary, digits: number, scale = 1): string {
  const m = (s.mean * scale).toFixed(digits);
  return Number.isFinite(s.ci95) ? `${m} ± ${(s.ci95 * scale).toFixed(digits)}` : m;
}

function signed(s: Summary, digits: number): string {
  const text = pm(s, digits);
  return s.mean >= 0 ? `+${text}` : text;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ').trimEnd());
}

export function formatLab(report: LabReport): string[] {
  const s = report.settings;
  const lines = [
    `lorakit lab${report.quick ? ' --quick' : ''}: ${report.seeds.length} seeds, ${s.steps} steps of ${s.batchSize} x ${s.seqLen} tokens, lr ${s.loraLr} (LoRA/QLoRA) and ${s.fullLr} (full)`,
    `retain: ${report.retain.documents} documents, base loss ${report.retain.baseLoss.toFixed(3)} (NF4 base ${report.retain.nf4BaseLoss.toFixed(3)})`,
    'values: mean ± 95% CI half-width over seeds (Student t); exact: the greedy completion is the reference, token for token',
    'forgetting: retain loss rise over the base the arm started from (the NF4 base for QLoRA); intruders at k 10, epsilon 0.5;',
    'merge err: merged vs unmerged logits on the float32 base, relative Frobenius; train s and peak native host memory per run',
  ];
  for (const task of TASKS) {
    const t = report.tasks[task];
    if (!t) continue;
    lines.push('', `${task}: ${t.train} train, ${t.eval} held-out eval; base eval loss ${t.base.loss.toFixed(3)}, exact ${(100 * t.base.exactMatch).toFixed(1)}%`);
    const rows = [['arm', 'params', 'eval loss', 'exact %', 'forgetting', 'intruders', 'merge err (rel)', 'train s', 'peak MB']];
    for (const a of t.arms) {
      rows.push([
        a.arm, a.trainableParameters.toLocaleString('en-US'), pm(a.evalLoss, 3), pm(a.exactMatch, 1, 100), signed(a.forgetting, 3), pm(a.intruders, 1),
        a.mergeErrorRelative === null ? '-' : `${a.mergeErrorRelative.mean.toExponential(1)}`, pm(a.trainSeconds, 1), pm(a.peakHostBytes, 0, 1 / 2 ** 20),
      ]);
    }
    lines.push(...table(rows));
    const q = t.quantizationTax;
    lines.push(`quantization tax (NF4 base vs float32 base on the eval data): loss ${q.lossRise >= 0 ? '+' : ''}${q.lossRise.toFixed(4)}, exact ${q.exactMatchChange >= 0 ? '+' : ''}${(100 * q.exactMatchChange).toFixed(1)} points`);
  }
  lines.push('', `${report.ran} runs trained, ${report.skipped} resumed from earlier results; ${report.wallSeconds.toFixed(0)} s`);
  return lines;
}
