/**
 * The report's sweep, analysis and lab sections on hand-made reports: which configuration is marked
 * as noise against the best, where the best's interval band is drawn, the numbers of every table cell,
 * and the metrics reader's errors. Pixel positions are worked out by hand from the axis ends and the
 * frame (x 70..740, or 70..550 with a legend; y 310 at the axis bottom up to 34 at its top).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AnalyzeReport } from '../lib/analysis/analyze-run';
import { labSection, readMetrics, renderReport, sweepRuns, writeReport } from '../lib/report';
import type { SweepReport } from '../lib/sweep/runner';
import { labArm, quickLab, summary as s } from './helpers/lab';

type Attrs = Record<string, string>;
function elements(svg: string, tag: string): Attrs[] {
  return [...svg.matchAll(new RegExp(`<${tag}\\b([^>]*?)/?>`, 'g'))].map((m) => Object.fromEntries([...m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!])));
}
const plotsOf = (html: string) => new Map([...html.matchAll(/<svg\b[^>]*data-plot="([^"]+)"[^>]*>[\s\S]*?<\/svg>/g)].map((m) => [m[1]!, m[0]]));
const marks = (svg: string) => elements(svg, 'circle').filter((c) => /\bmark\b/.test(c.class ?? ''));
const place = (v: number, lo: number, hi: number, from: number, to: number) => from + ((v - lo) / (hi - lo)) * (to - from);
const near = (a: string | number, b: number) => expect(Math.abs(Number(a) - b)).toBeLessThanOrEqual(0.051);
/** The rows of the table that follows a header cell, as cell texts. */
function rowsAfter(html: string, header: string): string[][] {
  const at = html.indexOf(`<th>${header}</th>`);
  expect(at).toBeGreaterThanOrEqual(0);
  const table = html.slice(at, html.indexOf('</table>', at));
  return [...table.matchAll(/<tr>((?:<td>[\s\S]*?<\/td>)+)<\/tr>/g)].map((r) => [...r[1]!.matchAll(/<td>([\s\S]*?)<\/td>/g)].map((c) => c[1]!));
}

/** Every table of a document holds cells and nothing else: no stray text between them. */
function wellFormedTables(html: string): void {
  const tables = html.match(/<table>[\s\S]*?<\/table>/g) ?? [];
  expect(tables.length).toBeGreaterThan(0);
  for (const t of tables) expect(t).toMatch(/^<table><thead><tr>(<th>[^<]*<\/th>)+<\/tr><\/thead><tbody>(<tr>(<td>[^<]*<\/td>)+<\/tr>)*<\/tbody><\/table>$/);
}

