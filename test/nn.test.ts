import { LorakitRangeError, LorakitTypeError, ops, tensor, zeros } from '../lib';
import { normRelErr, randomArray, relErr } from './helpers/reference';

const f64 = (a: ArrayLike<number>) => Float64Array.from(a);

describe('LayerNorm and RMSNorm against float64', () => {
  const rows = 37, dim = 50;
  const x = randomArray(rows * dim, 1, 3), w = randomArray(dim, 2), b = randomArray(dim, 3), dy = randomArray(rows * dim, 4);

  function ref(centered: boolean, eps: number) {
    const y = new Float64Array(rows * dim), dx = new Float64Array(rows * dim), dw = new Float64Array(dim), db = new Float64Array(dim);
    for (let r = 0; r < rows; r++) {
      const xs = Array.from(x.subarray(r * dim, (r + 1) * dim));
      const mean = centered ? xs.reduce((s, v) => s + v, 0) / dim : 0;
      const variance = xs.reduce((s, v) => s + (v - mean) ** 2, 0) / dim;
      const rstd = 1 / Math.sqrt(variance + eps);
      const xhat = xs.map((v) => (v - mean) * rstd);
      const g = xhat.map((_, i) => dy[r * dim + i]! * w[i]!);
      const mg = centered ? g.reduce((s, v) => s + v, 0) / dim : 0;
      const mgx = g.reduce((s, v, i) => s + v * xhat[i]!, 0) / dim;
      for (let i = 0; i < dim; i++) {
        y[r * dim + i] = xhat[i]! * w[i]! + (centered ? b[i]! : 0);
        dx[r * dim + i] = rstd * (g[i]! - mg - xhat[i]! * mgx);
        dw[i] += dy[r * dim + i]! * xhat[i]!;
        db[i] += dy[r * dim + i]!;
      }
    }
    return { y, dx, dw, db };
  }

  test('layerNorm forward, dx, and weight/bias gradients added into existing tensors', () => {
    const r = ref(true, 1e-5);
    const X = tensor(x, [rows, dim]), W = tensor(w, [dim]), B = tensor(b, [dim]);
    const { y, saved } = ops.layerNorm(X, W, B, 1e-5);
    expect(relErr(y.toFloat32Array(), r.y)).toBeLessThan(1e-6);
    const gw = tensor(new Float32Array(dim).fill(1), [dim]), gb = zeros([dim]);
    const dx = ops.layerNormBackward(tensor(dy, [rows, dim]), X, W, saved, { weight: gw, bias: gb });
    expect(normRelErr(dx.toFloat32Array(), r.dx)).toBeLessThan(1e-5);
    expect(normRelErr(gw.toFloat32Array(), r.dw.map((v) => v + 1))).toBeLessThan(1e-6);
    expect(normRelErr(gb.toFloat32Array(), r.db)).toBeLessThan(1e-6);
  });

  test('rmsNorm forward, dx and weight gradient', () => {
    const r = ref(false, 1e-6);
    const X = tensor(x, [rows, dim]), W = tensor(w, [dim]);
    const { y, saved } = ops.rmsNorm(X, W, 1e-6);
    expect(relErr(y.toFloat32Array(), r.y)).toBeLessThan(1e-6);
    const gw = zeros([dim]);
    const dx = ops.rmsNormBackward(tensor(dy, [rows, dim]), X, W, saved, { weight: gw });
    expect(normRelErr(dx.toFloat32Array(), r.dx)).toBeLessThan(1e-5);
    expect(normRelErr(gw.toFloat32Array(), r.dw)).toBeLessThan(1e-6);
  });
});

