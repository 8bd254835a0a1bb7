/**
 * Intruder dimensions against matrices built from chosen orthonormal bases, so the answer is known
 * before any SVD runs. lorakit's definition (README, lib/analysis): a top-k left singular vector u_j of
 * the tuned W is an intruder when max_i |cos(u_j, x_i)| < ε over EVERY left singular vector x_i of the
 * base W0 (all min(m, n) of them), as in Shuttleworth et al. 2024. The cases tell apart the variants a
 * slip would produce: only W0's top k, W's own vectors, W0's right singular vectors, all of W's vectors
 * instead of its top k, a signed instead of absolute cosine, and ≤ ε instead of < ε.
 */
import * as path from 'node:path';
import { tensor } from '../lib';
import { analyzeModel, intruderDimensions, layerKey, updateSpectrum } from '../lib/analysis';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { matmul64 } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');

/** A basis given as its columns (each of length m). */
type Columns = number[][];

/** W = Σ_j s_j·u_j·v_jᵀ in float64, rounded to float32, [m, n]. */
function build(u: Columns, s: number[], v: Columns): Float32Array {
  const m = u[0]!.length, n = v[0]!.length;
  const w = new Float64Array(m * n);
  s.forEach((sj, j) => {
    for (let i = 0; i < m; i++) for (let c = 0; c < n; c++) w[i * n + c] += sj * u[j]![i]! * v[j]![c]!;
  });
  return Float32Array.from(w);
}

/** Standard basis vector e_i of length n. */
const e = (n: number, i: number) => Array.from({ length: n }, (_, j) => (j === i ? 1 : 0));
/** a·e_i + b·e_j of length n. */
const mix = (n: number, i: number, a: number, j: number, b: number) => e(n, i).map((x, c) => x * a + (c === j ? b : 0));
const dot = (a: readonly number[], b: readonly number[]) => a.reduce((acc, x, i) => acc + x * b[i]!, 0);

/** The definition written out: for each tuned vector, the largest |cos| with any of the base vectors. */
function referenceSims(base: Columns, tuned: Columns): number[] {
  return tuned.map((t) => Math.max(...base.map((b) => Math.abs(dot(b, t)) / Math.sqrt(dot(b, b) * dot(t, t)))));
}

function run(w0: Float32Array, w: Float32Array, m: number, n: number, options?: { k?: number; epsilon?: number }) {
  return intruderDimensions(tensor(w0, [m, n]), tensor(w, [m, n]), options);
}

describe('a hand-counted 6 x 5 matrix built from chosen bases', () => {
  // W0 = Σ s0_i·e_i·p_iᵀ: its left singular vectors are e_1..e_5 (e_6 is its left null space, not among
  // the min(m, n) = 5 vectors). Its right vectors are a permutation of R^5's basis.
  const [m, n] = [6, 5];
  const base = [0, 1, 2, 3, 4].map((i) => e(m, i));
  const w0 = build(base, [10, 8, 6, 4, 2], [3, 0, 4, 1, 2].map((i) => e(n, i)));
  // W's left vectors, in descending singular value order, with their largest |cos| against e_1..e_5:
  //   0.28·e5 + 0.96·e6 → 0.28 (mostly W0's null space); 0.6·e1 + 0.8·e2 → 0.8; e3 → 1;
  //   -0.8·e1 + 0.6·e2 → 0.8; e4 → 1.
  const tuned = [mix(m, 4, 0.28, 5, 0.96), mix(m, 0, 0.6, 1, 0.8), e(m, 2), mix(m, 0, -0.8, 1, 0.6), e(m, 3)];
  const expected = [0.28, 0.8, 1, 0.8, 1];
  const w = build(tuned, [12, 9, 7, 5, 3], [0, 1, 2, 3, 4].map((i) => e(n, i)));

  test('the written-out reference gives the hand-counted similarities', () => {
    referenceSims(base, tuned).forEach((x, j) => expect(x).toBeCloseTo(expected[j]!, 14));
  });

  test('similarities, counts and k', () => {
    const all = run(w0, w, m, n, { k: 5, epsilon: 0.5 });
    expect(all.similarities).toHaveLength(5);
    all.similarities.forEach((x, j) => expect(Math.abs(x - expected[j]!)).toBeLessThan(1e-6));
    expect(all.count).toBe(1);
    expect(run(w0, w, m, n, { k: 5, epsilon: 0.85 }).count).toBe(3);
    expect(run(w0, w, m, n, { k: 5, epsilon: 0.25 }).count).toBe(0);
    expect(run(w0, w, m, n, { k: 5, epsilon: 1 }).count).toBe(3);
    // Only W's top k vectors are examined.
    const two = run(w0, w, m, n, { k: 2, epsilon: 0.85 });
    expect(two.similarities).toHaveLength(2);
    two.similarities.forEach((x, j) => expect(Math.abs(x - expected[j]!)).toBeLessThan(1e-6));
    expect(two.count).toBe(2);
    expect(run(w0, w, m, n, { k: 1, epsilon: 0.85 }).count).toBe(1);
  });

  test('defaults: epsilon 0.5', () => {
    // k defaults to 10, above min(m, n) = 5 here, so it must be given; epsilon is left to its default.
    const r = run(w0, w, m, n, { k: 4 });
    expect(r.count).toBe(1);
    const loose = run(w0, w, m, n, { k: 4, epsilon: 0.9 });
    expect(loose.count).toBe(3);
  });

  test('the base compared with itself, or a rescaled base, has no intruders', () => {
    const self = run(w0, w0, m, n, { k: 5, epsilon: 0.99 });
    for (const x of self.similarities) expect(Math.abs(x - 1)).toBeLessThan(1e-12);
    expect(self.count).toBe(0);
    const scaled = run(w0, Float32Array.from(w0, (x) => 3 * x), m, n, { k: 5, epsilon: 0.99 });
    expect(scaled.count).toBe(0);
  });
});