describe('the sweep section', () => {
  const config = (id: string, label: string, loss: number, forgetting: number | null) => ({
    id, label, values: {}, seeds: [1, 2, 3], loss: s(loss, 0.1), forgetting: forgetting === null ? null : s(forgetting, 0.02),
    wallSec: s(10, 1), tokensPerSec: s(2000, 100), intruders: s(1, 0.5), peakRssBytes: 3 * 2 ** 20,
  });
  const sweep: SweepReport = {
    out: '/nowhere', metric: 'eval', ran: 9, skipped: 0, caveat: 'runs shared the process',
    configs: [config('c1', 'r=8', 2.05, 0.05), config('c2', 'r=4', 2.0, null), config('c3', '', 2.5, 0.2)],
    comparisons: [
      { a: 'c1', b: 'c2', diff: 0.05, p: 0.4, pAdjusted: 0.8, insideNoise: true, seedsNeeded: 12, seedsTried: 3, note: 'inside the noise' },
      { a: 'c2', b: 'c3', diff: -0.5, p: 0.001, pAdjusted: 0.003, insideNoise: false, seedsNeeded: null, seedsTried: 3, note: 'c2 lower' },
      { a: 'c1', b: 'c3', diff: -0.45, p: 0.01, pAdjusted: 0.02, insideNoise: true, seedsNeeded: null, seedsTried: 3, note: 'n' },
    ],
  } as unknown as SweepReport;
  const html = renderReport({ title: 's', sweep });
  const svg = plotsOf(html).get('sweep')!;

  test('the best (lowest mean) is filled; a configuration inside its noise is drawn open, one outside filled', () => {
    const m = marks(svg);
    expect(m.map((c) => c.class)).toEqual(['mark noise', 'mark', 'mark']);
    expect(m.map((c) => c.fill)).toEqual(['#fff', '#1f77b4', '#1f77b4']);
    // An unnamed configuration is the base.
    expect(svg).toContain('<title>base: 2.5 ± 0.1</title>');
    expect(svg).toContain('<title>r=8: 2.05 ± 0.1, inside the noise</title>');
  });

  test('the band is the best configuration\'s interval, placed by hand', () => {
    // Extent 1.9..2.6 with the band 1.9..2.1: axis 1.8..2.6 (step 0.2); a legend, so x 70..550.
    const band = elements(svg, 'rect').find((r) => r.class === 'noise-band')!;
    near(band.y!, place(2.1, 1.8, 2.6, 310, 34));
    near(band.height!, place(1.9, 1.8, 2.6, 310, 34) - place(2.1, 1.8, 2.6, 310, 34));
    const m = marks(svg);
    near(m[1]!.cy!, place(2.0, 1.8, 2.6, 310, 34));
    near(m[1]!.cx!, 70 + 160 * 1.5);
    expect(svg).toContain('>best (r=4) 95% CI</text>');
    expect(svg).toContain('>inside the noise</text>');
  });

  test('forgetting is plotted for the configurations that measured it', () => {
    const f = plotsOf(html).get('sweep-forgetting')!;
    const m = marks(f);
    expect(m).toHaveLength(2);
    // 0.05 ± 0.02 and 0.2 ± 0.02: axis 0..0.25 (step 0.05), no legend, two slots of 335.
    near(m[0]!.cy!, place(0.05, 0, 0.25, 310, 34));
    near(m[1]!.cy!, place(0.2, 0, 0.25, 310, 34));
    near(m[1]!.cx!, 70 + 335 * 1.5);
  });

  test('the tables: intervals, MB, comparisons and seeds needed', () => {
    expect(rowsAfter(html, 'configuration')).toEqual([
      ['r=8', '3', '2.05 ± 0.1', '0.05 ± 0.02', '1 ± 0.5', '10 ± 1', '2000 ± 100', '3'],
      ['r=4', '3', '2 ± 0.1', '–', '1 ± 0.5', '10 ± 1', '2000 ± 100', '3'],
      ['base', '3', '2.5 ± 0.1', '0.2 ± 0.02', '1 ± 0.5', '10 ± 1', '2000 ± 100', '3'],
    ]);
    expect(rowsAfter(html, 'a')).toEqual([
      ['r=8', 'r=4', '+0.05', '0.4', '0.8', '12', 'inside the noise'],
      ['r=4', 'base', '-0.5', '0.001', '0.003', '–', 'c2 lower'],
      ['r=8', 'base', '-0.45', '0.01', '0.02', '&gt; 3', 'n'],
    ]);
    expect(html).toContain('<p class="note">Note: runs shared the process</p>');
    expect(html).not.toContain('One seed per configuration');
     wellFormedTables(html);
  });

  test('one seed: no intervals, no band, and a note saying so', () => {
    const one = { ...sweep, caveat: null, comparisons: [{ ...sweep.comparisons[0]!, p: null, pAdjusted: null, seedsNeeded: null }], configs: sweep.configs.map((c) => ({ ...c, seeds: [1], loss: s(c.loss.mean, NaN, 1) })) } as SweepReport;
    const h = renderReport({ title: 's', sweep: one });
    const p = plotsOf(h).get('sweep')!;
    expect(p).not.toContain('noise-band');
    expect(p).not.toContain('errorbar');
    expect(h).toContain('One seed per configuration: noise cannot be told from effect; give more seeds to compare.');
    expect(rowsAfter(h, 'configuration')[1]![2]).toBe('2 (no CI)');
    expect(rowsAfter(h, 'a')[0]!.slice(3, 6)).toEqual(['–', '–', '–']);
    expect(h).not.toContain('Note:');
    // A configuration with no finite loss cannot be the best.
    const nan = { ...sweep, configs: [config('c1', 'a', NaN, null), config('c2', 'b', 3, null)], comparisons: [] } as unknown as SweepReport;
    expect(plotsOf(renderReport({ title: 's', sweep: nan })).get('sweep')).toContain('>best (b) 95% CI</text>');
    expect(plotsOf(renderReport({ title: 's', sweep: nan })).has('sweep-forgetting')).toBe(false);
  });
});

