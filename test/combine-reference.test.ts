/**
 * combineAdapters against PEFT's add_weighted_adapter formulas, written out here in float64 from the
 * adapters' own files (read with the test's safetensors reader, scalings from adapter_config.json):
 *   c_i = w_i · scaling_i, scaling_i = lora_alpha / r (lora_alpha / √r with use_rslora)
 *   'cat':    rank Σ r_i; block i of the result gives c_i·B_i·A_i (PEFT puts c_i on A, lorakit on B)
 *   'linear': A = Σ √c_i·A_i, B = Σ √c_i·B_i (equal ranks), so B·A carries the cross terms
 *   'svd':    ΔW = Σ c_i·B_i·A_i truncated to its top `rank` singular triplets, B = U·S, A = Vᵀ
 * The combined adapter has scaling 1 (lora_alpha = r).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel, type CausalLM } from '../lib/models';
import { addAdapter, saveAdapter } from '../lib/adapters/adapter';
import { combineAdapters, deltaError } from '../lib/adapters/combine';
import { eigenSym, matmul64, readSafetensors, relErr } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const Q0 = 'model.layers.0.self_attn.q_proj';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-combine-ref-'));
/** P: every module, r=4, α=8 (scaling 2). Q: q/v, r=4, α=2 (0.5). R: q only, r=2, α=3, rsLoRA (3/√2). */
const P = path.join(root, 'p'), Q = path.join(root, 'q'), R = path.join(root, 'r');

beforeAll(() => {
  const make = (dir: string, options: Parameters<typeof addAdapter>[1]) => {
    using m = loadModel(LLAMA);
    addAdapter(m, { initLoraWeights: false, loraDropout: 0, ...options });
    saveAdapter(m, dir);
  };
  make(P, { r: 4, loraAlpha: 8, seed: 11 });
  make(Q, { r: 4, loraAlpha: 2, targetModules: ['q_proj', 'v_proj'], seed: 12 });
  make(R, { r: 2, loraAlpha: 3, useRslora: true, targetModules: ['q_proj'], seed: 13 });
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

interface Factor { a: Float64Array; b: Float64Array; r: number; out: number; inF: number; scaling: number }

/** One adapter folder as PEFT reads it: per module, A [r, in], B [out, r] and the scaling. */
function readAdapter(dir: string): Map<string, Factor> {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number; use_rslora: boolean };
  const scaling = cfg.use_rslora ? cfg.lora_alpha / Math.sqrt(cfg.r) : cfg.lora_alpha / cfg.r;
  const tensors = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
  const out = new Map<string, Factor>();
  for (const [key, t] of tensors) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(key);
    if (!m) continue;
    const b = tensors.get(`base_model.model.${m[1]}.lora_B.weight`)!;
    out.set(m[1]!, { a: t.data as Float64Array, b: b.data as Float64Array, r: t.shape[0]!, inF: t.shape[1]!, out: b.shape[0]!, scaling });
  }
  return out;
}

/** Σ c_i·B_i·A_i of one module over the adapters that adapt it, float64 [out, in]. */
function exactSum(parts: { f: Factor; c: number }[]): Float64Array {
  const { out, inF } = parts[0]!.f;
  const sum = new Float64Array(out * inF);
  for (const { f, c } of parts) matmul64(f.b, f.out, f.r, false, f.a, f.r, f.inF, false).forEach((x, i) => (sum[i] += c * x));
  return sum;
}

/** The attached adapter of a module as float64 factors, and its s·B·A. */
function attached(m: CausalLM, name: string) {
  const ad = m.linears.get(name)!.adapter!;
  const [r, inF] = ad.loraA.shape as [number, number];
  const out = ad.loraB.shape[0]!;
  const a = Float64Array.from(ad.loraA.toFloat32Array()), b = Float64Array.from(ad.loraB.toFloat32Array());
  const delta = matmul64(b, out, r, false, a, r, inF, false).map((x) => x * ad.scale);
  return { a, b, r, out, inF, scale: ad.scale, delta };
}

