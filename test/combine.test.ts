import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { tensor } from '../lib';
import { loadModel, type CausalLM } from '../lib/models';
import { addAdapter, loadAdapter, saveAdapter } from '../lib/adapters/adapter';
import { combineAdapters, deltaError } from '../lib/adapters/combine';
import { interference } from '../lib/analysis/interference';
import { matmul } from '../lib/ops/matmul';
import { addInPlace } from '../lib/ops/nn';
import { type Tensor } from '../lib/tensor/tensor';
import { type Example } from '../lib/data/example';
import { evaluate } from '../lib/train/evaluate';
import { jacobiEigenvalues, matmul64, relErr } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const GPT2 = path.join(__dirname, 'fixtures/peft/tiny-gpt2');
const ASSETS = path.join(__dirname, '../assets/default');
const Q0 = 'model.layers.0.self_attn.q_proj';
const ids = () => tensor(new BigInt64Array(Array.from({ length: 2 * 12 }, (_, i) => BigInt((i * 37 + 5) % 512))), [2, 12]);
const logits = (m: CausalLM) => m.forward(ids(), { returnLogits: true }).logits!.toFloat32Array();
const examples: Example[] = [0, 1, 2].map((k) => {
  const inputIds = Array.from({ length: 10 }, (_, i) => (i * 53 + k * 101 + 7) % 512);
  return { inputIds, labels: inputIds };
});

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-combine-'));
/** d1: every module, r=4, scale 2. d2: q/v/up only, r=4, scale 1. d3: q only, r=2. */
const d1 = path.join(root, 'a1'), d2 = path.join(root, 'a2'), d3 = path.join(root, 'a3');

function makeAdapter(dir: string, options: Parameters<typeof addAdapter>[1]): void {
  using m = loadModel(LLAMA);
  addAdapter(m, { initLoraWeights: false, loraDropout: 0, ...options });
  saveAdapter(m, dir);
}

beforeAll(() => {
  makeAdapter(d1, { r: 4, loraAlpha: 8, seed: 1 });
  makeAdapter(d2, { r: 4, loraAlpha: 4, targetModules: ['q_proj', 'v_proj', 'up_proj'], seed: 2 });
  makeAdapter(d3, { r: 2, loraAlpha: 2, targetModules: ['q_proj'], seed: 3 });
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** The base model with each adapter's w·s·B·A added into its float32 weights, one adapter at a time. */
function mergedExactly(adapters: { dir: string; weight: number }[]): CausalLM {
  const m = loadModel(LLAMA);
  for (const { dir, weight } of adapters) {
    loadAdapter(m, dir);
    for (const l of m.linears.values()) {
      if (!l.adapter) continue;
      using d = matmul(l.adapter.loraB, l.adapter.loraA, { alpha: weight * l.adapter.scale });
      addInPlace(l.weight as Tensor, d);
      l.detach();
    }
  }
  return m;
}

/** The dense update s·B·A of one module's attached adapter. */
function moduleDelta(m: CausalLM, name: string): Float32Array {
  const a = m.linears.get(name)!.adapter!;
  using d = matmul(a.loraB, a.loraA, { alpha: a.scale });
  return d.toFloat32Array();
}

describe("'cat'", () => {
  test('logits equal the base with both weighted deltas merged exactly; the delta error is ~0', () => {
    const adapters = [{ dir: d1, weight: 0.7 }, { dir: d2, weight: 0.4 }];
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, adapters, { method: 'cat' });
    // q/v/up have both adapters (rank 4 + 4), the other eight modules only d1's rank 4.
    expect(config.r).toBe(4);
    expect(config.loraAlpha).toBe(4);
    expect(Object.values(config.rankPattern)).toEqual(new Array(6).fill(8));
    const q = m.linears.get(Q0)!.adapter!;
    expect(q.loraA.shape).toEqual([8, 64]);
    expect(q.scale).toBe(1);
    expect(m.linears.get('model.layers.0.self_attn.k_proj')!.adapter!.loraA.shape).toEqual([4, 64]);
    using exact = mergedExactly(adapters);
    const got = logits(m);
    expect(relErr(got, logits(exact))).toBeLessThan(1e-5);
    expect(deltaError(m, adapters).relative).toBeLessThan(1e-6);

    // The saved combination (with its rank/alpha patterns) loads back to the same model.
    const saved = path.join(root, 'cat');
    saveAdapter(m, saved);
    using back = loadModel(LLAMA);
    loadAdapter(back, saved);
    expect(back.linears.get(Q0)!.adapter!.scale).toBe(1);
    expect(Array.from(logits(back))).toEqual(Array.from(got));
  });
});

describe("'linear'", () => {
  test('is inexact when two adapters share a module (the cross terms)', () => {
    const adapters = [{ dir: d1, weight: 0.7 }, { dir: d2, weight: 0.4 }];
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, adapters, { method: 'linear' });
    expect(config.r).toBe(4);
    expect(config.rankPattern).toEqual({});
    const err = deltaError(m, adapters);
    expect(err.relative).toBeGreaterThan(1e-2);
    // A module only d1 adapts has no cross term: √c·B · √c·A = c·B·A.
    expect(err.modules['model.layers.0.self_attn.k_proj']).toBeLessThan(1e-6);
    expect(err.modules[Q0]).toBeGreaterThan(1e-2);
  });

  test('needs equal ranks and non-negative weights', () => {
    using m = loadModel(LLAMA);
    expect(() => combineAdapters(m, [{ dir: d1, weight: 1 }, { dir: d3, weight: 1 }], { method: 'linear' })).toThrow(
      /'linear' needs equal ranks.*'model\.layers\.0\.self_attn\.q_proj'.*adapter 1 .* r=4 .*adapter 2 .* r=2/,
    );
    expect(() => combineAdapters(m, [{ dir: d1, weight: -1 }], { method: 'linear' })).toThrow(/adapter 1 .*negative/);
    expect(m.linears.get(Q0)!.adapter).toBeUndefined();
  });
});