describe('which base vectors a tuned vector is compared with', () => {
  test("a tuned direction on a base vector beyond the top k is no intruder (all of W0's vectors count)", () => {
    // W0 = diag(5, 4, 3, 2, 1); W has its strongest direction on e5, W0's weakest.
    const n = 5;
    const w0 = build([0, 1, 2, 3, 4].map((i) => e(n, i)), [5, 4, 3, 2, 1], [0, 1, 2, 3, 4].map((i) => e(n, i)));
    const w = build([4, 1, 2, 3, 0].map((i) => e(n, i)), [10, 4, 3, 2, 1], [0, 1, 2, 3, 4].map((i) => e(n, i)));
    const r = run(w0, w, n, n, { k: 2, epsilon: 0.5 });
    // Exact: both matrices are diagonal up to a permutation, so every cosine is exactly 0 or 1.
    expect(r.similarities).toEqual([1, 1]);
    expect(r.count).toBe(0);
  });

  test("W0's left singular vectors, not its right ones", () => {
    // W0 = I·diag(4, 3, 2, 1)·Hᵀ with H the 4 x 4 Hadamard basis / 2: left vectors e_i, right vectors H's
    // columns. W has left vectors e_i too (other order), so every cosine is 1; against W0's right
    // vectors each would be 0.5.
    const h: Columns = [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]].map((c) => c.map((x) => x / 2));
    const n = 4;
    const w0 = build([0, 1, 2, 3].map((i) => e(n, i)), [4, 3, 2, 1], h);
    const w = build([2, 0, 3, 1].map((i) => e(n, i)), [8, 6, 5, 1], h);
    const r = run(w0, w, n, n, { k: 4, epsilon: 0.6 });
    for (const x of r.similarities) expect(Math.abs(x - 1)).toBeLessThan(1e-12);
    expect(r.count).toBe(0);

    // And the transposed roles: W's left vectors are H's columns, W0's are e_i → every |cos| = 0.5.
    const wh = build(h, [8, 6, 5, 1], [0, 1, 2, 3].map((i) => e(n, i)));
    const rh = run(w0, wh, n, n, { k: 4, epsilon: 0.6 });
    for (const x of rh.similarities) expect(Math.abs(x - 0.5)).toBeLessThan(1e-12);
    expect(rh.count).toBe(4);
    expect(run(w0, wh, n, n, { k: 4, epsilon: 0.4 }).count).toBe(0);
  });

  test("the tuned matrix's vectors are compared with the base's, not with themselves", () => {
    // W = W0 with one direction rotated fully into W0's null space: an intruder with cosine exactly 0.
    const [m, n] = [5, 4];
    const w0 = build([0, 1, 2, 3].map((i) => e(m, i)), [4, 3, 2, 1], [0, 1, 2, 3].map((i) => e(n, i)));
    const w = build([4, 1, 2, 3].map((i) => e(m, i)), [4, 3, 2, 1], [0, 1, 2, 3].map((i) => e(n, i)));
    const r = run(w0, w, m, n, { k: 4, epsilon: 0.5 });
    expect(r.similarities).toEqual([0, 1, 1, 1]);
    expect(r.count).toBe(1);
  });

  test('the absolute cosine: a vector whose closest base vector points the opposite way', () => {
    // W0's left vectors are the columns of an orthonormal 3 x 3 matrix with entries k/7; W's top vector
    // (-0.6, 0, 0.8) has cosines 3.6/7, 0.2/7 and -6/7 with them (up to each column's sign): the
    // largest |cos| 6/7 comes from a negative dot product once signs are normalised.
    const q: Columns = [[2, 3, 6], [3, -6, 2], [6, 2, -3]].map((c) => c.map((x) => x / 7));
    const n = 3;
    const w0 = build(q, [3, 2, 1], [0, 1, 2].map((i) => e(n, i)));
    const tuned = [[-0.6, 0, 0.8], [0, 1, 0], [0.8, 0, 0.6]];
    const w = build(tuned, [9, 2, 1], [0, 1, 2].map((i) => e(n, i)));
    const ref = referenceSims(q, tuned);
    expect(ref[0]).toBeCloseTo(6 / 7, 14);
    const r = run(w0, w, n, n, { k: 3, epsilon: 0.5 });
    r.similarities.forEach((x, j) => expect(Math.abs(x - ref[j]!)).toBeLessThan(1e-6));
    expect(run(w0, w, n, n, { k: 1, epsilon: 0.86 }).count).toBe(1);
    expect(run(w0, w, n, n, { k: 1, epsilon: 0.85 }).count).toBe(0);
  });
});