/** The terms each module gets: the adapters that adapt it, with c_i = w_i · scaling_i. */
function termsOf(list: { dir: string; weight: number }[]): Map<string, { f: Factor; c: number }[]> {
  const per = new Map<string, { f: Factor; c: number }[]>();
  for (const { dir, weight } of list)
    for (const [name, f] of readAdapter(dir)) per.set(name, [...(per.get(name) ?? []), { f, c: weight * f.scaling }]);
  return per;
}

/** The best rank-k approximation of D [out, in] (Eckart–Young) and D's top k singular values. */
function truncated(d: Float64Array, out: number, inF: number, k: number): { approx: Float64Array; sigma: number[] } {
  // Right singular vectors from DᵀD; D_k = D·V_k·V_kᵀ.
  const { values, vectors } = eigenSym(matmul64(d, out, inF, true, d, out, inF, false), inF);
  const vk = vectors.slice(0, k);
  const approx = new Float64Array(out * inF);
  for (const v of vk) {
    const dv = new Float64Array(out);
    for (let i = 0; i < out; i++) for (let j = 0; j < inF; j++) dv[i] += d[i * inF + j]! * v[j]!;
    for (let i = 0; i < out; i++) for (let j = 0; j < inF; j++) approx[i * inF + j] += dv[i]! * v[j]!;
  }
  return { approx, sigma: values.slice(0, k).map((x) => Math.sqrt(Math.max(x, 0))) };
}

describe("'cat'", () => {
  test('each block is c_i·B_i·A_i in adapter order; the sum is exact; scaling 1', () => {
    const list = [{ dir: P, weight: 0.7 }, { dir: Q, weight: -0.4 }, { dir: R, weight: 1.3 }];
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, list, { method: 'cat' });
    const terms = termsOf(list);
    expect([...terms.keys()].sort()).toEqual([...m.linears.keys()].filter((n) => m.linears.get(n)!.adapter).sort());
    // q: 4 + 4 + 2, v: 4 + 4, the ten other modules 4: the common rank 4 is r, the rest are patterns.
    expect(config.r).toBe(4);
    expect(config.loraAlpha).toBe(4);
    expect(config.useRslora).toBe(false);
    expect(config.rankPattern).toEqual(config.alphaPattern);
    expect(Object.values(config.rankPattern).sort()).toEqual([10, 10, 8, 8].sort());
    for (const [name, parts] of terms) {
      const got = attached(m, name);
      expect(got.scale).toBe(1);
      expect(got.r).toBe(parts.reduce((s, p) => s + p.f.r, 0));
      expect(relErr(got.delta, exactSum(parts))).toBeLessThan(1e-6);
      let off = 0;
      for (const { f, c } of parts) {
        // B[:, off..off+r) · A[off..off+r, :] against c·B_i·A_i.
        const block = new Float64Array(f.out * f.inF);
        for (let i = 0; i < f.out; i++)
          for (let k = 0; k < f.r; k++) {
            const bik = got.b[i * got.r + off + k]!;
            for (let j = 0; j < f.inF; j++) block[i * f.inF + j] += bik * got.a[(off + k) * f.inF + j]!;
          }
        const ref = matmul64(f.b, f.out, f.r, false, f.a, f.r, f.inF, false).map((x) => c * x);
        expect(relErr(block, ref)).toBeLessThan(1e-6);
        off += f.r;
      }
    }
    expect(deltaError(m, list).relative).toBeLessThan(1e-6);
  });
});

