import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { analyzeRun, type AnalyzeReport } from '../lib/analysis/analyze-run';
import { runAnalyze } from '../lib/cli/commands/analyze';
import { TASKS, type LabReport } from '../lib/lab';
import { barPlot, escapeHtml, estimatePlot, formatNumber, labSection, linePlot, linearScale, logScale, readMetrics, renderReport, scatterPlot, thin, writeReport, sweepRuns } from '../lib/report';
import { parseSpec } from '../lib/sweep/spec';
import { runSweep, type SweepReport } from '../lib/sweep/runner';
import { train } from '../lib/train/trainer';
import { RUN_METRICS as metrics } from './helpers/report';
import { tempDirs } from './helpers/tmp';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const tmp = tempDirs('lorakit-report-');

/** The <svg> elements of a document by their data-plot name, each with its count of marks. */
function plots(html: string): { name: string; marks: number; svg: string }[] {
  return [...html.matchAll(/<svg\b[^>]*data-plot="([^"]+)"[^>]*>([\s\S]*?)<\/svg>/g)].map((m) => ({
    name: m[1]!,
    marks: [...m[2]!.matchAll(/<(?:circle|rect)\b[^>]*class="mark\b/g)].length,
    svg: m[0],
  }));
}

describe('plot helpers', () => {
  test('text is escaped everywhere it is shown', () => {
    expect(escapeHtml(`<b a="1">'&'</b>`)).toBe('&lt;b a=&quot;1&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;');
    const evil = '<script>alert(1)</script>';
    const html = renderReport({ title: evil, runs: [{ name: `run "${evil}"`, metrics }] });
    expect(html).not.toMatch(/<script/i);
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toContain('data-run="run &quot;&lt;script&gt;');
  });

  test('axis ranges widen known data to round ticks', () => {
    expect(linearScale(0.3, 9.7)).toEqual({ lo: 0, hi: 10, ticks: [0, 2, 4, 6, 8, 10], log: false });
    expect(linearScale(2.03, 2.41)).toMatchObject({ lo: 2, hi: 2.5, ticks: [2, 2.1, 2.2, 2.3, 2.4, 2.5] });
    // One value gets a span of ±10% around it.
    expect(linearScale(5, 5)).toMatchObject({ lo: 4.4, hi: 5.6 });
    expect(linearScale(-0.7, 0.2)).toMatchObject({ lo: -0.8, hi: 0.2 });
    expect(logScale(0.003, 42)).toEqual({ lo: 1e-3, hi: 100, ticks: [1e-3, 1e-2, 1e-1, 1, 10, 100], log: true });
    // Past eight decades only every second power is ticked.
    expect(logScale(1e-9, 1).ticks).toEqual([1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1]);
    const svg = linePlot('p', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series: [{ name: 's', points: [{ x: 1, y: 0.3 }, { x: 3, y: 9.7 }] }] });
    const yTicks = [...svg.matchAll(/<text class="tick"[^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(yTicks).toEqual(['0', '2', '4', '6', '8', '10']);
  });

  test('one mark per point that can be drawn', () => {
    const series = [
      { name: 'a', points: [1, 2, 3, 4, 5].map((x) => ({ x, y: x * x })) },
      { name: 'b', points: [{ x: 1, y: 2 }, { x: 2, y: NaN }, { x: 3, y: 0 }] },
    ];
    expect(plots(linePlot('l', { title: 't', x: { label: 'x' }, y: { label: 'y' }, series }))[0]!.marks).toBe(7);
    // A log axis cannot place 0: that point is left out.
    expect(plots(linePlot('l', { title: 't', x: { label: 'x' }, y: { label: 'y', log: true }, series }))[0]!.marks).toBe(6);
    expect(plots(barPlot('b', { title: 't', x: 'x', y: 'y', bars: [{ label: '0', value: 3 }, { label: '1', value: 0 }, { label: '2', value: 1 }] }))[0]!.marks).toBe(3);
    const est = estimatePlot('e', { title: 't', x: 'x', y: 'y', estimates: [{ label: 'a', mean: 1, halfWidth: 0.1 }, { label: 'b', mean: 1.05, halfWidth: NaN, noise: true }] });
    expect(plots(est)[0]!.marks).toBe(2);
    expect(est.match(/class="errorbar"/g)).toHaveLength(1);
    expect(est.match(/class="mark noise"/g)).toHaveLength(1);
    expect(plots(scatterPlot('s', { title: 't', x: 'x', y: 'y', points: [{ label: 'a', x: 1, y: 2 }, { label: 'b', x: -1, y: 0.5 }] }))[0]!.marks).toBe(2);
  });

  test('long training curves are thinned to bucket means', () => {
    const points = Array.from({ length: 1000 }, (_, i) => ({ x: i, y: i % 2 }));
    const t = thin(points, 100);
    expect(t).toHaveLength(100);
    expect(t[0]).toEqual({ x: 4.5, y: 0.5 });
  });

  test('readMetrics parses metrics.jsonl, passes over other line types and names a bad line', () => {
    const dir = tmp(), file = path.join(dir, 'metrics.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ type: 'step', step: 1, loss: 2, lr: 1e-3, tokensPerSec: 10 })}\n\n{"type":"eval","step":1,"split":"heldout","loss":null}\n{"type":"note"}\n`);
    const m = readMetrics(file);
    expect(m).toHaveLength(2);
    expect(m[0]).toMatchObject({ type: 'step', step: 1, loss: 2, tokensPerSec: 10 });
    expect(m[1]!.type === 'eval' && Number.isNaN(m[1]!.loss)).toBe(true);
    fs.appendFileSync(file, '{"type":"step"\n');
    expect(() => readMetrics(file)).toThrow(/metrics\.jsonl:5: not a JSON line/);
  });

  test('a report with only some parts still renders', () => {
    expect(plots(renderReport({ title: 'empty' }))).toHaveLength(0);
    expect(renderReport({ title: 'empty' })).toMatch(/Nothing to report/);
    const runsOnly = plots(renderReport({ title: 'runs', runs: [{ name: 'r', metrics }] }));
    expect(runsOnly.map((p) => p.name)).toEqual(['loss', 'learning-forgetting']);
    expect(runsOnly[0]!.marks).toBe(4 + 2 + 2);
    expect(runsOnly[1]!.marks).toBe(1);
    // Without retain data there is no forgetting to plot: the section says so instead.
    const noRetain = renderReport({ title: 'r', runs: [{ name: 'r', metrics: metrics.filter((m) => m.type !== 'eval' || m.split !== 'retain') }] });
    expect(plots(noRetain).map((p) => p.name)).toEqual(['loss']);
    expect(noRetain).toMatch(/nothing to plot/);
  });
});

function chromium(): string {
  const found = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((f) => fs.existsSync(f));
  if (!found) throw new Error('chromium is not installed: run `apt-get install chromium` (CI installs it) to render the HTML report test');
  return found;
}

function runChromium(args: string[]): string {
  const profile = tmp();
  const r = spawnSync(chromium(), ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=${profile}`, ...args], { encoding: 'utf8', timeout: 90000, maxBuffer: 64 * 2 ** 20 });
  fs.rmSync(profile, { recursive: true, force: true });
  if (r.status !== 0) throw new Error(`chromium failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** Width, height and RGBA pixels of an 8-bit, non-interlaced PNG (what Chromium's screenshots are). */
function decodePng(buf: Buffer): { width: number; height: number; pixels: Buffer } {
  expect(buf.subarray(0, 8)).toEqual(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]));
  let width = 0, height = 0, colorType = 0;
  const idat: Buffer[] = [];
  for (let at = 8; at < buf.length;) {
    const len = buf.readUInt32BE(at), type = buf.toString('ascii', at + 4, at + 8), data = buf.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      expect([data[8], data[12]]).toEqual([8, 0]);
      colorType = data[9]!;
    } else if (type === 'IDAT') idat.push(data);
    at += 12 + len;
  }
  const channels = { 2: 3, 6: 4 }[colorType as 2 | 6];
  expect(channels).toBeDefined();
  const raw = zlib.inflateSync(Buffer.concat(idat)), stride = width * channels!;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!, line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels! ? line[i - channels!]! : 0, b = prev[i]!, c = i >= channels! ? prev[i - channels!]! : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter]!;
      line[i] = (line[i]! + pred) & 255;
    }
    for (let x = 0; x < width; x++) line.copy(out, (y * width + x) * 4, x * channels!, x * channels! + 3);
    prev = line;
  }
  return { width, height, pixels: out };
}