describe('exact ties at epsilon: a similarity equal to ε is not an intruder (strictly below counts)', () => {
  test('cosines of exactly 0 and 1', () => {
    const [m, n] = [5, 4];
    const w0 = build([0, 1, 2, 3].map((i) => e(m, i)), [4, 3, 2, 1], [0, 1, 2, 3].map((i) => e(n, i)));
    const w = build([4, 1, 2, 3].map((i) => e(m, i)), [4, 3, 2, 1], [0, 1, 2, 3].map((i) => e(n, i)));
    expect(run(w0, w, m, n, { k: 4, epsilon: 0 }).count).toBe(0);
    expect(run(w0, w, m, n, { k: 4, epsilon: Number.MIN_VALUE }).count).toBe(1);
    expect(run(w0, w, m, n, { k: 4, epsilon: 1 }).count).toBe(1);
    expect(run(w0, w0, m, n, { k: 4, epsilon: 1 }).count).toBe(0);
  });

  test('every similarity used as ε counts only the ones strictly below it', () => {
    const [m, n] = [6, 5];
    const base = [0, 1, 2, 3, 4].map((i) => e(m, i));
    const w0 = build(base, [10, 8, 6, 4, 2], [0, 1, 2, 3, 4].map((i) => e(n, i)));
    const tuned = [mix(m, 4, 0.28, 5, 0.96), mix(m, 0, 0.6, 1, 0.8), mix(m, 2, 0.6, 3, 0.8), mix(m, 0, -0.8, 1, 0.6), mix(m, 2, -0.8, 3, 0.6)];
    const w = build(tuned, [12, 9, 7, 5, 3], [0, 1, 2, 3, 4].map((i) => e(n, i)));
    const sims = run(w0, w, m, n, { k: 5, epsilon: 1 }).similarities;
    for (const eps of sims) {
      const below = sims.filter((x) => x < eps).length;
      expect(run(w0, w, m, n, { k: 5, epsilon: eps }).count).toBe(below);
    }
    // 0.28 is alone below the 0.8s, so at ε = its similarity nothing counts.
    expect(run(w0, w, m, n, { k: 5, epsilon: sims[0]! }).count).toBe(0);
  });
});

describe('updateSpectrum against closed forms', () => {
  test('singular values 3, 2, 1: entropy, effective rank and top-r energy written out', () => {
    const w = build([e(4, 1), e(4, 3), e(4, 0)], [3, 2, 1], [e(3, 2), e(3, 0), e(3, 1)]);
    const sp = updateSpectrum(tensor(w, [4, 3]), 2);
    expect(sp.singularValues.map((x) => Math.round(x * 1e9) / 1e9)).toEqual([3, 2, 1]);
    const p = [3 / 6, 2 / 6, 1 / 6];
    expect(sp.effectiveRank).toBeCloseTo(Math.exp(-p.reduce((h, x) => h + x * Math.log(x), 0)), 10);
    expect(sp.topREnergy).toBeCloseTo((9 + 4) / 14, 12);
    // Default r = min(8, min(m, n)) = 3: all the energy.
    expect(updateSpectrum(tensor(w, [4, 3])).topREnergy).toBeCloseTo(1, 12);
    expect(updateSpectrum(tensor(w, [4, 3]), 1).topREnergy).toBeCloseTo(9 / 14, 12);
  });

  test('a spectrum with a zero singular value: 0·log 0 is taken as 0', () => {
    const w = build([e(3, 0), e(3, 1)], [4, 4], [e(3, 0), e(3, 1)]);
    const sp = updateSpectrum(tensor(w, [3, 3]), 1);
    expect(sp.singularValues).toEqual([4, 4, 0]);
    expect(sp.effectiveRank).toBeCloseTo(2, 12);
    expect(sp.topREnergy).toBeCloseTo(0.5, 12);
  });
});