describe("'svd'", () => {
  const adapters = [{ dir: d1, weight: 0.7 }, { dir: d2, weight: -0.4 }];

  test('rank = Σ r_i reproduces the exact sum', () => {
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, adapters, { method: 'svd', rank: 8 });
    expect(config.r).toBe(8);
    expect(m.linears.get(Q0)!.adapter!.loraA.shape).toEqual([8, 64]);
    expect(deltaError(m, adapters).relative).toBeLessThan(1e-6);
  });

  test('a smaller rank loses exactly the tail energy of the singular values', () => {
    using m = loadModel(LLAMA);
    // The default rank is the largest adapter rank, 4.
    expect(combineAdapters(m, adapters, { method: 'svd' }).r).toBe(4);
    combineAdapters(m, adapters, { method: 'svd', rank: 3 });
    expect(m.linears.get(Q0)!.adapter!.loraB.shape).toEqual([64, 3]);
    const err = deltaError(m, adapters).modules[Q0]!;

    // ΔW of q_proj in float64 from the adapters' own tensors, and its singular values via ΔWᵀΔW.
    const delta = new Float64Array(64 * 64);
    for (const { dir, weight } of adapters) {
      using one = loadModel(LLAMA);
      loadAdapter(one, dir);
      const a = one.linears.get(Q0)!.adapter!;
      const ba = matmul64(a.loraB.toFloat32Array(), 64, 4, false, a.loraA.toFloat32Array(), 4, 64, false);
      ba.forEach((x, i) => (delta[i] = delta[i]! + weight * a.scale * x));
    }
    const sq = jacobiEigenvalues(matmul64(delta, 64, 64, true, delta, 64, 64, false), 64).sort((x, y) => y - x).map((x) => Math.max(x, 0));
    const total = sq.reduce((x, y) => x + y, 0);
    const tail = sq.slice(3).reduce((x, y) => x + y, 0);
    expect(tail / total).toBeGreaterThan(1e-3);
    expect(Math.abs(err - Math.sqrt(tail / total))).toBeLessThan(1e-5 * Math.sqrt(tail / total) + 1e-6);
  });
});

describe('weights', () => {
  test.each(['cat', 'linear', 'svd'] as const)("%s: weight 0 for one adapter gives the other alone", (method) => {
    using alone = loadModel(LLAMA);
    loadAdapter(alone, d2);
    using m = loadModel(LLAMA);
    combineAdapters(m, [{ dir: d1, weight: 0 }, { dir: d2, weight: 1 }], { method });
    expect(relErr(logits(m), logits(alone))).toBeLessThan(1e-5);
  });

  test('contributions scale linearly with the weight', () => {
    using m = loadModel(LLAMA);
    combineAdapters(m, [{ dir: d1, weight: 1 }, { dir: d2, weight: 1 }], { method: 'cat' });
    const one = moduleDelta(m, Q0);
    combineAdapters(m, [{ dir: d1, weight: 2.5 }, { dir: d2, weight: 2.5 }], { method: 'cat' });
    const scaled = moduleDelta(m, Q0);
    expect(relErr(scaled, one.map((x) => 2.5 * x))).toBeLessThan(1e-6);
    combineAdapters(m, [{ dir: d1, weight: -1 }, { dir: d2, weight: 0 }], { method: 'svd' });
    using alone = loadModel(LLAMA);
    loadAdapter(alone, d1);
    expect(relErr(moduleDelta(m, Q0), moduleDelta(alone, Q0).map((x) => -x))).toBeLessThan(1e-5);
  });
});

