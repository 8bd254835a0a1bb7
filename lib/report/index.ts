/**
 * One self-contained HTML file that shows a fine-tune: its loss curves, what it learned against what it
 * forgot, the intruder dimensions and update spectra `lorakit analyze` measures, and a sweep's results
 * with their confidence intervals. Plots are inline SVG and styles inline CSS, so the file opens
 * anywhere, offline, and can be mailed or archived as is.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AnalyzeReport } from '../analysis/analyze-run';
import { makeDir, writeTextFile } from '../io/fs';
import type { LabReport } from '../lab/lab';
import type { SweepReport } from '../sweep/runner';
import type { Summary } from '../sweep/stats';
import { labSection } from './lab';
import { readMetrics, type EvalLine, type MetricLine, type StepLine } from './metrics';
import { barPlot, escapeHtml, estimatePlot, formatNumber, linePlot, scatterPlot, type Estimate, type Point, type Series } from './svg';

export { labSection } from './lab';
export { readMetrics, type MetricLine, type StepLine, type EvalLine } from './metrics';
export * from './svg';

export interface RunMetrics {
  name: string;
  metrics: MetricLine[];
}

export interface ReportParts {
  title: string;
  runs?: RunMetrics[];
  analysis?: AnalyzeReport;
  sweep?: SweepReport;
  lab?: LabReport;
}

/** Training curves longer than this are drawn as bucket means: thousands of noisy steps hide the trend. */
export const MAX_CURVE_POINTS = 500;

/** At most `max` points: consecutive points averaged in equal buckets. */
export function thin(points: readonly Point[], max = MAX_CURVE_POINTS): Point[] {
  if (points.length <= max) return [...points];
  const out: Point[] = [];
  for (let b = 0; b < max; b++) {
    const bucket = points.slice(Math.floor((b * points.length) / max), Math.floor(((b + 1) * points.length) / max));
    out.push({ x: bucket.reduce((s, p) => s + p.x, 0) / bucket.length, y: bucket.reduce((s, p) => s + p.y, 0) / bucket.length });
  }
  return out;
}

function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const head = headers.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(c)}</td>`).join('')}</tr>`).join('');
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

const section = (id: string, heading: string, body: string) => `<section id="${id}"><h2>${escapeHtml(heading)}</h2>${body}</section>`;
const note = (text: string) => `<p class="note">${escapeHtml(text)}</p>`;
const fmt = (x: number | undefined) => (x === undefined ? '–' : formatNumber(x));
const signed = (x: number) => `${x > 0 ? '+' : ''}${formatNumber(x)}`;

/** Eval losses of a run by split, in step order. */
function evalsBySplit(metrics: readonly MetricLine[]): Map<string, EvalLine[]> {
  const splits = new Map<string, EvalLine[]>();
  for (const m of metrics) if (m.type === 'eval') splits.set(m.split, [...(splits.get(m.split) ?? []), m]);
  return splits;
}

/** The split whose fall measures learning: eval data when given, as the sweep's metric does, else held-out. */
function learningSplit(splits: Map<string, EvalLine[]>): string | undefined {
  return ['eval', 'heldout'].find((s) => splits.has(s));
}

/** First minus last loss of the learning split, and last minus first of retain (undefined when absent). */
export function learningAndForgetting(metrics: readonly MetricLine[]): { split?: string; drop?: number; rise?: number } {
  const splits = evalsBySplit(metrics);
  const split = learningSplit(splits);
  const change = (s: string | undefined) => {
    const e = s === undefined ? undefined : splits.get(s);
    return e && e.length > 1 ? e[e.length - 1]!.loss - e[0]!.loss : undefined;
  };
  const fall = change(split);
  return { split, drop: fall === undefined ? undefined : -fall, rise: change('retain') };
}

const longestRun = (runs: readonly RunMetrics[]) => Math.max(0, ...runs.map((r) => r.metrics.filter((m) => m.type === 'step').length));