describe('analyzeModel against the definition applied matrix by matrix', () => {
  test('counts, sweep, layers and spectra; a merged adapter gives the same analysis', () => {
    using model = loadModel(LLAMA);
    const cfg = loadAdapter(model, LLAMA);
    const opts = { k: 6, epsilon: 0.6, epsilons: [0.2, 0.6, 0.95] };
    const res = analyzeModel(model, opts);
    let total = 0;
    const sweep = [0, 0, 0];
    const byLayer: Record<string, number> = {};
    for (const l of [...model.linears.values()].filter((x) => x.adapter)) {
      const [out, inn] = l.weight.shape as [number, number];
      const w0 = (l.weight as ReturnType<typeof tensor>).toFloat32Array();
      const a = l.adapter!;
      const ba = matmul64(a.loraB.toFloat32Array(), out, cfg.r, false, a.loraA.toFloat32Array(), cfg.r, inn, false);
      const w = Float32Array.from(w0, (v, i) => v + a.scale * ba[i]!);
      const direct = intruderDimensions(tensor(w0, [out, inn]), tensor(w, [out, inn]), { k: 6, epsilon: 1 });
      const count = direct.similarities.filter((x) => x < 0.6).length;
      expect(res.intruders.byMatrix[`${l.name}.weight`]).toBe(count);
      total += count;
      byLayer[layerKey(l.name)] = (byLayer[layerKey(l.name)] ?? 0) + count;
      opts.epsilons.forEach((eps, i) => (sweep[i] += direct.similarities.filter((x) => x < eps).length));
      // The spectrum of s·B·A with r = the adapter's rank, against the float64 Gram matrix's trace.
      const sp = res.spectra[`${l.name}.weight`]!;
      let fro = 0;
      for (const x of ba) fro += (a.scale * x) ** 2;
      expect(sp.singularValues.reduce((acc, x) => acc + x * x, 0) / fro).toBeCloseTo(1, 5);
    }
    expect(res.intruders.total).toBe(total);
    expect(res.intruders.byLayer).toEqual(byLayer);
    expect(res.intruders.sweep).toEqual(opts.epsilons.map((eps, i) => ({ epsilon: eps, total: sweep[i] })));
    expect(res.intruders.sweep!.map((x) => x.total)).not.toEqual([total, total, total]);
    expect(analyzeModel(model, { k: 6, epsilon: 0.6 }).intruders.sweep).toBeUndefined();

    model.mergeAdapters();
    const merged = analyzeModel(model, opts);
    expect(merged.intruders.byMatrix).toEqual(res.intruders.byMatrix);
    expect(merged.intruders.sweep).toEqual(res.intruders.sweep);
  });

  test('layer keys', () => {
    expect(layerKey('model.layers.12.self_attn.q_proj')).toBe('12');
    expect(layerKey('transformer.h.3.attn.c_attn')).toBe('3');
    expect(layerKey('lm_head')).toBe('other');
    expect(layerKey('model.layers.x.q')).toBe('other');
  });
});