describe('RoPE', () => {
  test('rotates each pair by pos * theta^(-2i/d), and inverse undoes it', () => {
    const [B, T, H, D] = [2, 5, 3, 8];
    const x = randomArray(B * T * H * D, 5);
    const X = tensor(x, [B, T, H * D]);
    ops.ropeInPlace(X, { heads: H, theta: 10000 });
    const got = X.toFloat32Array();
    const ref = new Float64Array(x.length);
    for (let b = 0; b < B; b++)
      for (let t = 0; t < T; t++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < D / 2; i++) {
            const a = t * 10000 ** (-(2 * i) / D);
            const o = ((b * T + t) * H + h) * D;
            ref[o + i] = x[o + i]! * Math.cos(a) - x[o + i + D / 2]! * Math.sin(a);
            ref[o + i + D / 2] = x[o + i + D / 2]! * Math.cos(a) + x[o + i]! * Math.sin(a);
          }
    expect(relErr(got, ref)).toBeLessThan(2e-6);
    ops.ropeInPlace(X, { heads: H, theta: 10000, inverse: true });
    expect(relErr(X.toFloat32Array(), x)).toBeLessThan(2e-6);
  });

  test('explicit positions', () => {
    const X = tensor(randomArray(1 * 2 * 4, 6), [1, 2, 4]);
    const Y = X.clone();
    ops.ropeInPlace(X, { heads: 1, theta: 100, positions: tensor([[3n, 7n]]) });
    const x = Y.toFloat32Array();
    const a0 = 3 * 100 ** 0, a1 = 3 * 100 ** -0.5;
    expect(X.toFloat32Array()[0]).toBeCloseTo(x[0]! * Math.cos(a0) - x[2]! * Math.sin(a0), 5);
    expect(X.toFloat32Array()[1]).toBeCloseTo(x[1]! * Math.cos(a1) - x[3]! * Math.sin(a1), 5);
  });
});

describe('causal grouped-query attention against float64', () => {
  function ref(q: Float32Array, k: Float32Array, v: Float32Array, dout: Float32Array, B: number, T: number, H: number, Hk: number, D: number) {
    const out = new Float64Array(q.length), dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
    const s = 1 / Math.sqrt(D), g = H / Hk;
    const qi = (b: number, t: number, h: number) => ((b * T + t) * H + h) * D;
    const ki = (b: number, t: number, h: number) => ((b * T + t) * Hk + h) * D;
    for (let b = 0; b < B; b++)
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / g);
        for (let t = 0; t < T; t++) {
          const sc: number[] = [];
          for (let j = 0; j <= t; j++) {
            let d = 0;
            for (let i = 0; i < D; i++) d += q[qi(b, t, h) + i]! * k[ki(b, j, kh) + i]!;
            sc.push(d * s);
          }
          const mx = Math.max(...sc);
          const e = sc.map((v2) => Math.exp(v2 - mx));
          const z = e.reduce((a, c) => a + c, 0);
          const p = e.map((v2) => v2 / z);
          for (let j = 0; j <= t; j++) for (let i = 0; i < D; i++) out[qi(b, t, h) + i] += p[j]! * v[ki(b, j, kh) + i]!;
          // backward
          const dp = p.map((_, j) => {
            let d = 0;
            for (let i = 0; i < D; i++) d += dout[qi(b, t, h) + i]! * v[ki(b, j, kh) + i]!;
            return d;
          });
          const Dt = p.reduce((a, pj, j) => a + pj * dp[j]!, 0);
          for (let j = 0; j <= t; j++) {
            const ds = p[j]! * (dp[j]! - Dt) * s;
            for (let i = 0; i < D; i++) {
              dq[qi(b, t, h) + i] += ds * k[ki(b, j, kh) + i]!;
              dk[ki(b, j, kh) + i] += ds * q[qi(b, t, h) + i]!;
              dv[ki(b, j, kh) + i] += p[j]! * dout[qi(b, t, h) + i]!;
            }
          }
        }
      }
    return { out, dq, dk, dv };
  }

  test.each([
    [1, 1, 1, 1, 4],
    [2, 7, 4, 2, 8],
    [1, 33, 6, 3, 16],
    [3, 5, 4, 4, 2],
  ])('B=%i T=%i heads=%i kv=%i d=%i', (B, T, H, Hk, D) => {
    const q = randomArray(B * T * H * D, 11), k = randomArray(B * T * Hk * D, 12), v = randomArray(B * T * Hk * D, 13), dout = randomArray(B * T * H * D, 14);
    const r = ref(q, k, v, dout, B, T, H, Hk, D);
    const Q = tensor(q, [B, T, H * D]), K = tensor(k, [B, T, Hk * D]), V = tensor(v, [B, T, Hk * D]);
    const { out, lse } = ops.attention(Q, K, V, { heads: H, kvHeads: Hk });
    expect(relErr(out.toFloat32Array(), r.out)).toBeLessThan(1e-5);
    const g = ops.attentionBackward(tensor(dout, [B, T, H * D]), Q, K, V, out, lse, { heads: H, kvHeads: Hk });
    expect(normRelErr(g.dq.toFloat32Array(), r.dq)).toBeLessThan(1e-5);
    expect(normRelErr(g.dk.toFloat32Array(), r.dk)).toBeLessThan(1e-5);
    expect(normRelErr(g.dv.toFloat32Array(), r.dv)).toBeLessThan(1e-5);
  });
});