function runsSection(runs: readonly RunMetrics[]): string {
  let body = '';
  for (const run of runs) {
    const steps = run.metrics.filter((m): m is StepLine => m.type === 'step');
    const series: Series[] = [{ name: 'train loss', points: thin(steps.map((s) => ({ x: s.step, y: s.loss }))) }];
    for (const [split, evals] of evalsBySplit(run.metrics)) series.push({ name: `${split} loss`, points: evals.map((e) => ({ x: e.step, y: e.loss })), dashed: true, emphasis: true });
    body += `<figure data-run="${escapeHtml(run.name)}">${linePlot('loss', { title: `${run.name}: loss`, x: { label: 'step' }, y: { label: 'loss (nats/token)' }, series })}</figure>`;
  }
  const rows = runs.map((run) => {
    const steps = run.metrics.filter((m): m is StepLine => m.type === 'step');
    const last = steps[steps.length - 1];
    const splits = [...evalsBySplit(run.metrics)].map(([s, e]) => `${s} ${formatNumber(e[0]!.loss)} → ${formatNumber(e[e.length - 1]!.loss)}`);
    return [run.name, String(steps.length), fmt(last?.loss), splits.join('; ') || '–'];
  });
  body += table(['run', 'steps logged', 'last train loss', 'eval loss, first → last'], rows);
  if (longestRun(runs) > MAX_CURVE_POINTS) body += note(`Training curves longer than ${MAX_CURVE_POINTS} steps are drawn as means of consecutive steps.`);
  return section('runs', 'Training runs', body);
}

function learningSection(runs: readonly RunMetrics[]): string {
  const measured = runs.map((r) => ({ name: r.name, ...learningAndForgetting(r.metrics) }));
  const points = measured.flatMap((m) => (m.drop !== undefined && m.rise !== undefined ? [{ label: m.name, x: m.drop, y: m.rise }] : []));
  let body = '';
  if (points.length > 0)
    body += scatterPlot('learning-forgetting', { title: 'Learning against forgetting', x: 'eval loss drop (first − last eval)', y: 'retain loss rise (last − first)', points });
  else body += note('No run measured both an eval (or held-out) split and retain data at least twice: nothing to plot.');
  body += table(['run', 'learning split', 'eval loss drop', 'retain loss rise'], measured.map((m) => [m.name, m.split ?? '–', m.drop === undefined ? '–' : signed(m.drop), m.rise === undefined ? '–' : signed(m.rise)]));
  return section('learning-forgetting', 'Learning against forgetting', body);
}

/** The module's path inside its layer (GPT-2 has a c_proj in both attn and mlp). */
const shortName = (key: string) => key.replace(/\.weight$/, '').replace(/^.*\.(?:layers|h)\.(\d+)\./, '$1.');