describe('the analysis section', () => {
  const q = 'model.layers.0.self_attn.q_proj.weight', c = 'transformer.h.1.attn.c_proj.weight';
  const analysis = {
    base: 'base-dir', tuned: { kind: 'adapter', dir: 'adapter-dir' }, k: 10, epsilon: 0.5,
    intruders: { total: 3, byMatrix: { [q]: 2, [c]: 1 }, byLayer: { 0: 2, 1: 1 }, sweep: [{ epsilon: 0.1, total: 0 }, { epsilon: 0.5, total: 3 }, { epsilon: 0.9, total: 7 }] },
    spectra: { [q]: { singularValues: [4, 1, 0.25], effectiveRank: 2.125, topREnergy: 0.75 } },
    forgetting: { file: 'retain.jsonl', examples: 3, tokens: 60, baseLoss: 2.5, tunedLoss: 2.625, rise: 0.125 },
    quantization: { blockSize: 64, byMatrix: { [q]: { relative: 0.0625, relativeDoubleQuant: 0.07 } }, total: { relative: 0.05, relativeDoubleQuant: 0.051 }, data: { file: 'd.jsonl', examples: 2, tokens: 40, floatLoss: 3, nf4Loss: 3.25, rise: 0.25, klMean: 0.0123, positions: 48 } },
    merge: { probe: 'the first example', float32: { maxAbs: 1e-6, relative: 2e-7 }, bfloat16: { maxAbs: 0.01, relative: 0.002 }, nf4: { maxAbs: 0.5, relative: 0.05 } },
  } as unknown as AnalyzeReport;
  const html = renderReport({ title: 'a', analysis });
  const plots = plotsOf(html);

  test('intruders by layer: bars from zero to their count, placed by hand', () => {
    const bars = elements(plots.get('intruders-by-layer')!, 'rect').filter((r) => r.class === 'mark');
    // Counts 2 and 1 on an axis 0..2: the first bar is the frame's height, the second half of it.
    near(bars[0]!.y!, 34);
    near(bars[0]!.height!, 276);
    near(bars[1]!.y!, 172);
    near(bars[1]!.height!, 138);
    near(bars[1]!.x!, 70 + 335 * 1.15);
  });

  test('the threshold sweep with its reference line at the ε counted at', () => {
    const svg = plots.get('intruder-sweep')!;
    // ε 0.1..0.9: axis 0..1; totals 0..7: axis 0..8; one series, no legend.
    const ref = elements(svg, 'line').find((l) => l.class === 'ref')!;
    near(ref.x1!, 405);
    const m = marks(svg);
    near(m[2]!.cx!, place(0.9, 0, 1, 70, 740));
    near(m[2]!.cy!, place(7, 0, 8, 310, 34));
    expect(rowsAfter(html, 'ε</th><th>0.1')).toEqual([['intruders', '0', '3', '7']]);
  });

  test('spectra on a log axis, at index i + 1, named by their place in the layer', () => {
    const svg = plots.get('spectra')!;
    const m = marks(svg);
    // 0.25..4 on a log axis 0.1..10; indices 1..3.
    near(m[1]!.cx!, 405);
    near(m[1]!.cy!, 172);
    near(m[0]!.cy!, 310 - ((Math.log10(4) + 1) / 2) * 276);
    expect(svg).toContain('<title>0.self_attn.q_proj: 2, 1</title>');
  });

  test('every table cell of the analysis', () => {
    expect(rowsAfter(html, 'base')[0]).toEqual(['base-dir', 'adapter-dir (adapter)', '10', '0.5', '3']);
    expect(rowsAfter(html, 'matrix')).toEqual([
      [q, '2', '2.125', '0.75', '4', '0.0625'],
      [c, '1', '–', '–', '–', '–'],
    ]);
    expect(rowsAfter(html, 'retain file')).toEqual([['retain.jsonl', '3', '60', '2.5', '2.625', '+0.125']]);
    expect(html).toContain('<h3>NF4 quantization of the base (block 64)</h3>');
    expect(rowsAfter(html, 'relative weight error')).toEqual([['0.05', '0.051']]);
    expect(rowsAfter(html, 'data')).toEqual([['d.jsonl', '3', '3.25', '+0.25', '0.0123', '48']]);
    expect(rowsAfter(html, 'max |Δlogit|')).toEqual([['float32', '1.00e-6', '2.00e-7'], ['bfloat16', '0.01', '0.002'], ['nf4', '0.5', '0.05']]);
    expect(html).toContain('Merged against unmerged logits on the first example.');
    // A full checkpoint: no merge, no data, no forgetting; a layer name outside the stack stays whole.
    const bare = renderReport({ title: 'a', analysis: { ...analysis, merge: undefined, forgetting: undefined, quantization: { ...analysis.quantization, data: undefined }, spectra: { 'lm_head.weight': analysis.spectra[q]! } } });
    expect(bare).not.toMatch(/Merge error|retain file|<th>data<\/th>/);
    expect(bare).toContain('<title>lm_head: 2, 1</title>');
    wellFormedTables(html);
  });
});

