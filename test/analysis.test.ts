import * as path from 'node:path';
import { LorakitRangeError, LorakitTypeError, tensor } from '../lib';
import { analyzeModel, intruderDimensions, svdLeft, updateSpectrum } from '../lib/analysis';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { matmul64, randomArray, rng } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');

/** Singular values of W [m, n] by one-sided Jacobi (Hestenes) on the rows of W, in float64, descending. */
function jacobiSingularValues(w: ArrayLike<number>, m: number, n: number): number[] {
  const rows = Array.from({ length: m }, (_, i) => Array.from({ length: n }, (_, j) => w[i * n + j]!));
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < m; p++)
      for (let q = p + 1; q < m; q++) {
        const x = rows[p]!, y = rows[q]!;
        let a = 0, b = 0, c = 0;
        for (let j = 0; j < n; j++) {
          a += x[j]! * x[j]!;
          b += y[j]! * y[j]!;
          c += x[j]! * y[j]!;
        }
        if (Math.abs(c) <= 1e-15 * Math.sqrt(a * b)) continue;
        rotated = true;
        const zeta = (b - a) / (2 * c);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const cs = 1 / Math.sqrt(1 + t * t), sn = cs * t;
        for (let j = 0; j < n; j++) {
          const xv = x[j]!, yv = y[j]!;
          x[j] = cs * xv - sn * yv;
          y[j] = sn * xv + cs * yv;
        }
      }
    if (!rotated) break;
  }
  return rows.map((r) => Math.sqrt(r.reduce((s, v) => s + v * v, 0))).sort((a, b) => b - a).slice(0, Math.min(m, n));
}

/** Column j of a row-major [m, k] matrix. */
const column = (u: Float64Array, m: number, k: number, j: number) => Array.from({ length: m }, (_, i) => u[i * k + j]!);
const dot = (a: readonly number[], b: readonly number[]) => a.reduce((s, v, i) => s + v * b[i]!, 0);

/** Checks the defining properties: UᵀU = I, UᵀWWᵀU = S², and each column's sign convention. */
function expectLeftSvd(w: Float32Array, m: number, n: number, u: Float64Array, s: Float64Array, tol: number): void {
  const k = s.length;
  const wtu = matmul64(w, m, n, true, u, m, k, false); // [n, k] = Wᵀ U
  const gram = matmul64(wtu, n, k, true, wtu, n, k, false); // [k, k] = UᵀWWᵀU
  const smax = s[0]! || 1;
  for (let a = 0; a < k; a++) {
    const ca = column(u, m, k, a);
    let big = 0;
    for (const v of ca) if (Math.abs(v) > Math.abs(big)) big = v;
    expect(big).toBeGreaterThan(0);
    if (a > 0) expect(s[a]!).toBeLessThanOrEqual(s[a - 1]!);
    for (let b = 0; b < k; b++) {
      expect(Math.abs(dot(ca, column(u, m, k, b)) - (a === b ? 1 : 0))).toBeLessThan(tol);
      expect(Math.abs(gram[a * k + b]! - (a === b ? s[a]! ** 2 : 0)) / (smax * smax)).toBeLessThan(tol);
    }
  }
}