describe("'linear'", () => {
  test('A = Σ √c_i·A_i and B = Σ √c_i·B_i element by element; B·A and the delta error with its cross terms', () => {
    const list = [{ dir: P, weight: 0.7 }, { dir: Q, weight: 0.4 }];
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, list, { method: 'linear' });
    expect(config.r).toBe(4);
    expect(config.loraAlpha).toBe(4);
    expect(config.rankPattern).toEqual({});
    const terms = termsOf(list);
    let num = 0, den = 0;
    const perModule: Record<string, number> = {};
    for (const [name, parts] of terms) {
      const got = attached(m, name);
      expect(got.scale).toBe(1);
      const { out, inF, r } = parts[0]!.f;
      const a = new Float64Array(r * inF), b = new Float64Array(out * r);
      for (const { f, c } of parts) {
        f.a.forEach((x, i) => (a[i] += Math.sqrt(c) * x));
        f.b.forEach((x, i) => (b[i] += Math.sqrt(c) * x));
      }
      expect(relErr(got.a, a)).toBeLessThan(1e-6);
      expect(relErr(got.b, b)).toBeLessThan(1e-6);
      const ba = matmul64(b, out, r, false, a, r, inF, false);
      expect(relErr(got.delta, ba)).toBeLessThan(1e-6);
      // deltaError: ‖Σ c_i·B_i·A_i − B·A‖ / ‖Σ c_i·B_i·A_i‖ per module and over all of them.
      const exact = exactSum(parts);
      let n = 0, d = 0;
      exact.forEach((x, i) => {
        n += (x - ba[i]!) ** 2;
        d += x * x;
      });
      perModule[name] = Math.sqrt(n / d);
      num += n;
      den += d;
    }
    const err = deltaError(m, list);
    expect(Object.keys(err.modules).sort()).toEqual(Object.keys(perModule).sort());
    for (const [name, x] of Object.entries(perModule)) expect(Math.abs(err.modules[name]! - x)).toBeLessThan(1e-5 * x + 1e-6);
    // The shared modules (q, v) carry cross terms; the others are exact.
    expect(perModule[Q0]!).toBeGreaterThan(1e-2);
    expect(perModule['model.layers.0.mlp.up_proj']!).toBeLessThan(1e-6);
    expect(err.relative).toBeCloseTo(Math.sqrt(num / den), 5);
  });
});

describe("'svd'", () => {
  const list = [{ dir: P, weight: 0.7 }, { dir: Q, weight: -0.4 }, { dir: R, weight: 1.3 }];

  test('B·A is the best rank-k approximation of Σ c_i·B_i·A_i; B = U·S, A = Vᵀ', () => {
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, list, { method: 'svd', rank: 3 });
    expect(config.r).toBe(3);
    expect(config.loraAlpha).toBe(3);
    const terms = termsOf(list);
    for (const name of [Q0, 'model.layers.1.self_attn.v_proj', 'model.layers.0.mlp.down_proj']) {
      const parts = terms.get(name)!;
      const { out, inF } = parts[0]!.f;
      const exact = exactSum(parts);
      const { approx, sigma } = truncated(exact, out, inF, 3);
      const got = attached(m, name);
      expect(got.scale).toBe(1);
      expect(got.r).toBe(3);
      expect(relErr(got.delta, approx)).toBeLessThan(1e-5);
      // A's rows are orthonormal (Vᵀ) and B's columns carry the singular values (U·S).
      const aat = matmul64(got.a, 3, inF, false, got.a, 3, inF, true);
      const btb = matmul64(got.b, out, 3, true, got.b, out, 3, false);
      for (let i = 0; i < 3; i++)
        for (let j = 0; j < 3; j++) {
          expect(Math.abs(aat[i * 3 + j]! - (i === j ? 1 : 0))).toBeLessThan(1e-5);
          expect(Math.abs(btb[i * 3 + j]! - (i === j ? sigma[i]! ** 2 : 0))).toBeLessThan(1e-5 * sigma[0]! ** 2);
        }
    }
  });

  test('the default rank is the largest adapter rank; the rank is capped at min(out, in)', () => {
    using m = loadModel(LLAMA);
    expect(combineAdapters(m, list, { method: 'svd' }).r).toBe(4);
    const terms = termsOf([{ dir: P, weight: 1 }]);
    combineAdapters(m, [{ dir: P, weight: 1 }], { method: 'svd', rank: 40 });
    // k_proj is [32, 64]: rank 32 at most, so it is a rank-pattern entry; q_proj [64, 64] keeps 40.
    const k = attached(m, 'model.layers.0.self_attn.k_proj');
    expect(k.r).toBe(32);
    expect(attached(m, Q0).r).toBe(40);
    expect(relErr(k.delta, exactSum(terms.get('model.layers.0.self_attn.k_proj')!))).toBeLessThan(1e-5);
  });

  test('a zero update gives zero factors, not NaN', () => {
    using m = loadModel(LLAMA);
    combineAdapters(m, [{ dir: P, weight: 0 }, { dir: Q, weight: 1 }], { method: 'svd', rank: 4 });
    // up_proj is adapted by P only, at weight 0.
    const up = attached(m, 'model.layers.0.mlp.up_proj');
    expect(up.a.every((x) => x === 0)).toBe(true);
    expect(up.b.every((x) => x === 0)).toBe(true);
    // q_proj has Q's rank-4 update: all four triplets live.
    const terms = termsOf([{ dir: Q, weight: 1 }]);
    expect(relErr(attached(m, Q0).delta, exactSum(terms.get(Q0)!))).toBeLessThan(1e-5);
  });
});

