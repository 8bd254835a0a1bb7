import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { io, nf4, tensor } from '../lib';
import { type Tensor } from '../lib/tensor/tensor';
import { analyzeModel } from '../lib/analysis';
import { meanTokenKL, type AnalyzeReport } from '../lib/analysis/analyze-run';
import { runAnalyze } from '../lib/cli/commands/analyze';
import { loadAdapter } from '../lib/adapters/adapter';
import { loadModel, type CausalLM } from '../lib/models';
import { evaluate } from '../lib/train/evaluate';
import { type Example } from '../lib/data/example';
import { readSafetensors } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-analyze-'));

/** Runs `analyze` in this process; stdout, stderr and the exit code it set (restored afterwards). */
function analyze(...args: string[]): { code: number; out: string; err: string } {
  let out = '', err = '';
  const capture = (sink: (s: string) => void) => ((chunk: string | Uint8Array) => {
    sink(chunk.toString());
    return true;
  }) as typeof process.stdout.write;
  const o = jest.spyOn(process.stdout, 'write').mockImplementation(capture((s) => (out += s)));
  const e = jest.spyOn(process.stderr, 'write').mockImplementation(capture((s) => (err += s)));
  const saved = process.exitCode;
  process.exitCode = 0;
  try {
    runAnalyze(['analyze', ...args]);
    return { code: Number(process.exitCode ?? 0), out, err };
  } finally {
    process.exitCode = saved;
    o.mockRestore();
    e.mockRestore();
  }
}

// The fixture's 48 input ids, split two ways: --data gets two rows, --retain three.
const ids = Array.from(readSafetensors(path.join(LLAMA, 'expected.safetensors')).get('input_ids')!.data as BigInt64Array, Number);
function idsFile(rows: number[][]): string {
  const f = path.join(tmp(), 'ids.jsonl');
  fs.writeFileSync(f, rows.map((r) => JSON.stringify({ input_ids: r })).join('\n') + '\n');
  return f;
}
const DATA = idsFile([ids.slice(0, 24), ids.slice(24)]);
const RETAIN = idsFile([ids.slice(0, 10), ids.slice(10, 30), ids.slice(30)]);
const asExamples = (rows: number[][]): Example[] => rows.map((r) => ({ inputIds: r, labels: r }));

function withAdapter(): CausalLM {
  const model = loadModel(LLAMA);
  loadAdapter(model, LLAMA);
  return model;
}

/** KL(P ‖ Q) per position from two [1, n, vocab] logit arrays, summed (float64, written out long-hand). */
function klSum(a: Float32Array, b: Float32Array, vocab: number): number {
  let total = 0;
  for (let t = 0; t < a.length / vocab; t++) {
    const row = (x: Float32Array) => Array.from(x.subarray(t * vocab, (t + 1) * vocab), Number);
    const la = row(a), lb = row(b);
    const za = la.reduce((s, v) => s + Math.exp(v), 0), zb = lb.reduce((s, v) => s + Math.exp(v), 0);
    for (let i = 0; i < vocab; i++) {
      const p = Math.exp(la[i]!) / za;
      total += p * (Math.log(p) - (lb[i]! - Math.log(zb)));
    }
  }
  return total;
}

