/**
 * The lab's part of the report: per task, every arm's mean over seeds with its 95% interval, for the
 * task score, forgetting, what was learned against what was forgotten, and intruder dimensions; then
 * what quantizing the base costs on each task. Tables under the plots hold every number.
 */
import type { ArmSummary, LabReport, TaskReport } from '../lab/lab';
import { TASKS } from '../lab/world';
import type { Summary } from '../sweep/stats';
import { barPlot, escapeHtml, estimatePlot, formatNumber, scatterPlot, type Estimate } from './svg';

const cell = (tag: 'th' | 'td', text: string) => `<${tag}>${escapeHtml(text)}</${tag}>`;
const table = (headers: readonly string[], rows: readonly (readonly string[])[]) =>
  `<table><thead><tr>${headers.map((h) => cell('th', h)).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => cell('td', c)).join('')}</tr>`).join('')}</tbody></table>`;
const note = (text: string) => `<p class="note">${escapeHtml(text)}</p>`;
const signed = (x: number) => `${x > 0 ? '+' : ''}${formatNumber(x)}`;

/** Mean ± half-width, scaled (to percent, to MB); one seed has no interval, and says so. */
function pm(s: Summary | null, scale = 1): string {
  if (s === null) return '–';
  const mean = formatNumber(s.mean * scale);
  return Number.isFinite(s.ci95) ? `${mean} ± ${formatNumber(s.ci95 * scale)}` : `${mean} (no CI)`;
}

/** The base an arm started from: QLoRA trains on the NF4 base, so its learning is measured from there, as its forgetting is. */
const startLoss = (t: TaskReport, a: ArmSummary) => (a.method === 'qlora' ? t.nf4Base.loss : t.base.loss);

const estimates = (arms: readonly ArmSummary[], of: (a: ArmSummary) => Summary, scale = 1): Estimate[] =>
  arms.map((a) => ({ label: a.arm, mean: of(a).mean * scale, halfWidth: of(a).ci95 * scale }));

function taskPart(name: string, t: TaskReport, seeds: number): string {
  const arms = t.arms;
  const over = `mean, 95% CI over ${seeds} seeds`;
  let body = `<h3>${escapeHtml(name)}</h3>`
    + note(`${t.train} training and ${t.eval} held-out questions; the base scores eval loss ${formatNumber(t.base.loss)}, exact match ${formatNumber(100 * t.base.exactMatch)}% (NF4 base ${formatNumber(t.nf4Base.loss)}, ${formatNumber(100 * t.nf4Base.exactMatch)}%).`);
  body += estimatePlot(`lab-eval-${name}`, { title: `${name}: eval loss per arm (${over})`, x: 'arm', y: 'eval loss (nats/token)', estimates: estimates(arms, (a) => a.evalLoss) });
  body += estimatePlot(`lab-exact-${name}`, { title: `${name}: exact match per arm (${over})`, x: 'arm', y: 'exact match (%)', estimates: estimates(arms, (a) => a.exactMatch, 100) });
  body += estimatePlot(`lab-forgetting-${name}`, { title: `${name}: forgetting per arm (${over})`, x: 'arm', y: 'retain loss rise over the base', estimates: estimates(arms, (a) => a.forgetting) });
  body += scatterPlot(`lab-tradeoff-${name}`, {
    title: `${name}: learning against forgetting (seed means)`,
    x: 'eval loss drop from the base',
    y: 'retain loss rise',
    points: arms.map((a) => ({ label: a.arm, x: startLoss(t, a) - a.evalLoss.mean, y: a.forgetting.mean })),
  });
  body += estimatePlot(`lab-intruders-${name}`, { title: `${name}: intruder dimensions per arm (${over})`, x: 'arm', y: 'intruder dimensions (k 10, ε 0.5)', estimates: estimates(arms, (a) => a.intruders) });
  // The base's loss is measured once, without seeds: the drop's interval is the eval loss's.
  body += table(
    ['arm', 'method', 'target', 'r', 'α', 'scale', 'trainable', 'eval loss', 'eval loss drop', 'exact %', 'forgetting', 'intruders', 'merge error (rel)', 'train s', 'peak host MB'],
    arms.map((a) => [
      a.arm, a.method, a.target, String(a.r), String(a.alpha), a.scale === null ? '–' : formatNumber(a.scale), a.trainableParameters.toLocaleString('en-US'),
      pm(a.evalLoss), pm({ ...a.evalLoss, mean: startLoss(t, a) - a.evalLoss.mean }), pm(a.exactMatch, 100), pm(a.forgetting), pm(a.intruders),
      pm(a.mergeErrorRelative), pm(a.trainSeconds), pm(a.peakHostBytes, 1 / 2 ** 20),
    ]),
  );
  return body;
}

/** The lab as a report section: a part per task that ran, then the quantization tax of every task. */
export function labSection(report: LabReport): string {
  const s = report.settings;
  const tasks = TASKS.flatMap((name) => {
    const t = report.tasks[name];
    return t ? [[name, t] as const] : [];
  });
  let body = note(
    `lorakit lab${report.quick ? ' --quick' : ''}: seeds ${report.seeds.join(', ')}; ${s.steps} steps of ${s.batchSize} × ${s.seqLen} tokens; lr ${s.loraLr} (LoRA, QLoRA) and ${s.fullLr} (full). `
      + `Forgetting is the retain loss rise over the base the arm started from (the NF4 base for QLoRA), on ${report.retain.documents} documents (base loss ${formatNumber(report.retain.baseLoss)}, NF4 base ${formatNumber(report.retain.nf4BaseLoss)}); learning is measured from the same base.`,
  );
  for (const [name, t] of tasks) body += taskPart(name, t, report.seeds.length);
  body += '<h3>Quantization tax</h3>';
  body += barPlot('lab-quantization', {
    title: 'Eval loss rise from loading the base in NF4, per task',
    x: 'task',
    y: 'eval loss, NF4 − float32 base',
    bars: tasks.map(([name, t]) => ({ label: name, value: t.quantizationTax.lossRise })),
  });
  body += table(
    ['task', 'float32 base loss', 'NF4 base loss', 'loss rise', 'exact match change (points)'],
    tasks.map(([name, t]) => [name, formatNumber(t.base.loss), formatNumber(t.nf4Base.loss), signed(t.quantizationTax.lossRise), signed(100 * t.quantizationTax.exactMatchChange)]),
  );
  body += note(`${report.ran} runs trained, ${report.skipped} resumed from earlier results; ${formatNumber(report.wallSeconds)} s.`);
  return `<section id="lab"><h2>Lab</h2>${body}</section>`;
}
