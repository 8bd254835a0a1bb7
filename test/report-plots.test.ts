/**
 * Where the report's plots put their marks: parsed back out of the SVG and checked against the data
 * (a higher value drawn higher, i.e. a smaller y; a later step further right) and, for one point per
 * plot kind, against the pixel coordinate worked out by hand from the axis ends and the documented
 * frame: a 760 x 360 view box with margins top 34, bottom 50, left 70, right 20, and 190 more on the
 * right when a legend is drawn. So the frame runs x 70..740 (550 with a legend), y 310 (axis bottom)
 * up to 34 (axis top).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ArmSummary, type LabReport } from '../lib/lab';
import { barPlot, estimatePlot, formatNumber, labSection, learningAndForgetting, linePlot, linearScale, logScale, renderReport, scaleFor, scatterPlot, thin, type MetricLine } from '../lib/report';
import { RUN_METRICS as metrics } from './helpers/report';

type Attrs = Record<string, string>;

/** Every element of a tag in an SVG string, as its attributes. */
function elements(svg: string, tag: string): Attrs[] {
  return [...svg.matchAll(new RegExp(`<${tag}\\b([^>]*?)/?>`, 'g'))].map((m) => Object.fromEntries([...m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!])));
}

/** The plots of a document by name. */
function plotsOf(html: string): Map<string, string> {
  return new Map([...html.matchAll(/<svg\b[^>]*data-plot="([^"]+)"[^>]*>[\s\S]*?<\/svg>/g)].map((m) => [m[1]!, m[0]]));
}

const marks = (svg: string) => elements(svg, 'circle').filter((c) => /\bmark\b/.test(c.class ?? '')).map((c) => ({ x: Number(c.cx), y: Number(c.cy), fill: c.fill!, r: Number(c.r), cls: c.class! }));
const bars = (svg: string) => elements(svg, 'rect').filter((c) => c.class === 'mark').map((c) => ({ x: Number(c.x), y: Number(c.y), width: Number(c.width), height: Number(c.height) }));
/** The y-axis ticks: their printed value and height. */
const yTicks = (svg: string) => [...svg.matchAll(/<text class="tick" x="63" y="([\d.]+)" text-anchor="end"[^>]*>([^<]*)</g)].map((m) => ({ y: Number(m[1]), value: Number(m[2]!.replace('−', '-')) }));
const xTicks = (svg: string) => [...svg.matchAll(/<text class="tick" x="([\d.]+)" y="327" text-anchor="middle">([^<]*)</g)].map((m) => ({ x: Number(m[1]), value: Number(m[2]) }));

/** A point's place in the frame, x0..x1 left to right and 310 up to 34 bottom to top, on linear axes. */
const place = (v: number, lo: number, hi: number, from: number, to: number) => from + ((v - lo) / (hi - lo)) * (to - from);

/** Pixel coordinates are printed to 0.1. */
const near = (a: number, b: number) => expect(Math.abs(a - b)).toBeLessThanOrEqual(0.051);

/** For every pair: a larger value has a smaller y, and an equal value the same y. */
function higherIsUp(pairs: readonly { value: number; y: number }[]) {
  for (const a of pairs)
    for (const b of pairs) {
      if (a.value > b.value) expect(a.y).toBeLessThan(b.y);
      if (a.value === b.value) expect(a.y).toBe(b.y);
    }
}

describe('line plots', () => {
  const series = [{ name: 'loss', points: [{ x: 0, y: 1.2 }, { x: 5, y: 3.7 }, { x: 10, y: 2 }] }];
  const svg = linePlot('p', { title: 't', x: { label: 'step' }, y: { label: 'loss' }, series });

  test('one point placed by hand: y axis 1..4, x axis 0..10, no legend', () => {
    // linearScale(1.2, 3.7): span 2.5 / 5 ticks = 0.5, so 1..4; (0, 10) by steps of 2.
    const m = marks(svg);
    expect(m).toHaveLength(3);
    near(m[1]!.x, place(5, 0, 10, 70, 740));
    near(m[1]!.y, place(3.7, 1, 4, 310, 34));
    expect(m[1]!.x).toBeCloseTo(405, 5);
    expect(m[1]!.y).toBeCloseTo(61.6, 5);
    expect(m.map((q) => q.fill)).toEqual(['#1f77b4', '#1f77b4', '#1f77b4']);
    // The line goes through the marks, in order.
    expect(elements(svg, 'polyline')[0]!.points).toBe(m.map((q) => `${q.x.toFixed(1)},${q.y.toFixed(1)}`).join(' '));
  });

  test('higher values higher, later steps further right, ticks in order', () => {
    const m = marks(svg);
    higherIsUp(series[0]!.points.map((p, i) => ({ value: p.y, y: m[i]!.y })));
    expect(m[0]!.x).toBeLessThan(m[1]!.x);
    expect(m[1]!.x).toBeLessThan(m[2]!.x);
    const ticks = yTicks(svg);
    expect(ticks.map((t) => t.value)).toEqual([1, 1.5, 2, 2.5, 3, 3.5, 4]);
    higherIsUp(ticks);
    near(ticks[0]!.y, 310);
    near(ticks[ticks.length - 1]!.y, 34);
    const xs = xTicks(svg);
    expect(xs.map((t) => t.value)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(xs.map((t) => t.x)).toEqual([70, 204, 338, 472, 606, 740]);
  });

  test('a log axis places a value by its logarithm, and a legend narrows the frame', () => {
    const two = [
      { name: 'a', points: [{ x: 1, y: 0.01 }, { x: 2, y: 1 }, { x: 3, y: 10 }] },
      { name: 'b', points: [{ x: 1, y: 0.5 }], dashed: true },
    ];
    const log = linePlot('l', { title: 't', x: { label: 'i' }, y: { label: 'v', log: true }, series: two });
    const m = marks(log);
    // Axis 10^-2..10^1: 1 is two thirds up. x 1..3 over 70..550.
    near(m[1]!.x, place(2, 1, 3, 70, 550));
    near(m[1]!.y, 310 - (2 / 3) * 276);
    near(m[3]!.y, 310 - ((Math.log10(0.5) + 2) / 3) * 276);
    expect(m[3]!.fill).toBe('#d62728');
    higherIsUp(two.flatMap((s) => s.points).map((p, i) => ({ value: p.y, y: m[i]!.y })));
    higherIsUp(yTicks(log));
    expect(yTicks(log).map((t) => t.value)).toEqual([0.01, 0.1, 1, 10]);
    // The second series is dashed, the first is not; a single point draws no line.
    expect(elements(log, 'polyline')).toHaveLength(1);
    expect(log).toMatch(/<line x1="\d+" y1="[\d.]+" x2="\d+" y2="[\d.]+" stroke="#d62728" stroke-width="2" stroke-dasharray="5 3"\/>/);
  });

  test('a reference line at its x, dense series drawn with small marks', () => {
    const dense = [{ name: 'd', points: Array.from({ length: 41 }, (_, i) => ({ x: i, y: 40 - i })) }];
    const svg2 = linePlot('d', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: dense, vline: { x: 50, label: 'ε 50' } });
    // x axis 0..50 (the reference line widens it): the line at 50 is the right end, 740.
    const ref = elements(svg2, 'line').find((l) => l.class === 'ref')!;
    expect([ref.x1, ref.x2, ref.y1, ref.y2]).toEqual(['740.0', '740.0', '310', '34']);
    expect(svg2).toContain('>ε 50</text>');
    const m = marks(svg2);
    expect(new Set(m.map((q) => q.r))).toEqual(new Set([1.4]));
    near(m[10]!.x, place(10, 0, 50, 70, 740));
    near(m[10]!.y, place(30, 0, 40, 310, 34));
    higherIsUp(dense[0]!.points.map((p, i) => ({ value: p.y, y: m[i]!.y })));
    // 40 points or fewer, or a series marked for emphasis, get the large marks.
    const sparse = linePlot('s', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: [{ name: 's', points: dense[0]!.points.slice(0, 40) }] });
    expect(new Set(marks(sparse).map((q) => q.r))).toEqual(new Set([3.2]));
    const emph = linePlot('s', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: [{ ...dense[0]!, emphasis: true }] });
    expect(new Set(marks(emph).map((q) => q.r))).toEqual(new Set([3.2]));
  });
});