describe('lorakit analyze on tiny-llama with its PEFT adapter', () => {
  let report: AnalyzeReport;
  beforeAll(() => {
    const r = analyze('--base', LLAMA, '--adapter', LLAMA, '--data', DATA, '--retain', RETAIN, '--json');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out.trim().split('\n')).toHaveLength(1);
    report = JSON.parse(r.out) as AnalyzeReport;
  });

  test('intruder counts sum to the total and are analyzeModel\'s', () => {
    const counts = Object.values(report.intruders.byMatrix);
    expect(counts).toHaveLength(14);
    expect(report.intruders.total).toBe(counts.reduce((a, b) => a + b, 0));
    expect(report.intruders.total).toBeGreaterThan(0);
    using model = withAdapter();
    const direct = analyzeModel(model, { k: 10, epsilon: 0.5 });
    expect(report.intruders.byMatrix).toEqual(direct.intruders.byMatrix);
    expect(report.intruders.byLayer).toEqual(direct.intruders.byLayer);
    const at = (e: number) => report.intruders.sweep.find((s) => s.epsilon === e)!.total;
    expect(at(0.5)).toBe(report.intruders.total);
    for (let i = 1; i < report.intruders.sweep.length; i++) expect(report.intruders.sweep[i]!.total).toBeGreaterThanOrEqual(report.intruders.sweep[i - 1]!.total);
    // The adapter's updates have its rank, 8: all their energy lies in rank 8.
    for (const s of Object.values(report.spectra)) expect(s.topREnergy).toBeCloseTo(1, 6);
  });

  test('--k and --epsilon reach the intruder count', () => {
    const r = JSON.parse(analyze('--base', LLAMA, '--adapter', LLAMA, '--k', '4', '--epsilon', '0.3', '--json').out) as AnalyzeReport;
    using model = withAdapter();
    expect(r.intruders.byMatrix).toEqual(analyzeModel(model, { k: 4, epsilon: 0.3 }).intruders.byMatrix);
    expect(r.intruders.total).toBeLessThan(report.intruders.total);
  });

  test('the quantization error of each matrix is a direct NF4 round trip\'s', () => {
    using model = loadModel(LLAMA);
    expect(Object.keys(report.quantization.byMatrix).sort()).toEqual([...model.linears.keys()].map((n) => `${n}.weight`).sort());
    let num = 0, den = 0;
    for (const [name, lin] of model.linears) {
      const w = lin.weight as Tensor;
      const x = Float64Array.from(w.toFloat32Array());
      const rel = (doubleQuant: boolean) => {
        using q = nf4.quantize(w, { blockSize: 64, doubleQuant });
        const y = nf4.dequantize(q, { dtype: 'float32' }).toFloat32Array();
        let e = 0, n = 0;
        x.forEach((v, i) => {
          e += (v - y[i]!) ** 2;
          n += v * v;
        });
        if (!doubleQuant) [num, den] = [num + e, den + n];
        return Math.sqrt(e / n);
      };
      const got = report.quantization.byMatrix[`${name}.weight`]!;
      expect(Math.abs(got.relative - rel(false))).toBeLessThan(1e-12);
      expect(Math.abs(got.relativeDoubleQuant - rel(true))).toBeLessThan(1e-12);
      // NF4's 16 levels: a few percent of the weight's norm, never nothing.
      expect(got.relative).toBeGreaterThan(0.01);
      expect(got.relative).toBeLessThan(0.2);
    }
    expect(Math.abs(report.quantization.total.relative - Math.sqrt(num / den))).toBeLessThan(1e-12);
  });

  test('KL of the float base against itself is 0; against the NF4 base it is positive and the test\'s own', () => {
    using a = loadModel(LLAMA);
    using b = loadModel(LLAMA);
    const rows = [ids.slice(0, 24), ids.slice(24)];
    const self = meanTokenKL(a, b, asExamples(rows));
    expect(self.positions).toBe(ids.length);
    expect(Math.abs(self.klMean)).toBeLessThan(1e-9);
    using q = loadModel(LLAMA, { quantize: true });
    let sum = 0;
    for (const r of rows) {
      using t = tensor(BigInt64Array.from(r, BigInt), [1, r.length]);
      using la = a.forward(t, { returnLogits: true }).logits!;
      using lb = q.forward(t, { returnLogits: true }).logits!;
      sum += klSum(la.toFloat32Array(), lb.toFloat32Array(), a.config.vocabSize);
    }
    const d = report.quantization.data!;
    expect(d.positions).toBe(ids.length);
    expect(d.klMean).toBeGreaterThan(1e-6);
    expect(Math.abs(d.klMean - sum / ids.length) / (sum / ids.length)).toBeLessThan(1e-9);
    const examples = asExamples(rows);
    expect(d.floatLoss).toBeCloseTo(evaluate(a, examples).loss, 12);
    expect(d.nf4Loss).toBeCloseTo(evaluate(q, examples).loss, 12);
    expect(d.rise).toBeCloseTo(d.nf4Loss - d.floatLoss, 12);
  });

  test('merge error: float32 below 1e-5 relative, bfloat16 and NF4 larger', () => {
    const m = report.merge!;
    expect(m.probe).toMatch(/first example of ids\.jsonl \(24 tokens\)/);
    expect(m.float32.relative).toBeLessThan(1e-5);
    expect(m.bfloat16.relative).toBeGreaterThan(m.float32.relative);
    expect(m.nf4.relative).toBeGreaterThan(10 * m.float32.relative);
    expect(m.nf4.maxAbs).toBeGreaterThan(m.float32.maxAbs);
    // Without --data the probe is the seeded batch, the same on every run.
    const r1 = JSON.parse(analyze('--base', LLAMA, '--adapter', LLAMA, '--json').out) as AnalyzeReport;
    const r2 = JSON.parse(analyze('--base', LLAMA, '--adapter', LLAMA, '--json').out) as AnalyzeReport;
    expect(r1.merge!.probe).toMatch(/fixed random batch of 2 x 64 tokens/);
    expect(r1.merge).toEqual(r2.merge);
    expect(r1.forgetting).toBeUndefined();
    expect(r1.quantization.data).toBeUndefined();
  });

  test('forgetting is evaluate(tuned) − evaluate(base) on the retain file', () => {
    const examples = asExamples([ids.slice(0, 10), ids.slice(10, 30), ids.slice(30)]);
    using base = loadModel(LLAMA);
    using tuned = withAdapter();
    const b = evaluate(base, examples), t = evaluate(tuned, examples);
    const f = report.forgetting!;
    expect(f.examples).toBe(3);
    expect(f.tokens).toBe(b.tokens);
    expect(f.baseLoss).toBeCloseTo(b.loss, 12);
    expect(f.tunedLoss).toBeCloseTo(t.loss, 12);
    expect(f.rise).toBeCloseTo(t.loss - b.loss, 12);
    expect(f.rise).not.toBe(0);
  });

  test('--tuned on the merged checkpoint finds the intruders --adapter finds', () => {
    const dir = tmp();
    using model = withAdapter();
    model.mergeAdapters();
    const weights = model.exportWeights();
    io.writeSafetensors(path.join(dir, 'model.safetensors'), weights, { format: 'pt' });
    for (const t of Object.values(weights)) t.dispose();
    fs.copyFileSync(path.join(LLAMA, 'config.json'), path.join(dir, 'config.json'));
    const r = analyze('--base', LLAMA, '--tuned', dir, '--retain', RETAIN, '--json');
    expect(r.code).toBe(0);
    const tuned = JSON.parse(r.out) as AnalyzeReport;
    expect(tuned.tuned.kind).toBe('checkpoint');
    expect(tuned.intruders.byMatrix).toEqual(report.intruders.byMatrix);
    expect(tuned.intruders.total).toBe(report.intruders.total);
    expect(tuned.merge).toBeUndefined();
    // ΔW = s·B·A has rank 8, so its top-16 energy is all of it.
    for (const s of Object.values(tuned.spectra)) expect(s.topREnergy).toBeCloseTo(1, 6);
    expect(tuned.forgetting!.rise).toBeCloseTo(report.forgetting!.rise, 5);
  });

  test('without --json: a readable summary', () => {
    const r = analyze('--base', LLAMA, '--adapter', LLAMA, '--data', DATA, '--retain', RETAIN);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(new RegExp(`intruder dimensions \\(top 10 singular vectors, ε 0.5\\): ${report.intruders.total} in 14 matrices`));
    expect(r.out).toMatch(new RegExp(`layer 0: ${report.intruders.byLayer['0']} \\(self_attn\\.q_proj \\d+, self_attn\\.k_proj`));
    expect(r.out).toMatch(/layer 1: /);
    expect(r.out).toMatch(/ε sweep: 0\.1 → \d+, 0\.2 → \d+/);
    expect(r.out).toMatch(/forgetting on ids\.jsonl: loss [\d.]+ → [\d.]+ \([+-][\d.]+\)/);
    expect(r.out).toMatch(/quantization tax \(NF4, block 64\)/);
    expect(r.out).toMatch(/mean KL\(float ‖ NF4\) [\d.e+-]+ nats over 48 positions/);
    expect(r.out).toMatch(/merge error on .*\n {2}float32: .*\n {2}bfloat16: .*\n {2}nf4: /);
  });
});