describe('the lab section\'s text and tables', () => {
  const arm = (id: string, method: string, extra: Record<string, unknown> = {}) => labArm({
    arm: id, what: id, method, seeds: [1, 2],
    evalLoss: s(2.5, 0.25, 2), exactMatch: s(0.125, 0.0625, 2), forgetting: s(0.05, 0.01, 2), intruders: s(3, 1, 2),
    mergeErrorRelative: s(2e-7, 1e-8, 2), trainSeconds: s(12.5, 0.5, 2), peakHostBytes: s(3 * 2 ** 20, 2 ** 19, 2), ...extra,
  });
  const lab = quickLab(
    { seeds: [1, 2], retain: { documents: 64, baseLoss: 2.25, nf4BaseLoss: 2.375 }, ran: 3, skipped: 1, wallSeconds: 42.5 },
    {
      base: { loss: 3, exactMatch: 0.25 }, nf4Base: { loss: 3.5, exactMatch: 0.125 }, quantizationTax: { lossRise: 0.5, exactMatchChange: -0.125 },
      arms: [arm('qlora-r8', 'qlora'), arm('full', 'full', { scale: null, r: 0, alpha: 0, mergeErrorRelative: null })],
    },
  );
  const html = labSection(lab);

  test('the notes carry the settings, the retain losses and the base scores', () => {
    expect(html).toContain('lorakit lab --quick: seeds 1, 2; 40 steps of 8 × 64 tokens; lr 0.002 (LoRA, QLoRA) and 0.0005 (full). ');
    expect(html).toContain('on 64 documents (base loss 2.25, NF4 base 2.375)');
    expect(html).toContain('2000 training and 150 held-out questions; the base scores eval loss 3, exact match 25% (NF4 base 3.5, 12.5%).');
    expect(html).toContain('3 runs trained, 1 resumed from earlier results; 42.5 s.');
    expect(html).toContain('knowledge: eval loss per arm (mean, 95% CI over 2 seeds)');
    expect(html).toContain('<h3>knowledge</h3><p class="note">2000 training');
    expect(labSection({ ...lab, quick: false })).toContain('lorakit lab: seeds 1, 2;');
  });

  test('the arm table: learning from the NF4 base for QLoRA, percent, MB and no merge error for full fine-tuning', () => {
    expect(rowsAfter(html, 'arm')).toEqual([
      ['qlora-r8', 'qlora', 'all-linear', '8', '16', '2', '125,952', '2.5 ± 0.25', '1 ± 0.25', '12.5 ± 6.25', '0.05 ± 0.01', '3 ± 1', '2.00e-7 ± 1.00e-8', '12.5 ± 0.5', '3 ± 0.5'],
      ['full', 'full', 'all-linear', '0', '0', '–', '125,952', '2.5 ± 0.25', '0.5 ± 0.25', '12.5 ± 6.25', '0.05 ± 0.01', '3 ± 1', '–', '12.5 ± 0.5', '3 ± 0.5'],
    ]);
    expect(rowsAfter(html, 'task')).toEqual([['knowledge', '3', '3.5', '+0.5', '-12.5']]);
    // No change carries no sign.
    const t = lab.tasks.knowledge!;
    const zero = labSection({ ...lab, tasks: { knowledge: { ...t, quantizationTax: { lossRise: 0, exactMatchChange: 0 } } } });
    expect(rowsAfter(zero, 'task')).toEqual([['knowledge', '3', '3.5', '0', '0']]);
    const bar = elements(plotsOf(html).get('lab-quantization')!, 'rect').find((r) => r.class === 'mark')!;
    expect(bar.height).toBe('276.0');
    wellFormedTables(html);
  });
});