describe('defaults, caps and argument checks with the numbers they name', () => {
  test('updateSpectrum: r defaults to 8 on a 10 x 10 diagonal (σ = 10..1), and r is the count of values kept', () => {
    const s = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
    const w = build(s.map((_, i) => e(10, i)), s, s.map((_, i) => e(10, 9 - i)));
    const sq = s.map((x) => x * x), total = sq.reduce((a, b) => a + b, 0);
    const top = (r: number) => sq.slice(0, r).reduce((a, b) => a + b, 0) / total;
    expect(updateSpectrum(tensor(w, [10, 10])).topREnergy).toBeCloseTo(top(8), 12);
    expect(updateSpectrum(tensor(w, [10, 10]), 3).topREnergy).toBeCloseTo(top(3), 12);
    const sum = s.reduce((a, b) => a + b, 0);
    expect(updateSpectrum(tensor(w, [10, 10])).effectiveRank).toBeCloseTo(Math.exp(-s.reduce((h, x) => h + (x / sum) * Math.log(x / sum), 0)), 10);
    expect(() => updateSpectrum(tensor(w, [10, 10]), 0)).toThrow(/'r' must be >= 1, got 0/);
    expect(() => updateSpectrum(tensor(w, [10, 10]), 1.5)).toThrow(/'r' must be an integer/);
  });

  test('intruderDimensions: k defaults to 10 and is checked', () => {
    const n = 12;
    const s = Array.from({ length: n }, (_, i) => n - i);
    const w0 = build(s.map((_, i) => e(n, i)), s, s.map((_, i) => e(n, i)));
    // W moves its weakest direction e12 into the lead: with the default k = 10 it is examined, and it
    // is W0's own vector, so nothing is an intruder; the similarities are exactly 1.
    const w = build([11, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => e(n, i)), [20, ...s.slice(0, 11)], s.map((_, i) => e(n, i)));
    const r = run(w0, w, n, n);
    expect(r.similarities).toEqual(new Array(10).fill(1));
    expect(r.count).toBe(0);
    expect(() => run(w0, w, n, n, { k: 0 })).toThrow(/analysis\.intruderDimensions: 'k' must be >= 1, got 0/);
    expect(() => run(w0, w, n, n, { k: 2.5 })).toThrow(/'k' must be an integer/);
    expect(() => run(w0, w, n, n, { k: 13 })).toThrow(/analysis\.intruderDimensions: 'k' must be <= min\(m, n\) = 12 for shape \[12, 12\], got 13/);
    expect(() => run(w0, w, n, n, { epsilon: -0.1 })).toThrow(/'epsilon' must be >= 0/);
    expect(() => run(w0, w, n, n, { epsilon: 1.01 })).toThrow(/'epsilon' must be <= 1/);
    expect(() => intruderDimensions(tensor(w0, [n, n]), tensor(w, [n, n]), 3 as never)).toThrow(/options must be an object/);
  });

  test('svdLeft refuses an empty matrix', () => {
    expect(() => intruderDimensions(tensor(new Float32Array(0), [0, 3]), tensor(new Float32Array(0), [0, 3]), { k: 1 })).toThrow();
    expect(() => updateSpectrum(tensor(new Float32Array(0), [2, 0]))).toThrow(/analysis\.svdLeft: 't' must not be empty, got shape \[2, 0\]/);
  });

  test('analyzeModel: k is capped per matrix, epsilons are checked', () => {
    using model = loadModel(LLAMA);
    expect(() => analyzeModel(model)).toThrow(/analysis\.analyzeModel: the model has no adapter attached/);
    loadAdapter(model, LLAMA);
    expect(() => analyzeModel(model, { epsilons: 0.5 as never })).toThrow(/analysis\.analyzeModel: 'epsilons' must be an array of numbers/);
    expect(() => analyzeModel(model, { epsilons: [0.5, 1.5] })).toThrow(/'epsilons\[1\]' must be <= 1/);
    expect(() => analyzeModel(model, { epsilons: [-1] })).toThrow(/'epsilons\[0\]' must be >= 0/);
    // k = 1000 examines every left vector of each matrix: min(out, in) of them, all compared at ε = 1.
    const res = analyzeModel(model, { k: 1000, epsilon: 1, epsilons: [1] });
    const k = model.linears.get('model.layers.0.self_attn.k_proj')!;
    const [out, inn] = k.weight.shape as [number, number];
    const w0 = (k.weight as ReturnType<typeof tensor>).toFloat32Array();
    const a = k.adapter!;
    const ba = matmul64(a.loraB.toFloat32Array(), out, a.loraA.shape[0]!, false, a.loraA.toFloat32Array(), a.loraA.shape[0]!, inn, false);
    const w = Float32Array.from(w0, (v, i) => v + a.scale * ba[i]!);
    const direct = intruderDimensions(tensor(w0, [out, inn]), tensor(w, [out, inn]), { k: Math.min(out, inn), epsilon: 1 });
    expect(res.intruders.byMatrix['model.layers.0.self_attn.k_proj.weight']).toBe(direct.count);
    expect(direct.similarities).toHaveLength(32);
    expect(res.intruders.sweep![0]!.total).toBe(res.intruders.total);
  });
});