describe('svdLeft', () => {
  test('closed forms: a diagonal matrix and a rank-one matrix', () => {
    const d = svdLeft(tensor(new Float32Array([3, 0, 0, 0, -2, 0]), [2, 3]));
    expect(Array.from(d.s)).toEqual([3, 2]);
    expect(Array.from(d.u)).toEqual([1, 0, 0, 1]);

    // x yᵀ has one singular value ‖x‖‖y‖ with left vector x/‖x‖ (sign: largest component positive).
    const x = [1, -4, 2, 0.5, 3], y = [2, 1, -1, 0, 1, 3, -2];
    const w = new Float32Array(x.flatMap((xi) => y.map((yj) => xi * yj)));
    for (const [m, n, data, lead] of [[5, 7, w, x], [7, 5, new Float32Array(y.flatMap((yi) => x.map((xj) => yi * xj))), y]] as const) {
      const r = svdLeft(tensor(data, [m, n]));
      const norm = (v: readonly number[]) => Math.sqrt(dot(v, v));
      expect(r.s[0]! / (norm(x) * norm(y))).toBeCloseTo(1, 10);
      for (let j = 1; j < r.s.length; j++) expect(r.s[j]!).toBeLessThan(1e-6 * r.s[0]!);
      const u0 = column(r.u, m, r.s.length, 0);
      const sign = lead[lead.reduce((b, v, i) => (Math.abs(v) > Math.abs(lead[b]!) ? i : b), 0)]! > 0 ? 1 : -1;
      u0.forEach((v, i) => expect(v).toBeCloseTo((sign * lead[i]!) / norm(lead), 10));
      // The vectors of the zero singular values still complete an orthonormal set.
      expectLeftSvd(data, m, n, r.u, r.s, 1e-9);
    }
  });

  test('a zero matrix and a tall rank-2 matrix keep an orthonormal U', () => {
    const z = svdLeft(tensor(new Float32Array(12), [4, 3]));
    expect(Array.from(z.s)).toEqual([0, 0, 0]);
    expectLeftSvd(new Float32Array(12), 4, 3, z.u, z.s, 1e-12);
    const [m, n] = [9, 4];
    const a = randomArray(m * 2, 5), b = randomArray(2 * n, 6);
    const w = Float32Array.from(matmul64(a, m, 2, false, b, 2, n, false));
    const r = svdLeft(tensor(w, [m, n]));
    expect(r.s[2]!).toBeLessThan(1e-6 * r.s[0]!);
    expectLeftSvd(w, m, n, r.u, r.s, 1e-6);
  });

  test.each([[1, 1], [1, 5], [5, 1], [3, 3], [5, 7], [7, 5], [9, 9], [13, 3], [3, 13], [31, 17], [150, 201], [203, 97]])(
    'random %i x %i matches a float64 Jacobi SVD',
    (m, n) => {
      const w = randomArray(m * n, m * 1000 + n);
      const r = svdLeft(tensor(w, [m, n]));
      const ref = jacobiSingularValues(w, m, n);
      expect(r.s.length).toBe(Math.min(m, n));
      r.s.forEach((v, i) => expect(Math.abs(v - ref[i]!) / ref[0]!).toBeLessThan(1e-10));
      expectLeftSvd(w, m, n, r.u, r.s, 1e-9);
      // The top-k call returns exactly the leading columns of the full one.
      const k = Math.min(3, m, n);
      const top = svdLeft(tensor(w, [m, n]), k);
      expect(Array.from(top.s)).toEqual(Array.from(r.s.slice(0, k)));
      for (let j = 0; j < k; j++) expect(column(top.u, m, k, j)).toEqual(column(r.u, m, r.s.length, j));
    },
  );

  test('is deterministic and reads bfloat16 input as its float32 value', () => {
    const w = tensor(randomArray(130 * 170, 9), [130, 170]);
    const a = svdLeft(w), b = svdLeft(w);
    expect(Buffer.from(a.u.buffer).equals(Buffer.from(b.u.buffer))).toBe(true);
    using h = w.to('bfloat16');
    using back = h.to('float32');
    expect(Array.from(svdLeft(h, 4).s)).toEqual(Array.from(svdLeft(back, 4).s));
  });

  test('argument checks', () => {
    const w = tensor(randomArray(12, 1), [3, 4]);
    expect(() => svdLeft(w, 4)).toThrow(LorakitRangeError);
    expect(() => svdLeft(w, 0)).toThrow(/'k' must be >= 1/);
    expect(() => svdLeft(tensor(randomArray(4, 1), [4]))).toThrow(/must be 2-D/);
    expect(() => svdLeft([1, 2] as unknown as ReturnType<typeof tensor>)).toThrow(LorakitTypeError);
  });
});

describe('intruder dimensions', () => {
  const [m, n] = [40, 60];
  const w0 = randomArray(m * n, 21);
  const base = svdLeft(tensor(w0, [m, n]));

  test('a rank-1 update along W0\'s weak directions is one intruder', () => {
    // x: the normalised sum of W0's singular vectors 10..39, so |cos| with each is 1/sqrt(30) ≈ 0.18.
    const x = new Float64Array(m);
    for (let j = 10; j < m; j++) for (let i = 0; i < m; i++) x[i] += base.u[i * m + j]! / Math.sqrt(m - 10);
    const r = rng(4);
    const y = Array.from({ length: n }, () => r() * 2 - 1);
    const ny = Math.sqrt(dot(y, y));
    const sigma = 2 * base.s[0]!;
    const w = Float32Array.from(w0, (v, idx) => v + (sigma * x[Math.floor(idx / n)]! * y[idx % n]!) / ny);
    const res = intruderDimensions(tensor(w0, [m, n]), tensor(w, [m, n]), { k: 10 });
    expect(res.count).toBe(1);
    expect(res.similarities).toHaveLength(10);
    expect(res.similarities[0]!).toBeLessThan(0.3);
    for (const s of res.similarities.slice(1)) expect(s).toBeGreaterThan(0.5);
  });

  test('a small rescaling of W0 has none', () => {
    const res = intruderDimensions(tensor(w0, [m, n]), tensor(Float32Array.from(w0, (v) => 1.01 * v), [m, n]));
    expect(res.count).toBe(0);
    for (const s of res.similarities) expect(s).toBeGreaterThan(0.999);
  });

  test('argument checks', () => {
    const a = tensor(w0, [m, n]);
    expect(() => intruderDimensions(a, tensor(randomArray(n * m, 1), [n, m]))).toThrow(/shape/);
    expect(() => intruderDimensions(a, a, { k: 41 })).toThrow(/<= min\(m, n\) = 40/);
    expect(() => intruderDimensions(a, a, { epsilon: 2 })).toThrow(/'epsilon' must be <= 1/);
  });
});