describe('the combined config and the delta error', () => {
  test("a tie between ranks makes the larger one r; the others become escaped rank and alpha patterns", () => {
    const list = [{ dir: R, weight: 0.5 }, { dir: Q, weight: 2 }];
    using m = loadModel(LLAMA);
    const config = combineAdapters(m, list, { method: 'cat' });
    // q: 2 + 4 = 6 at two modules, v: 4 at two modules → a tie, broken towards 6.
    expect(config.r).toBe(6);
    expect(config.loraAlpha).toBe(6);
    expect(config.rankPattern).toEqual({ 'model\\.layers\\.0\\.self_attn\\.v_proj': 4, 'model\\.layers\\.1\\.self_attn\\.v_proj': 4 });
    expect(config.alphaPattern).toEqual(config.rankPattern);
    expect([...(config.targetModules as string[])].sort()).toEqual(
      ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj'],
    );
    const terms = termsOf(list);
    for (const [name, parts] of terms) expect(relErr(attached(m, name).delta, exactSum(parts))).toBeLessThan(1e-6);
  });

  test('deltaError of an adapter against a list it was not made from, module by module', () => {
    using m = loadModel(LLAMA);
    combineAdapters(m, [{ dir: Q, weight: 1 }], { method: 'cat' });
    // Against P at weight 1: q/v hold Q's update where P's is expected; the other modules have no
    // attached adapter and P's update is missing entirely (relative error 1).
    const p = termsOf([{ dir: P, weight: 1 }]), q = termsOf([{ dir: Q, weight: 1 }]);
    const err = deltaError(m, [{ dir: P, weight: 1 }]);
    expect(Object.keys(err.modules).sort()).toEqual([...p.keys()].sort());
    let num = 0, den = 0;
    for (const [name, parts] of p) {
      const exact = exactSum(parts);
      const got = q.has(name) ? exactSum(q.get(name)!) : new Float64Array(exact.length);
      let n = 0, d = 0;
      exact.forEach((x, i) => {
        n += (x - got[i]!) ** 2;
        d += x * x;
      });
      expect(err.modules[name]!).toBeCloseTo(Math.sqrt(n / d), 5);
      if (!q.has(name)) expect(err.modules[name]).toBe(1);
      num += n;
      den += d;
    }
    expect(err.relative).toBeCloseTo(Math.sqrt(num / den), 5);
    // Q's own list, on a model holding only Q: zero, and the modules nobody adapts are left out.
    const own = deltaError(m, [{ dir: Q, weight: 1 }]);
    expect(Object.keys(own.modules).sort()).toEqual([...q.keys()].sort());
    expect(own.relative).toBeLessThan(1e-6);
    // A zero combination (weight 0) against itself: 0 / 0 is reported as 0, not NaN.
    combineAdapters(m, [{ dir: Q, weight: 0 }], { method: 'cat' });
    const zero = deltaError(m, [{ dir: Q, weight: 0 }]);
    expect(zero.relative).toBe(0);
    for (const x of Object.values(zero.modules)) expect(x).toBe(0);
  });

  test('svd rank is checked', () => {
    using m = loadModel(LLAMA);
    expect(() => combineAdapters(m, [{ dir: P, weight: 1 }], { method: 'svd', rank: 0 })).toThrow(/combineAdapters: 'rank' must be >= 1, got 0/);
    expect(() => combineAdapters(m, [{ dir: P, weight: 1 }], { method: 'svd', rank: 1.5 })).toThrow(/'rank' must be an integer/);
  });
});