function analysisSection(a: AnalyzeReport): string {
  let body = table(['base', 'compared with', 'top k', 'ε', 'intruder dimensions'], [[a.base, `${a.tuned.dir} (${a.tuned.kind})`, String(a.k), String(a.epsilon), String(a.intruders.total)]]);
  const layers = Object.entries(a.intruders.byLayer);
  body += barPlot('intruders-by-layer', { title: `Intruder dimensions by layer (ε ${a.epsilon})`, x: 'layer', y: 'intruder dimensions', bars: layers.map(([l, count]) => ({ label: l, value: count })) });
  body += linePlot('intruder-sweep', {
    title: 'Intruder dimensions against the threshold ε',
    x: { label: 'ε (|cosine| below which a singular vector is an intruder)' },
    y: { label: 'intruder dimensions (all matrices)' },
    series: [{ name: 'total', points: a.intruders.sweep.map((s) => ({ x: s.epsilon, y: s.total })) }],
    vline: { x: a.epsilon, label: `ε ${a.epsilon}` },
  });
  body += table(['ε', ...a.intruders.sweep.map((s) => String(s.epsilon))], [['intruders', ...a.intruders.sweep.map((s) => String(s.total))]]);
  const spectra = Object.entries(a.spectra);
  body += linePlot('spectra', {
    title: 'Update spectra: singular values of ΔW per matrix',
    x: { label: 'index' },
    y: { label: 'singular value', log: true },
    series: spectra.map(([m, s]) => ({ name: shortName(m), points: s.singularValues.map((v, i) => ({ x: i + 1, y: v })) })),
  });
  const q = a.quantization.byMatrix;
  body += table(
    ['matrix', 'intruders', 'effective rank', 'top-r energy', 'σ₁', 'NF4 relative error'],
    [...new Set([...Object.keys(a.intruders.byMatrix), ...Object.keys(a.spectra)])].map((m) => [
      m, String(a.intruders.byMatrix[m] ?? '–'), fmt(a.spectra[m]?.effectiveRank), fmt(a.spectra[m]?.topREnergy), fmt(a.spectra[m]?.singularValues[0]), fmt(q[m]?.relative),
    ]),
  );
  if (a.forgetting) {
    const f = a.forgetting;
    body += `<h3>Forgetting</h3>${table(['retain file', 'examples', 'tokens', 'base loss', 'tuned loss', 'rise'], [[f.file, String(f.examples), String(f.tokens), fmt(f.baseLoss), fmt(f.tunedLoss), signed(f.rise)]])}`;
  }
  const t = a.quantization;
  body += `<h3>NF4 quantization of the base (block ${t.blockSize})</h3>`
    + table(['relative weight error', 'with double quant'], [[fmt(t.total.relative), fmt(t.total.relativeDoubleQuant)]]);
  if (t.data) {
    const d = t.data;
    body += table(['data', 'float loss', 'NF4 loss', 'rise', 'mean KL(float ‖ NF4)', 'positions'], [[d.file, fmt(d.floatLoss), fmt(d.nf4Loss), signed(d.rise), fmt(d.klMean), String(d.positions)]]);
  }
  if (a.merge) {
    const m = a.merge;
    body += `<h3>Merge error</h3>${note(`Merged against unmerged logits on ${m.probe}.`)}`
      + table(['base', 'max |Δlogit|', 'relative'], (['float32', 'bfloat16', 'nf4'] as const).map((k) => [k, fmt(m[k].maxAbs), fmt(m[k].relative)]));
  }
  return section('analysis', 'Analysis against the base', body);
}

const ci = (s: Summary) => (Number.isNaN(s.ci95) ? `${formatNumber(s.mean)} (no CI)` : `${formatNumber(s.mean)} ± ${formatNumber(s.ci95)}`);