describe('updateSpectrum', () => {
  test('closed forms: flat, rank-one and zero updates', () => {
    const eye = updateSpectrum(tensor(new Float32Array([2, 0, 0, 0, 2, 0, 0, 0, 2]), [3, 3]), 1);
    expect(eye.singularValues).toEqual([2, 2, 2]);
    expect(eye.effectiveRank).toBeCloseTo(3, 12);
    expect(eye.topREnergy).toBeCloseTo(1 / 3, 12);
    const one = updateSpectrum(tensor(new Float32Array([1, 2, 2, 4, 3, 6]), [3, 2]));
    expect(one.effectiveRank).toBeCloseTo(1, 6);
    expect(one.topREnergy).toBeCloseTo(1, 12);
    const zero = updateSpectrum(tensor(new Float32Array(6), [2, 3]));
    expect(zero).toEqual({ singularValues: [0, 0], effectiveRank: 0, topREnergy: 0 });
  });

  test('matches the Roy–Vetterli formula on a random matrix', () => {
    const w = randomArray(11 * 7, 3);
    const sv = jacobiSingularValues(w, 11, 7);
    const total = sv.reduce((a, b) => a + b, 0);
    const erank = Math.exp(-sv.reduce((h, x) => h + (x / total) * Math.log(x / total), 0));
    const energy = (sv[0]! ** 2 + sv[1]! ** 2) / sv.reduce((a, b) => a + b * b, 0);
    const res = updateSpectrum(tensor(w, [11, 7]), 2);
    expect(res.effectiveRank).toBeCloseTo(erank, 10);
    expect(res.topREnergy).toBeCloseTo(energy, 10);
  });
});

describe('analyzeModel on tiny-llama with its PEFT adapter', () => {
  test('counts every adapted matrix with consistent totals', () => {
    using model = loadModel(LLAMA);
    expect(() => analyzeModel(model)).toThrow(/no adapter/);
    const cfg = loadAdapter(model, LLAMA);
    const res = analyzeModel(model, { k: 10, epsilon: 0.5, epsilons: [0.1, 0.5, 0.9] });
    const adapted = [...model.linears.values()].filter((l) => l.adapter);
    expect(adapted).toHaveLength(14);
    expect(Object.keys(res.intruders.byMatrix).sort()).toEqual(adapted.map((l) => `${l.name}.weight`).sort());
    const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
    expect(sum(res.intruders.byMatrix)).toBe(res.intruders.total);
    expect(sum(res.intruders.byLayer)).toBe(res.intruders.total);
    expect(Object.keys(res.intruders.byLayer).sort()).toEqual(['0', '1']);
    for (const c of Object.values(res.intruders.byMatrix)) expect(c >= 0 && c <= 10).toBe(true);
    const sweep = res.intruders.sweep!;
    expect(sweep.map((e) => e.epsilon)).toEqual([0.1, 0.5, 0.9]);
    expect(sweep[1]!.total).toBe(res.intruders.total);
    expect(sweep[0]!.total).toBeLessThanOrEqual(sweep[1]!.total);
    expect(sweep[1]!.total).toBeLessThanOrEqual(sweep[2]!.total);

    // One matrix recomputed by hand: W = W0 + s·B·A in float64, rounded to float32.
    const q = model.linears.get('model.layers.1.self_attn.q_proj')!;
    const [out, inn] = q.weight.shape as [number, number];
    const w0 = (q.weight as ReturnType<typeof tensor>).toFloat32Array();
    const ba = matmul64(q.adapter!.loraB.toFloat32Array(), out, cfg.r, false, q.adapter!.loraA.toFloat32Array(), cfg.r, inn, false);
    const w = Float32Array.from(w0, (v, i) => v + q.adapter!.scale * ba[i]!);
    const direct = intruderDimensions(tensor(w0, [out, inn]), tensor(w, [out, inn]));
    expect(direct.count).toBe(res.intruders.byMatrix['model.layers.1.self_attn.q_proj.weight']);

    for (const l of adapted) {
      const sp = res.spectra[`${l.name}.weight`]!;
      expect(sp.singularValues).toHaveLength(Math.min(...l.weight.shape));
      // s·B·A has rank r = 8: everything lies in the top r.
      expect(sp.topREnergy).toBeCloseTo(1, 8);
      for (const v of sp.singularValues.slice(cfg.r)) expect(v).toBeLessThan(1e-5 * sp.singularValues[0]!);
      expect(sp.effectiveRank).toBeGreaterThanOrEqual(1);
      expect(sp.effectiveRank).toBeLessThanOrEqual(cfg.r + 0.01);
    }
  });
});