describe('bars, estimates and scatter', () => {
  test('bars rise from zero to their value: taller for larger, below the axis for negative', () => {
    const values = [3, -1, 0.5];
    const svg = barPlot('b', { title: 't', x: 'task', y: 'rise', bars: values.map((v, i) => ({ label: `t${i}`, value: v })) });
    const b = bars(svg);
    // Axis -1..3 (step 1); zero sits a quarter up: 310 - 69 = 241. Slots of 670 / 3.
    const zero = place(0, -1, 3, 310, 34), slot = 670 / 3;
    expect(zero).toBeCloseTo(241, 10);
    near(b[0]!.x, 70 + slot * 0.15);
    near(b[1]!.x, 70 + slot * 1.15);
    near(b[0]!.width, slot * 0.7);
    near(b[0]!.y, 34);
    near(b[0]!.height, 241 - 34);
    near(b[1]!.y, 241);
    near(b[1]!.height, 310 - 241);
    near(b[2]!.y, place(0.5, -1, 3, 310, 34));
    near(b[2]!.height, 241 - place(0.5, -1, 3, 310, 34));
    // The top of a positive bar is its value; the bottom of a negative one is.
    higherIsUp([{ value: 3, y: b[0]!.y }, { value: 0.5, y: b[2]!.y }, { value: -1, y: b[1]!.y + b[1]!.height }, { value: 0, y: b[1]!.y }]);
    expect(svg).toContain('<title>t1: -1</title>');
  });

  test('an estimate at its mean, its error bar from mean - half-width to mean + half-width, the band behind', () => {
    const svg = estimatePlot('e', {
      title: 't', x: 'c', y: 'loss',
      estimates: [{ label: 'a', mean: 2, halfWidth: 0.5 }, { label: 'b', mean: 3, halfWidth: NaN, noise: true }],
      band: { lo: 1.8, hi: 2.2, label: 'best' },
    });
    // Axis 1.5..3 (step 0.5); a legend, so two slots of 480 / 2.
    const m = marks(svg);
    near(m[0]!.x, 70 + 120);
    near(m[0]!.y, place(2, 1.5, 3, 310, 34));
    expect(m[0]!.y).toBeCloseTo(218, 5);
    near(m[1]!.x, 70 + 360);
    near(m[1]!.y, 34);
    expect([m[0]!.fill, m[1]!.fill, m[1]!.cls]).toEqual(['#1f77b4', '#fff', 'mark noise']);
    const bar = svg.match(/<g class="errorbar"[^>]*>([\s\S]*?)<\/g>/)![1]!;
    const [stem, capLo, capHi] = elements(bar, 'line');
    expect([stem!.x1, stem!.x2]).toEqual(['190.0', '190.0']);
    near(Number(stem!.y1), place(1.5, 1.5, 3, 310, 34));
    near(Number(stem!.y2), place(2.5, 1.5, 3, 310, 34));
    expect([capLo!.x1, capLo!.x2, capLo!.y1, capHi!.y1]).toEqual(['184', '196', stem!.y1, stem!.y2]);
    const band = elements(svg, 'rect').find((r) => r.class === 'noise-band')!;
    near(Number(band.y), place(2.2, 1.5, 3, 310, 34));
    near(Number(band.height), place(1.8, 1.5, 3, 310, 34) - place(2.2, 1.5, 3, 310, 34));
    expect([band.x, band.width]).toEqual(['70', '480']);
    expect(svg).toContain('<title>a: 2 ± 0.5</title>');
    expect(svg).toContain('<title>b: 3 (no interval), inside the noise</title>');
  });

  test('estimates in order of their means, whatever the slot', () => {
    const means = [0.3, -0.2, 1.1, 0.7];
    const svg = estimatePlot('e', { title: 't', x: 'c', y: 'v', estimates: means.map((mean, i) => ({ label: `c${i}`, mean, halfWidth: 0.1 })) });
    const m = marks(svg);
    higherIsUp(means.map((v, i) => ({ value: v, y: m[i]!.y })));
    higherIsUp(yTicks(svg));
    for (let i = 1; i < m.length; i++) expect(m[i]!.x).toBeGreaterThan(m[i - 1]!.x);
    // No legend: four slots of 670 / 4; a NaN mean draws nothing.
    near(m[2]!.x, 70 + (670 / 4) * 2.5);
    expect(marks(estimatePlot('e', { title: 't', x: 'c', y: 'v', estimates: [{ label: 'n', mean: NaN, halfWidth: NaN }] }))).toEqual([]);
  });

  test('scatter: both coordinates placed by hand, and the zero lines', () => {
    const svg = scatterPlot('s', { title: 't', x: 'drop', y: 'rise', points: [{ label: 'a', x: 0.5, y: 0.2 }, { label: 'b', x: -0.25, y: -0.1 }] });
    // x axis -0.4..0.6 (step 0.2), y axis -0.1..0.2 (step 0.1), legend: x 70..550.
    const m = marks(svg);
    near(m[0]!.x, place(0.5, -0.4, 0.6, 70, 550));
    near(m[0]!.y, 34);
    near(m[1]!.x, place(-0.25, -0.4, 0.6, 70, 550));
    near(m[1]!.y, 310);
    expect([m[0]!.fill, m[1]!.fill]).toEqual(['#1f77b4', '#d62728']);
    const [vertical, horizontal] = elements(svg, 'line').filter((l) => l.class === 'ref');
    near(Number(vertical!.x1), place(0, -0.4, 0.6, 70, 550));
    near(Number(horizontal!.y1), place(0, -0.1, 0.2, 310, 34));
    expect(m[0]!.x).toBeGreaterThan(Number(vertical!.x1));
    expect(m[1]!.y).toBeGreaterThan(Number(horizontal!.y1));
  });
});