describe('activations', () => {
  const x = randomArray(1001, 21, 4), dy = randomArray(1001, 22);
  test('gelu_new and its derivative (against a central difference of the float64 formula)', () => {
    const f = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    const X = tensor(x, [1001]);
    expect(relErr(ops.gelu(X).toFloat32Array(), f64(x).map(f))).toBeLessThan(2e-6);
    const h = 1e-5;
    const dref = f64(x).map((v, i) => (dy[i]! * (f(v + h) - f(v - h))) / (2 * h));
    expect(normRelErr(ops.geluBackward(tensor(dy, [1001]), X).toFloat32Array(), dref)).toBeLessThan(1e-5);
  });

  test('swiglu and its gradients', () => {
    const up = randomArray(1001, 23, 2);
    const silu = (g: number) => g / (1 + Math.exp(-g));
    const G = tensor(x, [1001]), U = tensor(up, [1001]);
    expect(relErr(ops.swiglu(G, U).toFloat32Array(), f64(x).map((g, i) => silu(g) * up[i]!))).toBeLessThan(2e-6);
    const { dGate, dUp } = ops.swigluBackward(tensor(dy, [1001]), G, U);
    const h = 1e-5;
    expect(normRelErr(dGate.toFloat32Array(), f64(x).map((g, i) => (dy[i]! * up[i]! * (silu(g + h) - silu(g - h))) / (2 * h)))).toBeLessThan(1e-5);
    expect(normRelErr(dUp.toFloat32Array(), f64(x).map((g, i) => dy[i]! * silu(g)))).toBeLessThan(1e-6);
  });
});

describe('embedding and cross-entropy', () => {
  test('embedding gathers rows; backward sums repeated ids', () => {
    const table = randomArray(10 * 3, 31);
    const ids = tensor([[1n, 4n, 1n], [9n, 0n, 4n]]);
    const out = ops.embedding(ids, tensor(table, [10, 3]));
    expect(out.shape).toEqual([2, 3, 3]);
    const idx = [1, 4, 1, 9, 0, 4];
    expect(Array.from(out.toFloat32Array())).toEqual(idx.flatMap((i) => Array.from(table.subarray(i * 3, i * 3 + 3))));
    const dout = randomArray(18, 32);
    const dT = zeros([10, 3]);
    ops.embeddingBackward(ids, tensor(dout, [2, 3, 3]), dT);
    const ref = new Float64Array(30);
    idx.forEach((i, t) => { for (let c = 0; c < 3; c++) ref[i * 3 + c] += dout[t * 3 + c]!; });
    expect(relErr(dT.toFloat32Array(), ref)).toBeLessThan(1e-7);
    expect(() => ops.embedding(tensor([10n]), tensor(table, [10, 3]))).toThrow(/token id 10 at position 0 is outside the vocabulary \[0, 10\)/);
  });

  test('mean cross-entropy over counted rows, gradient written in place, ignore index skipped', () => {
    const [N, V] = [9, 13];
    const z = randomArray(N * V, 41, 5);
    const labels = [3, -100, 0, 12, 5, -100, 7, 7, 1];
    const counted = labels.filter((l) => l !== -100).length;
    let loss = 0;
    const grad = new Float64Array(N * V);
    labels.forEach((l, r) => {
      const row = Array.from(z.subarray(r * V, (r + 1) * V));
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((s, v) => s + Math.exp(v - mx), 0));
      if (l === -100) return;
      loss += lse - row[l]!;
      row.forEach((v, j) => (grad[r * V + j] = (Math.exp(v - lse) - (j === l ? 1 : 0)) / counted));
    });
    const L = tensor(z, [N, V]);
    const lab = tensor(new BigInt64Array(labels.map(BigInt)), [N]);
    const noGrad = ops.crossEntropy(L, lab);
    expect(noGrad.count).toBe(counted);
    expect(Math.abs(noGrad.loss - loss / counted)).toBeLessThan(1e-6);
    expect(Array.from(L.toFloat32Array())).toEqual(Array.from(z)); // untouched without gradInPlace
    const withGrad = ops.crossEntropy(L, lab, { gradInPlace: true });
    expect(withGrad.loss).toBe(noGrad.loss);
    expect(normRelErr(L.toFloat32Array(), grad)).toBeLessThan(1e-6);
    expect(ops.crossEntropy(tensor(z.subarray(0, V), [1, V]), tensor([-100n])).loss).toBeNaN();
    expect(() => ops.crossEntropy(tensor(z.subarray(0, V), [1, V]), tensor([13n]))).toThrow(/label 13 at row 0 is outside \[0, 13\)/);
  });
});