describe('lorakit analyze argument errors', () => {
  const oneLine = (r: { code: number; err: string }, pattern: RegExp) => {
    expect(r.code).toBe(1);
    expect(r.err).toMatch(pattern);
    expect(r.err.trim().split('\n')).toHaveLength(1);
  };

  test('both or neither of --adapter and --tuned, and missing folders', () => {
    oneLine(analyze('--base', LLAMA, '--adapter', LLAMA, '--tuned', LLAMA), /^lorakit analyze: give exactly one of --adapter and --tuned/);
    oneLine(analyze('--base', LLAMA), /give exactly one of --adapter and --tuned/);
    oneLine(analyze('--base', '/no/such/base', '--adapter', LLAMA), /--base \/no\/such\/base: no such folder/);
    oneLine(analyze('--base', LLAMA, '--adapter', '/no/such/adapter'), /--adapter \/no\/such\/adapter: no such folder/);
    oneLine(analyze('--base', LLAMA, '--tuned', '/no/such/tuned'), /--tuned \/no\/such\/tuned: no such folder/);
    // A folder without the files lorakit needs, and an unchanged "fine-tune".
    oneLine(analyze('--base', LLAMA, '--adapter', tmp()), /adapter_config\.json/);
    oneLine(analyze('--base', LLAMA, '--tuned', LLAMA), /same linear weights as the base/);
    oneLine(analyze('--base', LLAMA, '--adapter', LLAMA, '--epsilon', '2'), /'epsilon' must be <= 1/);
  });

  test('usage errors: exit code 2 and no command run', () => {
    const r = analyze('--adapter', LLAMA);
    expect(r.code).toBe(2);
    expect(r.err).toBe('lorakit: Missing required argument: base\n');
    expect(r.out).toBe('');
  });
});

test('the lorakit binary runs analyze', () => {
  const r = spawnSync(process.execPath, [CLI, 'analyze', '--base', LLAMA, '--adapter', LLAMA, '--json'], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  const report = JSON.parse(r.stdout) as AnalyzeReport;
  expect(report.intruders.total).toBe(Object.values(report.intruders.byMatrix).reduce((a, b) => a + b, 0));
  const bad = spawnSync(process.execPath, [CLI, 'analyze', '--base', LLAMA], { encoding: 'utf8' });
  expect(bad.status).toBe(1);
  expect(bad.stderr).toMatch(/^lorakit analyze: give exactly one of --adapter and --tuned\n$/);
});
