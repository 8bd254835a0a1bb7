/**
 * Small SVG plotting helpers for the HTML report: line plots, bars and points with error bars, each
 * with axes, ticks, labels and a legend. Every data point becomes one element of class "mark", so a
 * reader (or a test) can count what was drawn; the whole plot is a string, with no script to run.
 */

/** Text for HTML or SVG content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A number as people read it on an axis or in a table: short, and exponential only when it must be. */
export function formatNumber(x: number, digits = 4): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? '–' : x > 0 ? '∞' : '−∞';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(Math.max(0, digits - 2)).replace('e+', 'e');
  return String(Number(x.toPrecision(digits)));
}

export interface Scale {
  /** The ends of the axis, widened from the data to round values. */
  lo: number;
  hi: number;
  ticks: number[];
  log: boolean;
}

/** 1, 2 or 5 times a power of ten: the tick steps people can read off at a glance. */
function niceStep(span: number, count: number): number {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** A linear axis over [min, max], widened to multiples of a nice step, with about `count` ticks. */
export function linearScale(min: number, max: number, count = 5): Scale {
  // A single value (or all equal) still needs a span to draw against.
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const step = niceStep(max - min, count);
  // Rounded to the step's precision: float products would print 0.30000000000000004. The slack keeps
  // a value that is a multiple of the step (up to rounding) from gaining a tick beyond it.
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
  const first = Math.floor(min / step + 1e-9), last = Math.ceil(max / step - 1e-9);
  const ticks = Array.from({ length: last - first + 1 }, (_, i) => Number(((first + i) * step).toFixed(digits)));
  return { lo: ticks[0]!, hi: ticks[ticks.length - 1]!, ticks, log: false };
}

/** A log axis over [min, max] (both > 0) from and to whole decades, ticked at powers of ten. */
export function logScale(min: number, max: number): Scale {
  let a = Math.floor(Math.log10(min)), b = Math.ceil(Math.log10(max));
  if (a === b) b++;
  // Many decades would crowd the axis: every second or third power is enough to read it.
  const every = Math.ceil((b - a) / 8);
  a = Math.floor(a / every) * every;
  b = Math.ceil(b / every) * every;
  // Parsed rather than computed: 10 ** -4 is 0.00009999999999999999, which would print as such.
  const power = (e: number) => Number(`1e${e}`);
  const ticks: number[] = [];
  for (let e = a; e <= b; e += every) ticks.push(power(e));
  return { lo: power(a), hi: power(b), ticks, log: true };
}

/** The scale for a set of values: log drops the values ≤ 0, which it cannot place. */
export function scaleFor(values: readonly number[], log = false, include: readonly number[] = []): Scale {
  const finite = [...values, ...include].filter((v) => Number.isFinite(v) && (!log || v > 0));
  if (finite.length === 0) return log ? logScale(1, 10) : linearScale(0, 1);
  const min = Math.min(...finite), max = Math.max(...finite);
  return log ? logScale(min, max) : linearScale(min, max);
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

export const color = (i: number): string => PALETTE[i % PALETTE.length]!;

const WIDTH = 760, HEIGHT = 360;
const MARGIN = { top: 34, bottom: 50, left: 70, right: 20 };
const LEGEND_WIDTH = 190;

interface Frame {
  x0: number;
  x1: number;
  y0: number;
  y1: number;
}

function position(s: Scale, v: number, from: number, to: number): number {
  const t = s.log ? (Math.log10(v) - Math.log10(s.lo)) / (Math.log10(s.hi) - Math.log10(s.lo)) : (v - s.lo) / (s.hi - s.lo);
  return from + t * (to - from);
}

const px = (v: number) => v.toFixed(1);

function frameFor(legend: boolean): Frame {
  return { x0: MARGIN.left, x1: WIDTH - MARGIN.right - (legend ? LEGEND_WIDTH : 0), y0: HEIGHT - MARGIN.bottom, y1: MARGIN.top };
}

function open(name: string, title: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" data-plot="${escapeHtml(name)}" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="${escapeHtml(title)}">`
    + `<text class="title" x="${WIDTH / 2}" y="20" text-anchor="middle">${escapeHtml(title)}</text>`;
}

function yAxis(s: Scale, f: Frame, label: string): string {
  let out = `<line class="axis" x1="${f.x0}" y1="${f.y0}" x2="${f.x0}" y2="${f.y1}"/>`;
  for (const t of s.ticks) {
    const y = px(position(s, t, f.y0, f.y1));
    out += `<line class="grid" x1="${f.x0}" y1="${y}" x2="${f.x1}" y2="${y}"/><line class="axis" x1="${f.x0 - 4}" y1="${y}" x2="${f.x0}" y2="${y}"/>`
      + `<text class="tick" x="${f.x0 - 7}" y="${y}" text-anchor="end" dominant-baseline="middle">${escapeHtml(formatNumber(t, 3))}</text>`;
  }
  const mid = (f.y0 + f.y1) / 2;
  return `${out}<text class="label" x="16" y="${mid}" text-anchor="middle" transform="rotate(-90 16 ${mid})">${escapeHtml(label)}</text>`;
}

function xAxis(s: Scale, f: Frame, label: string): string {
  let out = `<line class="axis" x1="${f.x0}" y1="${f.y0}" x2="${f.x1}" y2="${f.y0}"/>`;
  for (const t of s.ticks) {
    const x = px(position(s, t, f.x0, f.x1));
    out += `<line class="axis" x1="${x}" y1="${f.y0}" x2="${x}" y2="${f.y0 + 4}"/>`
      + `<text class="tick" x="${x}" y="${f.y0 + 17}" text-anchor="middle">${escapeHtml(formatNumber(t, 3))}</text>`;
  }
  return `${out}<text class="label" x="${(f.x0 + f.x1) / 2}" y="${HEIGHT - 10}" text-anchor="middle">${escapeHtml(label)}</text>`;
}

/** An x axis of named slots (bars, configurations): labels are slanted when they would collide. */
function categoryAxis(labels: readonly string[], f: Frame, label: string): string {
  const slot = (f.x1 - f.x0) / Math.max(1, labels.length);
  const slant = labels.some((l) => l.length * 6.5 > slot);
  let out = `<line class="axis" x1="${f.x0}" y1="${f.y0}" x2="${f.x1}" y2="${f.y0}"/>`;
  labels.forEach((l, i) => {
    const x = px(f.x0 + slot * (i + 0.5)), y = f.y0 + 15;
    const shown = l.length > 24 ? `${l.slice(0, 23)}…` : l;
    out += slant
      ? `<text class="tick" x="${x}" y="${y}" text-anchor="end" transform="rotate(-25 ${x} ${y})">${escapeHtml(shown)}</text>`
      : `<text class="tick" x="${x}" y="${y}" text-anchor="middle">${escapeHtml(shown)}</text>`;
  });
  return slant ? out : `${out}<text class="label" x="${(f.x0 + f.x1) / 2}" y="${HEIGHT - 10}" text-anchor="middle">${escapeHtml(label)}</text>`;
}

export interface LegendEntry {
  name: string;
  color: string;
  /** Drawn as a dashed line, a filled or an open circle, as in the plot. */
  dashed?: boolean;
  dot?: boolean;
  hollow?: boolean;
}

function legend(entries: readonly LegendEntry[]): string {
  const x = WIDTH - MARGIN.right - LEGEND_WIDTH + 12;
  // Past what fits, the rest are named in the tables below the plot.
  const rows = Math.floor((HEIGHT - MARGIN.top - MARGIN.bottom) / 16);
  const shown = entries.length > rows ? [...entries.slice(0, rows - 1), { name: `… ${entries.length - rows + 1} more`, color: '#777' }] : entries;
  let out = '<g class="legend">';
  shown.forEach((e, i) => {
    const y = MARGIN.top + 8 + i * 16;
    const sample = e.hollow || e.dot
      ? `<circle cx="${x + 11}" cy="${y}" r="4" fill="${e.hollow ? '#fff' : e.color}" stroke="${e.color}" stroke-width="1.5"/>`
      : `<line x1="${x}" y1="${y}" x2="${x + 22}" y2="${y}" stroke="${e.color}" stroke-width="2"${e.dashed ? ' stroke-dasharray="5 3"' : ''}/>`;
    const name = e.name.length > 26 ? `${e.name.slice(0, 25)}…` : e.name;
    out += `${sample}<text class="tick" x="${x + 28}" y="${y}" dominant-baseline="middle">${escapeHtml(name)}</text>`;
  });
  return `${out}</g>`;
}

const noData = (f: Frame) => `<text class="label" x="${(f.x0 + f.x1) / 2}" y="${(f.y0 + f.y1) / 2}" text-anchor="middle">no data to plot</text>`;

export interface Point {
  x: number;
  y: number;
}

export interface Series {
  name: string;
  points: readonly Point[];
  dashed?: boolean;
  /** Larger markers, for sparse series (evaluations) drawn next to dense ones (training steps). */
  emphasis?: boolean;
}

export interface LinePlot {
  title: string;
  x: { label: string; log?: boolean };
  y: { label: string; log?: boolean };
  series: readonly Series[];
  /** A dashed vertical reference line, e.g. the ε the analysis counted at. */
  vline?: { x: number; label: string };
}

const plottable = (p: Point, xs: Scale, ys: Scale) => Number.isFinite(p.x) && Number.isFinite(p.y) && (!xs.log || p.x > 0) && (!ys.log || p.y > 0);

/** Lines through each series' points, one mark per point that can be placed on the axes. */
export function linePlot(name: string, p: LinePlot): string {
  const all = p.series.flatMap((s) => s.points);
  const xs = scaleFor(all.map((q) => q.x), p.x.log, p.vline ? [p.vline.x] : []), ys = scaleFor(all.map((q) => q.y), p.y.log);
  const f = frameFor(p.series.length > 1);
  let out = open(name, p.title) + yAxis(ys, f, p.y.label) + xAxis(xs, f, p.x.label);
  if (p.vline) {
    const x = px(position(xs, p.vline.x, f.x0, f.x1));
    out += `<line class="ref" x1="${x}" y1="${f.y0}" x2="${x}" y2="${f.y1}"/><text class="tick" x="${x}" y="${f.y1 - 4}" text-anchor="middle">${escapeHtml(p.vline.label)}</text>`;
  }
  if (all.length === 0) out += noData(f);
  p.series.forEach((s, i) => {
    const pts = s.points.filter((q) => plottable(q, xs, ys)).map((q) => [position(xs, q.x, f.x0, f.x1), position(ys, q.y, f.y0, f.y1), q] as const);
    const c = color(i);
    if (pts.length > 1)
      out += `<polyline class="line" fill="none" stroke="${c}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="5 3"' : ''} points="${pts.map(([x, y]) => `${px(x)},${px(y)}`).join(' ')}"/>`;
    const r = s.emphasis || pts.length <= 40 ? 3.2 : 1.4;
    for (const [x, y, q] of pts)
      out += `<circle class="mark" cx="${px(x)}" cy="${px(y)}" r="${r}" fill="${c}"><title>${escapeHtml(`${s.name}: ${formatNumber(q.x)}, ${formatNumber(q.y)}`)}</title></circle>`;
  });
  if (p.series.length > 1) out += legend(p.series.map((s, i) => ({ name: s.name, color: color(i), dashed: s.dashed })));
  return `${out}</svg>`;
}

export interface Bar {
  label: string;
  value: number;
}

/** One bar per value, from zero. */
export function barPlot(name: string, p: { title: string; x: string; y: string; bars: readonly Bar[] }): string {
  const ys = scaleFor(p.bars.map((b) => b.value), false, [0]);
  const f = frameFor(false);
  let out = open(name, p.title) + yAxis(ys, f, p.y) + categoryAxis(p.bars.map((b) => b.label), f, p.x);
  if (p.bars.length === 0) out += noData(f);
  const slot = (f.x1 - f.x0) / Math.max(1, p.bars.length);
  const zero = position(ys, 0, f.y0, f.y1);
  p.bars.forEach((b, i) => {
    const y = position(ys, b.value, f.y0, f.y1);
    out += `<rect class="mark" x="${px(f.x0 + slot * (i + 0.15))}" y="${px(Math.min(y, zero))}" width="${px(slot * 0.7)}" height="${px(Math.abs(zero - y))}" fill="${color(0)}">`
      + `<title>${escapeHtml(`${b.label}: ${formatNumber(b.value)}`)}</title></rect>`;
  });
  return `${out}</svg>`;
}

export interface Estimate {
  label: string;
  mean: number;
  /** Half-width of the interval drawn around the mean; NaN draws the point alone. */
  halfWidth: number;
  /** Drawn open: the estimate cannot be told apart from the reference (seed noise). */
  noise?: boolean;
}

/**
 * One point per named estimate with its interval as an error bar; a shaded band marks the reference
 * estimate's interval, so that overlapping ones read at a glance.
 */
export function estimatePlot(name: string, p: { title: string; x: string; y: string; estimates: readonly Estimate[]; band?: { lo: number; hi: number; label: string } }): string {
  const extent = p.estimates.flatMap((e) => (Number.isFinite(e.halfWidth) ? [e.mean - e.halfWidth, e.mean + e.halfWidth] : [e.mean]));
  const ys = scaleFor(extent, false, p.band ? [p.band.lo, p.band.hi] : []);
  const withLegend = p.estimates.some((e) => e.noise) || p.band !== undefined;
  const f = frameFor(withLegend);
  let out = open(name, p.title) + yAxis(ys, f, p.y) + categoryAxis(p.estimates.map((e) => e.label), f, p.x);
  if (p.estimates.length === 0) out += noData(f);
  if (p.band) {
    const top = position(ys, p.band.hi, f.y0, f.y1), bottom = position(ys, p.band.lo, f.y0, f.y1);
    out += `<rect class="noise-band" x="${f.x0}" y="${px(top)}" width="${f.x1 - f.x0}" height="${px(Math.max(0.5, bottom - top))}"/>`;
  }
  const slot = (f.x1 - f.x0) / Math.max(1, p.estimates.length);
  p.estimates.forEach((e, i) => {
    if (!Number.isFinite(e.mean)) return;
    const x = px(f.x0 + slot * (i + 0.5)), y = px(position(ys, e.mean, f.y0, f.y1));
    if (Number.isFinite(e.halfWidth)) {
      const a = px(position(ys, e.mean - e.halfWidth, f.y0, f.y1)), b = px(position(ys, e.mean + e.halfWidth, f.y0, f.y1));
      const cap = (yy: string) => `<line x1="${Number(x) - 6}" y1="${yy}" x2="${Number(x) + 6}" y2="${yy}"/>`;
      out += `<g class="errorbar" stroke="${color(0)}"><line x1="${x}" y1="${a}" x2="${x}" y2="${b}"/>${cap(a)}${cap(b)}</g>`;
    }
    const ci = Number.isFinite(e.halfWidth) ? ` ± ${formatNumber(e.halfWidth)}` : ' (no interval)';
    out += `<circle class="mark${e.noise ? ' noise' : ''}" cx="${x}" cy="${y}" r="4.5" fill="${e.noise ? '#fff' : color(0)}" stroke="${color(0)}" stroke-width="1.8">`
      + `<title>${escapeHtml(`${e.label}: ${formatNumber(e.mean)}${ci}${e.noise ? ', inside the noise' : ''}`)}</title></circle>`;
  });
  if (withLegend) {
    const entries: LegendEntry[] = [{ name: 'mean, 95% CI', color: color(0) }];
    if (p.estimates.some((e) => e.noise)) entries.push({ name: 'inside the noise', color: color(0), hollow: true });
    if (p.band) entries.push({ name: p.band.label, color: '#f2c94c' });
    out += legend(entries);
  }
  return `${out}</svg>`;
}

export interface LabeledPoint extends Point {
  label: string;
}

/** Labelled points on two numeric axes, with the zero lines drawn when they fall inside. */
export function scatterPlot(name: string, p: { title: string; x: string; y: string; points: readonly LabeledPoint[] }): string {
  const xs = scaleFor(p.points.map((q) => q.x), false, [0]), ys = scaleFor(p.points.map((q) => q.y), false, [0]);
  const f = frameFor(p.points.length > 1);
  let out = open(name, p.title) + yAxis(ys, f, p.y) + xAxis(xs, f, p.x);
  const zx = px(position(xs, 0, f.x0, f.x1)), zy = px(position(ys, 0, f.y0, f.y1));
  out += `<line class="ref" x1="${zx}" y1="${f.y0}" x2="${zx}" y2="${f.y1}"/><line class="ref" x1="${f.x0}" y1="${zy}" x2="${f.x1}" y2="${zy}"/>`;
  if (p.points.length === 0) out += noData(f);
  p.points.forEach((q, i) => {
    if (!plottable(q, xs, ys)) return;
    out += `<circle class="mark" cx="${px(position(xs, q.x, f.x0, f.x1))}" cy="${px(position(ys, q.y, f.y0, f.y1))}" r="5" fill="${color(i)}">`
      + `<title>${escapeHtml(`${q.label}: ${formatNumber(q.x)}, ${formatNumber(q.y)}`)}</title></circle>`;
  });
  if (p.points.length > 1) out += legend(p.points.map((q, i) => ({ name: q.label, color: color(i), dot: true })));
  return `${out}</svg>`;
}