describe('the report\'s own plots', () => {
  test('a run\'s loss curves: a falling loss is drawn falling, a point placed by hand', () => {
    const svg = plotsOf(renderReport({ title: 'r', runs: [{ name: 'r', metrics }] })).get('loss')!;
    const m = marks(svg);
    // Train (4 points), eval, retain: one mark per point, series by series.
    const values = [3, 2.5, 2.2, 2.0, 3.1, 2.4, 2.0, 2.1];
    const steps = [1, 2, 3, 4, 0, 4, 0, 4];
    expect(m).toHaveLength(8);
    higherIsUp(values.map((value, i) => ({ value, y: m[i]!.y })));
    for (let i = 0; i < 8; i++) for (let j = 0; j < 8; j++) if (steps[i]! > steps[j]!) expect(m[i]!.x).toBeGreaterThan(m[j]!.x);
    // Steps 0..4 over 70..550 (three series, so a legend); losses 2..3.1 give an axis 2..3.5.
    near(m[0]!.x, 190);
    near(m[0]!.y, place(3, 2, 3.5, 310, 34));
    near(m[4]!.y, place(3.1, 2, 3.5, 310, 34));
    expect([m[0]!.fill, m[4]!.fill, m[6]!.fill]).toEqual(['#1f77b4', '#d62728', '#2ca02c']);
  });

  test('learning against forgetting: the eval drop and the retain rise, placed by hand', () => {
    const lf = learningAndForgetting(metrics);
    expect(lf.split).toBe('eval');
    expect(lf.drop).toBeCloseTo(3.1 - 2.4, 12);
    expect(lf.rise).toBeCloseTo(2.1 - 2.0, 12);
    const svg = plotsOf(renderReport({ title: 'r', runs: [{ name: 'r', metrics }] })).get('learning-forgetting')!;
    const [p] = marks(svg);
    // One point, no legend: x axis 0..0.8 over 70..740, y axis 0..0.1 over 310..34.
    near(p!.x, place(0.7, 0, 0.8, 70, 740));
    near(p!.y, 34);
    // A held-out split stands in for eval data; no retain split, no rise; one eval, no change.
    const heldout = metrics.map((m) => (m.type === 'eval' && m.split === 'eval' ? { ...m, split: 'heldout' } : m));
    expect(learningAndForgetting(heldout)).toEqual({ split: 'heldout', drop: expect.closeTo(0.7, 12), rise: expect.closeTo(0.1, 12) });
    expect(learningAndForgetting(metrics.filter((m) => m.type === 'step' || m.split === 'eval'))).toEqual({ split: 'eval', drop: expect.closeTo(0.7, 12), rise: undefined });
    expect(learningAndForgetting(metrics.slice(0, 5))).toEqual({ split: 'eval', drop: undefined, rise: undefined });
    expect(learningAndForgetting(metrics.slice(0, 4))).toEqual({ split: undefined, drop: undefined, rise: undefined });
  });

  test('long curves are drawn as bucket means, each the mean of its consecutive steps', () => {
    const points = Array.from({ length: 1001 }, (_, i) => ({ x: i, y: (i * 7) % 13 }));
    const t = thin(points, 10);
    expect(t).toHaveLength(10);
    for (let b = 0; b < 10; b++) {
      const lo = Math.floor((b * 1001) / 10), hi = Math.floor(((b + 1) * 1001) / 10);
      let sx = 0, sy = 0;
      for (let i = lo; i < hi; i++) [sx, sy] = [sx + i, sy + ((i * 7) % 13)];
      expect(t[b]!.x).toBeCloseTo(sx / (hi - lo), 10);
      expect(t[b]!.y).toBeCloseTo(sy / (hi - lo), 10);
    }
    expect(thin(points.slice(0, 10), 10)).toEqual(points.slice(0, 10));
    const steps: MetricLine[] = Array.from({ length: 501 }, (_, i) => ({ type: 'step', step: i + 1, loss: 1 + (i % 2), lr: 0 }));
    const html = renderReport({ title: 'r', runs: [{ name: 'r', metrics: steps }] });
    expect(marks(plotsOf(html).get('loss')!)).toHaveLength(500);
    expect(html).toContain('Training curves longer than 500 steps are drawn as means of consecutive steps.');
    expect(renderReport({ title: 'r', runs: [{ name: 'r', metrics: steps.slice(0, 500) }] })).not.toContain('Training curves longer');
  });

  // Two arms on one task: LoRA from the float32 base (loss 3.0), QLoRA from the NF4 base (3.2).
  const summary = (mean: number, ci95 = 0.05) => ({ n: 3, mean, sd: 0, ci95 });
  const arm = (id: string, method: 'lora' | 'qlora', evalLoss: number, exact: number, forgetting: number) => ({
    arm: id, what: id, method, target: 'all-linear', r: 8, alpha: 16, rslora: false, scale: 2, trainableParameters: 1000, seeds: [1, 2, 3],
    evalLoss: summary(evalLoss), exactMatch: summary(exact), forgetting: summary(forgetting), intruders: summary(1, 0.5),
    mergeErrorRelative: summary(1e-7, 1e-8), trainSeconds: summary(10, 1), peakHostBytes: summary(2 ** 20, 0),
  });
  const lab = {
    version: 1, quick: true, base: 'b', seeds: [1, 2, 3], runs: [], ran: 6, skipped: 0, wallSeconds: 12,
    settings: { steps: 40, batchSize: 8, seqLen: 64, evalExamples: 64, retainDocs: 64, loraLr: 0.002, fullLr: 0.0005 },
    retain: { documents: 64, baseLoss: 2, nf4BaseLoss: 2.1 },
    tasks: {
      behaviour: {
        train: 96, eval: 32, base: { loss: 3, exactMatch: 0, tokens: 100 }, nf4Base: { loss: 3.2, exactMatch: 0, tokens: 100 },
        quantizationTax: { lossRise: 0.2, exactMatchChange: 0 },
        arms: [arm('lora', 'lora', 2.5, 0.25, 0.1), arm('qlora', 'qlora', 2.6, 0.5, 0.05)],
      },
    },
  } as unknown as LabReport;

  test('the lab\'s trade-off plot measures learning from the base each arm started from', () => {
    const svg = plotsOf(labSection(lab)).get('lab-tradeoff-behaviour')!;
    const [lora, qlora] = marks(svg);
    // Drops 3.0 - 2.5 = 0.5 and 3.2 - 2.6 = 0.6: x axis 0..0.6 over 70..550 (legend); rises 0.1 and 0.05: y axis 0..0.1.
    near(lora!.x, place(0.5, 0, 0.6, 70, 550));
    near(lora!.y, 34);
    near(qlora!.x, 550);
    near(qlora!.y, place(0.05, 0, 0.1, 310, 34));
  });

  test('the lab\'s exact-match plot in percent, its quantization tax as a bar', () => {
    const plots = plotsOf(labSection(lab));
    const m = marks(plots.get('lab-exact-behaviour')!);
    // 25 ± 5 and 50 ± 5 percent: axis 20..60 (step 10), two slots of 670 / 2, no legend.
    near(m[0]!.x, 70 + 670 / 4);
    near(m[0]!.y, place(25, 20, 60, 310, 34));
    near(m[1]!.y, place(50, 20, 60, 310, 34));
    // Error bars of ± 5 points: 20..30 and 45..55 on the same axis.
    const stems = [...plots.get('lab-exact-behaviour')!.matchAll(/<g class="errorbar"[^>]*><line x1="[\d.]+" y1="([\d.]+)" x2="[\d.]+" y2="([\d.]+)"\/>/g)].map((g) => [Number(g[1]), Number(g[2])]);
    expect(stems).toHaveLength(2);
    near(stems[0]![0]!, place(20, 20, 60, 310, 34));
    near(stems[0]![1]!, place(30, 20, 60, 310, 34));
    near(stems[1]![1]!, place(55, 20, 60, 310, 34));
    const ev = marks(plots.get('lab-eval-behaviour')!);
    higherIsUp([{ value: 2.5, y: ev[0]!.y }, { value: 2.6, y: ev[1]!.y }]);
    const fg = marks(plots.get('lab-forgetting-behaviour')!);
    higherIsUp([{ value: 0.1, y: fg[0]!.y }, { value: 0.05, y: fg[1]!.y }]);
    // A rise of 0.2 on an axis 0..0.2: the bar fills the frame's height.
    const [tax] = bars(plots.get('lab-quantization')!);
    near(tax!.y, 34);
    near(tax!.height, 276);
    near(tax!.x, 70 + 670 * 0.15);
  });

  test('the shipped lab fixture: every lab plot ordered as its numbers', () => {
    const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures/lab/lab.json'), 'utf8')) as LabReport;
    const plots = plotsOf(labSection(fixture));
    for (const [task, t] of Object.entries(fixture.tasks)) {
      const by = (name: string) => marks(plots.get(`lab-${name}-${task}`)!);
      higherIsUp(t!.arms.map((a, i) => ({ value: a.evalLoss.mean, y: by('eval')[i]!.y })));
      higherIsUp(t!.arms.map((a, i) => ({ value: a.exactMatch.mean, y: by('exact')[i]!.y })));
      higherIsUp(t!.arms.map((a, i) => ({ value: a.forgetting.mean, y: by('forgetting')[i]!.y })));
      higherIsUp(t!.arms.map((a, i) => ({ value: a.intruders.mean, y: by('intruders')[i]!.y })));
      higherIsUp(t!.arms.map((a, i) => ({ value: a.forgetting.mean, y: by('tradeoff')[i]!.y })));
      const start = (a: ArmSummary) => (a.method === 'qlora' ? t!.nf4Base.loss : t!.base.loss);
      const xs = by('tradeoff').map((q) => q.x);
      for (let i = 0; i < xs.length; i++)
        for (let j = 0; j < xs.length; j++) if (start(t!.arms[i]!) - t!.arms[i]!.evalLoss.mean > start(t!.arms[j]!) - t!.arms[j]!.evalLoss.mean) expect(xs[i]).toBeGreaterThan(xs[j]!);
    }
    const tax = bars(plots.get('lab-quantization')!);
    const rises = Object.values(fixture.tasks).map((t) => t!.quantizationTax.lossRise);
    higherIsUp(rises.map((value, i) => ({ value, y: value >= 0 ? tax[i]!.y : tax[i]!.y + tax[i]!.height })));
  });
});