describe('a report of real runs, rendered by headless Chromium', () => {
  let dir: string, file: string, analysis: AnalyzeReport, sweep: SweepReport;
  const idsFile = (name: string, rows: number[][]) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, rows.map((r) => JSON.stringify({ input_ids: r })).join('\n') + '\n');
    return f;
  };

  beforeAll(async () => {
    chromium();
    dir = tmp();
    const rows = (n: number, offset: number) => Array.from({ length: n }, (_, i) => Array.from({ length: 24 }, (_, j) => 20 + ((offset + (i % 4) * 8 + j) % 32)));
    const data = idsFile('train.jsonl', rows(48, 0)), evalData = idsFile('eval.jsonl', rows(4, 0)), retain = idsFile('retain.jsonl', rows(3, 5).map((r) => r.map((t) => t + 40)));
    const base = { model: LLAMA, data, evalData, retainData: retain, batchSize: 4, seqLen: 24, steps: 8, evalEvery: 4, lr: 1e-2, dropout: 0, progress: 'none' as const };
    const run = await train({ ...base, out: path.join(dir, 'run'), seed: 1 }).done;
    analysis = analyzeRun({ base: LLAMA, adapter: LLAMA, retain });
    sweep = await runSweep(parseSpec({ base: { ...base, steps: 4, evalEvery: 2 }, axes: { r: [4, 8] }, seeds: [1, 2], out: path.join(dir, 'sweep') }, '/'));
    file = writeReport(path.join(dir, 'out', 'report.html'), {
      title: 'tiny-llama <report> & friends',
      runs: [{ name: 'lora r16', metrics: readMetrics(run.metricsFile) }, ...sweepRuns(sweep)],
      analysis,
      sweep,
    });
  });

  test('the file is written atomically and holds everything inline', () => {
    expect(fs.readdirSync(path.dirname(file))).toEqual(['report.html']);
    const html = fs.readFileSync(file, 'utf8');
    expect(html).not.toMatch(/<script|<link|\bsrc=|url\(|@import|https?:\/\/(?!www\.w3\.org\/2000\/svg)/i);
  });

  test('every plot is in the DOM Chromium builds, with its marks', () => {
    const dom = runChromium(['--dump-dom', `file://${file}`]);
    expect(dom).toContain('tiny-llama &lt;report&gt; &amp; friends');
    const found = plots(dom);
    const byName = (n: string) => found.filter((p) => p.name === n);
    const runs = 1 + sweep.configs.length * 2;
    expect(byName('loss')).toHaveLength(runs);
    // Training steps (8, then 4 per sweep run) and the evals on two splits (steps 0, 4, 8 / 0, 2, 4).
    expect(byName('loss').map((p) => p.marks)).toEqual([8 + 3 * 2, ...Array(runs - 1).fill(4 + 3 * 2)]);
    expect(byName('learning-forgetting')[0]!.marks).toBe(runs);
    expect(byName('intruders-by-layer')[0]!.marks).toBe(Object.keys(analysis.intruders.byLayer).length);
    expect(byName('intruder-sweep')[0]!.marks).toBe(analysis.intruders.sweep.length);
    const singular = Object.values(analysis.spectra).flatMap((s) => s.singularValues).filter((v) => v > 0).length;
    expect(byName('spectra')[0]!.marks).toBe(singular);
    expect(byName('sweep')[0]!.marks).toBe(2);
    expect(byName('sweep')[0]!.svg.match(/class="errorbar"/g)).toHaveLength(2);
    expect(byName('sweep-forgetting')[0]!.marks).toBe(2);
    expect(found.map((p) => p.name).filter((n) => n !== 'loss')).toEqual(['learning-forgetting', 'intruders-by-layer', 'intruder-sweep', 'spectra', 'sweep', 'sweep-forgetting']);
  });

  test('lorakit analyze --report writes the report and says where', () => {
    const out = path.join(dir, 'cli', 'analyze.html');
    let printed = '';
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation(((s: string) => ((printed += s), true)) as typeof process.stdout.write);
    try {
      runAnalyze(['analyze', '--base', LLAMA, '--adapter', LLAMA, '--report', out]);
    } finally {
      spy.mockRestore();
    }
    expect(printed).toContain(`report written to ${out}\n`);
    expect(fs.readdirSync(path.dirname(out))).toEqual(['analyze.html']);
    expect(plots(fs.readFileSync(out, 'utf8')).map((p) => p.name)).toEqual(['intruders-by-layer', 'intruder-sweep', 'spectra']);
  });

  test('the screenshot is a full, drawn page', () => {
    const shot = path.join(dir, 'shot.png');
    runChromium([`--screenshot=${shot}`, '--window-size=1200,3000', '--hide-scrollbars', `file://${file}`]);
    const png = decodePng(fs.readFileSync(shot));
    expect([png.width, png.height]).toEqual([1200, 3000]);
    let drawn = 0;
    const colors = new Set<number>();
    for (let i = 0; i < png.pixels.length; i += 4) {
      const [r, g, b] = [png.pixels[i]!, png.pixels[i + 1]!, png.pixels[i + 2]!];
      if (r < 235 || g < 235 || b < 235) drawn++;
      colors.add((r << 16) | (g << 8) | b);
    }
    // Text, axes, lines and bars: a blank or failed page is one colour with nothing drawn.
    expect(drawn / (png.width * png.height)).toBeGreaterThan(0.01);
    expect(colors.size).toBeGreaterThan(50);
  });

  test('the screenshot shows a known mark where its value puts it: a higher loss drawn higher', () => {
    // The report's stylesheet with the page margins taken away, so the plot's view box starts at pixel (0, 0).
    const style = renderReport({ title: 'x' }).match(/<style>([\s\S]*?)<\/style>/)![1]!;
    const svg = linePlot('known', { title: 'known', x: { label: 'step' }, y: { label: 'loss' }, series: [{ name: 'loss', points: [{ x: 0, y: 1.2 }, { x: 5, y: 3.7 }, { x: 10, y: 2 }] }] });
    const page = path.join(dir, 'known.html'), shot = path.join(dir, 'known.png');
    fs.writeFileSync(page, `<!doctype html><html><head><meta charset="utf-8"><style>${style}body{margin:0;padding:0;max-width:none}svg{margin:0}</style></head><body>${svg}</body></html>`);
    runChromium([`--screenshot=${shot}`, '--window-size=800,400', '--hide-scrollbars', `file://${page}`]);
    const png = decodePng(fs.readFileSync(shot));
    const rgb = (x: number, y: number) => [...png.pixels.subarray((y * png.width + x) * 4, (y * png.width + x) * 4 + 3)];
    const blue = (x: number, y: number) => rgb(x, y).every((c, i) => Math.abs(c - [0x1f, 0x77, 0xb4][i]!) <= 4);
    const paper = (x: number, y: number) => rgb(x, y).every((c) => c >= 235);
    // Axes 0..10 and 1..4 on the frame x 70..740, y 310 (bottom) to 34 (top): loss 3.7 at step 5 is at
    // (405, 61.6), near the top; loss 1.2 at step 0 at (70, 291.6), near the bottom left.
    expect([blue(405, 61), blue(404, 62), blue(70, 291), blue(71, 292)]).toEqual([true, true, true, true]);
    // Upside down they would be at (405, 282.4) and (70, 52.4): blank paper there (right of the y axis line).
    expect([paper(405, 282), paper(404, 283), paper(72, 52), paper(71, 53)]).toEqual([true, true, true, true]);
  });
});