describe('interference', () => {
  test('one adapter at weight 1 by cat interferes with nothing', () => {
    const [r] = interference(LLAMA, [{ dir: d1, weight: 1, evalData: examples }], { methods: ['cat'] });
    expect(r!.method).toBe('cat');
    expect(r!.deltaError).toBeLessThan(1e-6);
    expect(Math.abs(r!.adapters[0]!.rise)).toBeLessThan(1e-9);
  });

  test('two adapters: own losses alone and combined, per method', () => {
    using m = loadModel(LLAMA);
    const report = interference(m, [{ dir: d1, weight: 1, evalData: examples }, { dir: d2, weight: 1, evalData: examples.slice(1) }], { rank: 8 });
    expect(report.map((r) => r.method)).toEqual(['cat', 'linear', 'svd']);
    using alone = loadModel(LLAMA);
    loadAdapter(alone, d2);
    const own2 = evaluate(alone, examples.slice(1)).loss;
    for (const r of report) {
      expect(r.adapters.map((a) => a.dir)).toEqual([d1, d2]);
      expect(r.adapters[1]!.alone).toBeCloseTo(own2, 6);
      for (const a of r.adapters) expect(a.rise).toBeCloseTo(a.combined - a.alone, 12);
      // Both adapters are active, so each one's loss moves.
      expect(Math.abs(r.adapters[0]!.rise)).toBeGreaterThan(1e-4);
    }
    const byMethod = Object.fromEntries(report.map((r) => [r.method, r]));
    expect(byMethod.cat!.deltaError).toBeLessThan(1e-6);
    expect(byMethod.svd!.deltaError).toBeLessThan(1e-6);
    expect(byMethod.linear!.deltaError).toBeGreaterThan(1e-2);
    expect(byMethod.svd!.adapters[0]!.combined).toBeCloseTo(byMethod.cat!.adapters[0]!.combined, 4);
    // A model passed in is left without adapters.
    expect([...m.linears.values()].some((l) => l.adapter)).toBe(false);
  });

  test("a model folder's tokenizer reads a .jsonl eval file", () => {
    const dir = path.join(root, 'default');
    {
      using m = loadModel(ASSETS);
      addAdapter(m, { r: 2, loraAlpha: 4, initLoraWeights: false, targetModules: ['q_proj'], seed: 5 });
      saveAdapter(m, dir);
    }
    const [r] = interference(ASSETS, [{ dir, weight: 1, evalData: path.join(ASSETS, 'eval.jsonl') }], { methods: ['cat'] });
    expect(Number.isFinite(r!.adapters[0]!.alone)).toBe(true);
    expect(Math.abs(r!.adapters[0]!.rise)).toBeLessThan(1e-9);
  });
});

describe('errors', () => {
  test('a missing folder, another architecture, a wrong shape; the model is left as it was', () => {
    using m = loadModel(LLAMA);
    loadAdapter(m, d2);
    const before = logits(m);
    expect(() => combineAdapters(m, [{ dir: d1, weight: 1 }, { dir: path.join(root, 'nope'), weight: 1 }], { method: 'cat' })).toThrow(/adapter 2 \('.*nope'\): no such folder/);
    expect(() => combineAdapters(m, [{ dir: d1, weight: 1 }, { dir: GPT2, weight: 1 }], { method: 'svd' })).toThrow(
      /adapter 2 \('.*tiny-gpt2'\): module 'transformer\.h\.0\.[\w.]+' does not exist in this llama model/,
    );
    const bad = path.join(root, 'bad');
    fs.mkdirSync(bad);
    fs.copyFileSync(path.join(d1, 'adapter_model.safetensors'), path.join(bad, 'adapter_model.safetensors'));
    const cfg = JSON.parse(fs.readFileSync(path.join(d1, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(bad, 'adapter_config.json'), JSON.stringify({ ...cfg, r: 8 }));
    expect(() => combineAdapters(m, [{ dir: bad, weight: 1 }], { method: 'cat' })).toThrow(/adapter 1 .*module 'model\.layers\.0\.[\w.]+': .* has shape \[4, \d+\], the model's module with r=8 needs \[8, \d+\]/);
    expect(Array.from(logits(m))).toEqual(Array.from(before));
  });

  test('bad options', () => {
    using m = loadModel(LLAMA);
    expect(() => combineAdapters(m, [], { method: 'cat' })).toThrow(/non-empty array/);
    expect(() => combineAdapters(m, [{ dir: d1, weight: NaN }], { method: 'cat' })).toThrow(/weight' must be a finite number/);
    expect(() => combineAdapters(m, [{ dir: d1, weight: 1 }], { method: 'ties' as 'cat' })).toThrow(/'method' must be one of/);
    expect(() => combineAdapters(m, [{ dir: d1, weight: 1 }], { method: 'cat', rank: 2 })).toThrow(/'rank' applies to 'svd' only/);
    loadAdapter(m, d1);
    m.mergeAdapters();
    expect(() => combineAdapters(m, [{ dir: d2, weight: 1 }], { method: 'cat' })).toThrow(/merged into its base weight/);
  });
});