describe('axis scales and numbers', () => {
  test('nice steps of 1, 2, 5 and 10 times a power of ten', () => {
    expect(linearScale(0, 1)).toEqual({ lo: 0, hi: 1, ticks: [0, 0.2, 0.4, 0.6, 0.8, 1], log: false });
    expect(linearScale(0, 5).ticks).toEqual([0, 1, 2, 3, 4, 5]);
    expect(linearScale(0, 12).ticks).toEqual([0, 5, 10, 15]);
    expect(linearScale(0, 40).ticks).toEqual([0, 10, 20, 30, 40]);
    expect(linearScale(0, 0.3).ticks).toEqual([0, 0.1, 0.2, 0.3]);
    expect(linearScale(0, 6).ticks).toEqual([0, 2, 4, 6]);
    expect(linearScale(-3, -3)).toMatchObject({ lo: -3.4, hi: -2.6 });
    expect(linearScale(0, 0)).toMatchObject({ lo: -1, hi: 1 });
    expect(linearScale(1, 3, 2).ticks).toEqual([1, 2, 3]);
    expect(logScale(5, 5)).toMatchObject({ lo: 1, hi: 10, ticks: [1, 10] });
    expect(logScale(1e-12, 1e12).ticks).toEqual([1e-12, 1e-9, 1e-6, 1e-3, 1, 1e3, 1e6, 1e9, 1e12]);
    expect(logScale(1e-4, 0.5).ticks).toEqual([1e-4, 1e-3, 1e-2, 1e-1, 1]);
  });

  test('scaleFor: log drops what it cannot place, nothing finite gets a default axis', () => {
    expect(scaleFor([-1, 0, 0.5, 20], true)).toMatchObject({ lo: 0.1, hi: 100 });
    expect(scaleFor([NaN, Infinity])).toMatchObject({ lo: 0, hi: 1 });
    expect(scaleFor([0, -2], true)).toMatchObject({ lo: 1, hi: 10, log: true });
    expect(scaleFor([2, 3], false, [0])).toMatchObject({ lo: 0, hi: 3 });
  });

  test('formatNumber: short, exponential only far from one', () => {
    expect([1234.5678, 0.00123456, 0.0009876, 123456, -98765.4, 0, 1 / 3].map((x) => formatNumber(x))).toEqual(['1235', '0.001235', '9.88e-4', '1.23e5', '-98770', '0', '0.3333']);
    expect([NaN, Infinity, -Infinity].map((x) => formatNumber(x))).toEqual(['–', '∞', '−∞']);
    expect(formatNumber(2.71828, 2)).toBe('2.7');
    expect(formatNumber(1e-3)).toBe('0.001');
    expect(formatNumber(1e5)).toBe('1.00e5');
    expect(formatNumber(12345, 1)).toBe('10000');
    expect(formatNumber(123456, 1)).toBe('1e5');
  });
});