describe('layer op bad input', () => {
  const t = zeros([2, 4]);
  test.each([
    ['layerNorm weight', () => ops.layerNorm(t, zeros([3]), undefined, 1e-5), LorakitRangeError, /'weight' must have shape \[4\], got \[3\]/],
    ['rmsNorm dtype', () => ops.rmsNorm(zeros([2, 4], { dtype: 'bfloat16' }), zeros([4]), 1e-6), LorakitTypeError, /'x' must be float32, got bfloat16/],
    ['rope odd head', () => ops.ropeInPlace(zeros([1, 2, 6]), { heads: 2, theta: 1e4 }), LorakitRangeError, /even head size/],
    ['attention heads', () => ops.attention(zeros([1, 2, 6]), zeros([1, 2, 6]), zeros([1, 2, 6]), { heads: 3, kvHeads: 2 }), LorakitRangeError, /multiple of 2 kv heads/],
    ['attention k shape', () => ops.attention(zeros([1, 2, 4]), zeros([1, 3, 4]), zeros([1, 2, 4]), { heads: 2 }), LorakitRangeError, /'k' must have shape \[1, 2, 4\], got \[1, 3, 4\]/],
    // A document start past its token or below 0 would index outside the row: the CPU path refuses it.
    ['attention start past its token', () => ops.attention(zeros([1, 3, 2]), zeros([1, 3, 2]), zeros([1, 3, 2]), { heads: 1, docStarts: tensor([[0n, 2n, 1n]]) }),
      LorakitRangeError, /^attention: starts\[1\] = 2 must lie in \[0, its position in the row\]/],
    ['attention negative start', () => {
      const x = zeros([1, 3, 2]), { out, lse } = ops.attention(x, x, x, { heads: 1 });
      return ops.attentionBackward(x, x, x, x, out, lse, { heads: 1, docStarts: tensor([[0n, 0n, -1n]]) });
    }, LorakitRangeError, /^attention\.backward: starts\[2\] = -1 must lie in \[0, its position in the row\]/],
    ['embedding ids dtype', () => ops.embedding(zeros([2], { dtype: 'int32' }), zeros([3, 2])), LorakitTypeError, /'ids' must be int64, got int32/],
    ['crossEntropy labels', () => ops.crossEntropy(zeros([2, 3]), tensor([1n])), LorakitRangeError, /'labels' must have shape \[2\], got \[1\]/],
    ['copyColumns range', () => ops.copyColumns(zeros([2, 4]), 2, zeros([2, 4]), 0, 3), LorakitRangeError, /out of range/],
  ] as [string, () => unknown, new (...a: never[]) => Error, RegExp][])('%s', (_n, call, cls, msg) => {
    expect(call).toThrow(cls);
    expect(call).toThrow(msg);
  });
});