describe('readMetrics', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-report-sections-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const read = (text: string) => {
    const f = path.join(dir, 'm.jsonl');
    fs.writeFileSync(f, text);
    return readMetrics(f);
  };

  test('each kind of bad line is named with its line number', () => {
    expect(() => read('{"type":"step","step":1,"loss":2}\n7\n')).toThrow(/m\.jsonl:2: not a JSON object/);
    expect(() => read('null\n')).toThrow(/m\.jsonl:1: not a JSON object/);
    expect(() => read('{"type":"step","step":"1","loss":2}\n')).toThrow(/m\.jsonl:1: a step line needs numbers 'step' and 'loss'/);
    expect(() => read('{"type":"step","step":1}\n')).toThrow(/a step line needs/);
    expect(() => read('{"type":"eval","step":1,"loss":2}\n')).toThrow(/m\.jsonl:1: an eval line needs 'step', 'split' and 'loss'/);
    expect(() => read('{"type":"eval","split":"eval","loss":2}\n')).toThrow(/an eval line needs/);
    expect(() => read('{"type":"eval","step":1,"split":"eval","loss":"2"}\n')).toThrow(/an eval line needs/);
  });

  test('CRLF lines, a missing lr read as NaN, a null loss as NaN, other fields kept', () => {
    const m = read('{"type":"step","step":1,"loss":2.5,"gradNorm":0.5}\r\n{"type":"step","step":2,"loss":null,"lr":0.001}\r\n  \r\n{"type":"eval","step":2,"split":"retain","loss":1.5,"tokens":9}\r\n');
    expect(m).toHaveLength(3);
    expect(m[0]).toMatchObject({ type: 'step', step: 1, loss: 2.5, gradNorm: 0.5 });
    expect(Number.isNaN((m[0] as { lr: number }).lr)).toBe(true);
    expect(Number.isNaN(m[1]!.loss)).toBe(true);
    expect((m[1] as { lr: number }).lr).toBe(0.001);
    expect(m[2]).toEqual({ type: 'eval', step: 2, split: 'retain', loss: 1.5, tokens: 9 });
  });

  test('sweepRuns: the metrics of every run that left them, named by configuration and seed', () => {
    const line = (loss: number) => `${JSON.stringify({ type: 'step', step: 1, loss, lr: 0 })}\n`;
    for (const [id, seed, loss] of [['c1', 1, 2], ['c2', 2, 3]] as const) {
      fs.mkdirSync(path.join(dir, 'sweep', 'runs', id, `seed-${seed}`), { recursive: true });
      fs.writeFileSync(path.join(dir, 'sweep', 'runs', id, `seed-${seed}`, 'metrics.jsonl'), line(loss));
    }
    const report = { out: path.join(dir, 'sweep'), configs: [{ id: 'c1', label: 'r=4', seeds: [1, 2] }, { id: 'c2', label: '', seeds: [1, 2] }] } as unknown as SweepReport;
    expect(sweepRuns(report)).toEqual([
      { name: 'r=4 seed 1', metrics: [{ type: 'step', step: 1, loss: 2, lr: 0 }] },
      { name: 'base seed 2', metrics: [{ type: 'step', step: 1, loss: 3, lr: 0 }] },
    ]);
  });

  test('writeReport writes the rendered document where it is asked, making the folder', () => {
    const file = writeReport(path.join(dir, 'deep', 'r.html'), { title: 'T & t' });
    expect(file).toBe(path.join(dir, 'deep', 'r.html'));
    expect(fs.readFileSync(file, 'utf8')).toBe(renderReport({ title: 'T & t' }));
    expect(fs.readFileSync(file, 'utf8')).toContain('<title>T &amp; t</title>');
  });
});