describe('axes, legends and empty plots', () => {
  test('category labels sit at their slot centres, slanted and shortened when they would collide', () => {
    const short = barPlot('b', { title: 't', x: 'task', y: 'v', bars: [{ label: 'a', value: 1 }, { label: 'b', value: 2 }] });
    const ticks = (svg: string) => elements(svg, 'text').filter((t) => t.class === 'tick' && t.y === '325');
    // Two slots of 335: centres at 237.5 and 572.5, 15 below the axis.
    expect(ticks(short).map((t) => [t.x, t['text-anchor'], t.transform])).toEqual([['237.5', 'middle', undefined], ['572.5', 'middle', undefined]]);
    expect(short).toContain('>task</text>');
    // 52 characters at 6.5 pixels each overflow a 335-pixel slot: every label turns, the axis title goes.
    const long = 'x'.repeat(52);
    const slanted = barPlot('b', { title: 't', x: 'task', y: 'v', bars: [{ label: long, value: 1 }, { label: 'b', value: 2 }] });
    expect(ticks(slanted).map((t) => [t.x, t['text-anchor'], t.transform])).toEqual([['237.5', 'end', 'rotate(-25 237.5 325)'], ['572.5', 'end', 'rotate(-25 572.5 325)']]);
    expect(slanted).not.toContain('>task</text>');
    expect(slanted).toContain(`>${'x'.repeat(23)}…</text>`);
    const fits = barPlot('b', { title: 't', x: 'task', y: 'v', bars: [{ label: 'x'.repeat(51), value: 1 }, { label: 'b', value: 2 }] });
    expect(ticks(fits)[0]!.transform).toBeUndefined();
    expect(fits).toContain(`>${'x'.repeat(23)}…</text>`);
    expect(barPlot('b', { title: 't', x: 'task', y: 'v', bars: [{ label: 'y'.repeat(24), value: 1 }] })).toContain(`>${'y'.repeat(24)}</text>`);
  });

  test('a legend row per series, 16 apart from the top, the overflow counted in one row', () => {
    const series = Array.from({ length: 20 }, (_, i) => ({ name: i === 0 ? 'n'.repeat(30) : `s${i}`, points: [{ x: i, y: i }] }));
    const svg = linePlot('l', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series });
    const legend = svg.match(/<g class="legend">([\s\S]*?)<\/g>/)![1]!;
    const names = elements(legend, 'text');
    // (360 - 34 - 50) / 16 = 17 rows: 16 series and a row naming the 4 left out.
    expect(names).toHaveLength(17);
    expect(names.map((t) => Number(t.y))).toEqual(Array.from({ length: 17 }, (_, i) => 42 + 16 * i));
    expect(names.every((t) => t.x === '590')).toBe(true);
    expect(legend).toContain(`>${'n'.repeat(25)}…</text>`);
    expect(legend).toContain('>… 4 more</text>');
    const samples = elements(legend, 'line');
    expect(samples[1]).toMatchObject({ x1: '562', x2: '584', y1: '58', y2: '58', stroke: '#d62728' });
    expect(samples[16]!.stroke).toBe('#777');
    // Seventeen series fit.
    const fit = linePlot('l', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: series.slice(0, 17) });
    expect(fit).not.toContain('more</text>');
    // Scatter legends are dots in the points' colours; an estimate plot's noise entry is an open dot.
    const sc = scatterPlot('s', { title: 't', x: 'x', y: 'y', points: [{ label: 'a', x: 1, y: 1 }, { label: 'b', x: 2, y: 2 }] });
    expect(elements(sc.match(/<g class="legend">[\s\S]*?<\/g>/)![0], 'circle').map((c) => [c.cx, c.cy, c.fill])).toEqual([['573', '42', '#1f77b4'], ['573', '58', '#d62728']]);
    const est = estimatePlot('e', { title: 't', x: 'x', y: 'y', estimates: [{ label: 'a', mean: 1, halfWidth: 0.1, noise: true }] });
    expect(elements(est.match(/<g class="legend">[\s\S]*?<\/g>/)![0], 'circle')[0]).toMatchObject({ fill: '#fff', stroke: '#1f77b4' });
  });

  test('titles, axis labels and an empty plot that says it is empty', () => {
    const svg = linePlot('n&me', { title: 'A < B', x: { label: 'step' }, y: { label: 'loss' }, series: [] });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" data-plot="n&amp;me" viewBox="0 0 760 360" width="760" height="360" role="img" aria-label="A &lt; B">')).toBe(true);
    expect(svg).toContain('<text class="title" x="380" y="20" text-anchor="middle">A &lt; B</text>');
    // The y label turned along the axis at its middle, the x label centred under the frame.
    expect(svg).toContain('<text class="label" x="16" y="172" text-anchor="middle" transform="rotate(-90 16 172)">loss</text>');
    expect(svg).toContain('<text class="label" x="405" y="350" text-anchor="middle">step</text>');
    expect(svg).toContain('<text class="label" x="405" y="172" text-anchor="middle">no data to plot</text>');
    expect(marks(svg)).toEqual([]);
    for (const empty of [barPlot('b', { title: 't', x: 'x', y: 'y', bars: [] }), estimatePlot('e', { title: 't', x: 'x', y: 'y', estimates: [] }), scatterPlot('s', { title: 't', x: 'x', y: 'y', points: [] })])
      expect(empty).toContain('no data to plot');
    expect(linePlot('p', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: [{ name: 's', points: [{ x: 1, y: 1 }] }] })).not.toContain('no data');
    // Axis frame lines: the y axis at x 70 from 310 up to 34, the x axis at y 310 from 70 to 740.
    const axes = elements(svg, 'line').filter((l) => l.class === 'axis');
    expect(axes[0]).toMatchObject({ x1: '70', y1: '310', x2: '70', y2: '34' });
    expect(axes.find((l) => l.y1 === '310' && l.y2 === '310' && l.x1 === '70')!.x2).toBe('740');
  });
});