function sweepSection(r: SweepReport): string {
  const label = new Map(r.configs.map((c) => [c.id, c.label || 'base']));
  const finite = r.configs.filter((c) => Number.isFinite(c.loss.mean));
  const best = finite.length ? finite.reduce((a, b) => (b.loss.mean < a.loss.mean ? b : a)) : undefined;
  // A configuration is marked as noise when its comparison with the best cannot tell them apart.
  const noise = (id: string) => best !== undefined && id !== best.id && r.comparisons.some((c) => ((c.a === id && c.b === best.id) || (c.b === id && c.a === best.id)) && c.insideNoise);
  const estimates: Estimate[] = r.configs.map((c) => ({ label: label.get(c.id)!, mean: c.loss.mean, halfWidth: c.loss.ci95, noise: noise(c.id) }));
  const band = best && Number.isFinite(best.loss.ci95) ? { lo: best.loss.mean - best.loss.ci95, hi: best.loss.mean + best.loss.ci95, label: `best (${label.get(best.id)}) 95% CI` } : undefined;
  let body = estimatePlot('sweep', { title: `Final ${r.metric} loss per configuration (mean, 95% CI over seeds)`, x: 'configuration', y: `${r.metric} loss`, estimates, band });
  const withForgetting = r.configs.filter((c) => c.forgetting !== null);
  if (withForgetting.length > 0)
    body += estimatePlot('sweep-forgetting', {
      title: 'Retain loss rise per configuration (mean, 95% CI over seeds)',
      x: 'configuration',
      y: 'retain loss rise',
      estimates: withForgetting.map((c) => ({ label: label.get(c.id)!, mean: c.forgetting!.mean, halfWidth: c.forgetting!.ci95 })),
    });
  if (r.configs[0]?.seeds.length === 1) body += note('One seed per configuration: noise cannot be told from effect; give more seeds to compare.');
  body += table(
    ['configuration', 'seeds', `${r.metric} loss (95% CI)`, 'retain rise (95% CI)', 'intruders (95% CI)', 'wall s', 'tokens/s', 'peak MB'],
    r.configs.map((c) => [label.get(c.id)!, String(c.seeds.length), ci(c.loss), c.forgetting ? ci(c.forgetting) : '–', ci(c.intruders), ci(c.wallSec), ci(c.tokensPerSec), formatNumber(c.peakRssBytes / 2 ** 20, 4)]),
  );
  if (r.comparisons.length > 0) {
    body += `<h3>Comparisons (Welch's t-test, Holm-corrected, 5% level)</h3>`;
    body += table(
      ['a', 'b', 'difference', 'p', 'adjusted p', 'seeds needed', 'verdict'],
      r.comparisons.map((c) => [label.get(c.a) ?? c.a, label.get(c.b) ?? c.b, signed(c.diff), c.p === null ? '–' : formatNumber(c.p, 2), c.pAdjusted === null ? '–' : formatNumber(c.pAdjusted, 2), c.seedsNeeded !== null ? String(c.seedsNeeded) : c.p !== null && c.insideNoise ? `> ${c.seedsTried}` : '–', c.note]),
    );
  }
  if (r.caveat) body += note(`Note: ${r.caveat}`);
  return section('sweep', 'Sweep', body);
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:24px auto;max-width:1000px;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:15px}
figure{margin:12px 0}svg{display:block;max-width:100%;height:auto;margin:12px 0;background:#fff}
svg text{font:12px system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;fill:#333}
svg .title{font-size:14px;font-weight:600}svg .label{font-size:12px;fill:#555}
.axis{stroke:#444;stroke-width:1}.grid{stroke:#eee;stroke-width:1}.ref{stroke:#999;stroke-dasharray:4 3}
.errorbar line{stroke-width:1.6}.noise-band{fill:#f2c94c;fill-opacity:.25}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td{font-variant-numeric:tabular-nums}.note{color:#555;font-style:italic}
`;

/** The report as one HTML document; parts not given are left out. */
export function renderReport(parts: ReportParts): string {
  const runs = parts.runs ?? [];
  let body = '';
  if (runs.length > 0) body += runsSection(runs) + learningSection(runs);
  if (parts.analysis) body += analysisSection(parts.analysis);
  if (parts.sweep) body += sweepSection(parts.sweep);
  if (parts.lab) body += labSection(parts.lab);
  if (body === '') body = note('Nothing to report: no runs, analysis, sweep or lab were given.');
  // The policy forbids every fetch, so the file provably shows only what it holds.
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(parts.title)}</title><style>${STYLE}</style></head>
<body><h1>${escapeHtml(parts.title)}</h1>
${body}
</body></html>
`;
}

/**
 * Renders the report into `file`, written aside and renamed so that a reader never sees half a report;
 * returns the absolute path.
 */
export function writeReport(file: string, parts: ReportParts): string {
  const target = path.resolve(file);
  makeDir('report', path.dirname(target));
  writeTextFile('report', target, renderReport(parts));
  return target;
}

/** The metrics of every run of a sweep that left a metrics.jsonl in its folder, named by configuration and seed. */
export function sweepRuns(r: SweepReport): RunMetrics[] {
  return r.configs.flatMap((c) =>
    c.seeds.flatMap((seed) => {
      const file = path.join(r.out, 'runs', c.id, `seed-${seed}`, 'metrics.jsonl');
      return fs.existsSync(file) ? [{ name: `${c.label || 'base'} seed ${seed}`, metrics: readMetrics(file) }] : [];
    }),
  );
}