describe('the lab part of the report', () => {
  const lab = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures/lab/lab.json'), 'utf8')) as LabReport;
  const tasks = TASKS.filter((t) => lab.tasks[t] !== undefined);
  const arms = lab.tasks.behaviour!.arms.map((a) => a.arm);
  const perTask = ['eval', 'exact', 'forgetting', 'tradeoff', 'intruders'];
  const names = [...tasks.flatMap((t) => perTask.map((k) => `lab-${k}-${t}`)), 'lab-quantization'];

  test('one mark per arm in every plot of every task, and one bar per task for the quantization tax', () => {
    expect(tasks).toEqual(['behaviour', 'knowledge']);
    const found = plots(renderReport({ title: 'lab', lab }));
    expect(found.map((p) => p.name)).toEqual(names);
    for (const p of found) expect([p.name, p.marks]).toEqual([p.name, p.name === 'lab-quantization' ? tasks.length : arms.length]);
    // Every arm has three seeds, so every estimate has its interval drawn.
    for (const p of found.filter((q) => /^lab-(eval|exact|forgetting|intruders)-/.test(q.name))) expect(p.svg.match(/class="errorbar"/g)).toHaveLength(arms.length);
  });

  test('the tables hold every arm\'s mean ± CI, learning from the base the arm started from', () => {
    const html = labSection(lab);
    for (const t of tasks)
      for (const a of lab.tasks[t]!.arms) {
        expect(html).toContain(`<td>${formatNumber(a.evalLoss.mean)} ± ${formatNumber(a.evalLoss.ci95)}</td>`);
        expect(html).toContain(`<td>${formatNumber(a.forgetting.mean)} ± ${formatNumber(a.forgetting.ci95)}</td>`);
        expect(html).toContain(`<td>${formatNumber(a.intruders.mean)} ± ${formatNumber(a.intruders.ci95)}</td>`);
        const start = a.method === 'qlora' ? lab.tasks[t]!.nf4Base.loss : lab.tasks[t]!.base.loss;
        expect(html).toContain(`<td>${formatNumber(start - a.evalLoss.mean)} ± ${formatNumber(a.evalLoss.ci95)}</td>`);
      }
    const tax = lab.tasks.knowledge!.quantizationTax.lossRise;
    expect(html).toContain(`<td>${tax > 0 ? '+' : ''}${formatNumber(tax)}</td>`);
  });

  test('text from lab.json is escaped, and one seed is shown without an interval', () => {
    const evil = '<img src=x onerror="alert(1)">';
    const behaviour = lab.tasks.behaviour!;
    const one = { n: 1, mean: 2, sd: NaN, ci95: NaN };
    const html = labSection({ ...lab, tasks: { behaviour: { ...behaviour, arms: [{ ...behaviour.arms[0]!, arm: evil, what: evil, evalLoss: one }] } } });
    expect(html).not.toMatch(/<img/);
    expect(html).toContain('&lt;img src=x onerror=&quot;alert(1)&quot;&gt;');
    expect(html).toContain('<td>2 (no CI)</td>');
    expect(plots(html).map((p) => p.name)).toEqual([...perTask.map((k) => `lab-${k}-behaviour`), 'lab-quantization']);
    expect(plots(html).find((p) => p.name === 'lab-eval-behaviour')!.svg).not.toMatch(/class="errorbar"/);
  });

  test('Chromium draws every lab plot with its marks', () => {
    const file = writeReport(path.join(tmp(), 'lab.html'), { title: 'lorakit lab --quick', lab });
    const found = plots(runChromium(['--dump-dom', `file://${file}`]));
    expect(found.map((p) => [p.name, p.marks])).toEqual(names.map((n) => [n, n === 'lab-quantization' ? tasks.length : arms.length]));
  });
});
