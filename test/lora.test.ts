import { DisposedError, LorakitRangeError, LorakitTypeError, lora, nf4, tensor, zeros } from '../lib';
import { bf16Bits, bf16Value, matmul64, normRelErr, randomArray, relErr } from './helpers/reference';

interface Case {
  m: number;
  inF: number;
  out: number;
  r: number;
  s: number;
}

/** The merged-weight formulation in float64: an independent route to the same numbers. */
function reference(c: Case, x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, A: ArrayLike<number>, B: ArrayLike<number>, dy: ArrayLike<number>) {
  const BA = matmul64(B, c.out, c.r, false, A, c.r, c.inF, false);
  const weff = Float64Array.from(w, (v, i) => v + c.s * BA[i]!);
  const y = matmul64(x, c.m, c.inF, false, weff, c.out, c.inF, true).map((v, i) => v + (b ? b[i % c.out]! : 0));
  const dx = matmul64(dy, c.m, c.out, false, weff, c.out, c.inF, false);
  const G = matmul64(dy, c.m, c.out, true, x, c.m, c.inF, false); // dy^T x  [out, in]
  const dA = matmul64(B, c.out, c.r, true, G, c.out, c.inF, false).map((v) => c.s * v);
  const dB = matmul64(G, c.out, c.inF, false, A, c.r, c.inF, true).map((v) => c.s * v);
  const db = new Float64Array(c.out);
  for (let i = 0; i < c.m; i++) for (let j = 0; j < c.out; j++) db[j] += dy[i * c.out + j]!;
  return { y, dx, dA, dB, db, dW: G };
}

function makeInputs(c: Case, seed: number) {
  return {
    x: randomArray(c.m * c.inF, seed),
    w: randomArray(c.out * c.inF, seed + 1, 0.2),
    b: randomArray(c.out, seed + 2),
    A: randomArray(c.r * c.inF, seed + 3, 0.3),
    B: randomArray(c.out * c.r, seed + 4, 0.3),
    dy: randomArray(c.m * c.out, seed + 5),
  };
}

const CASES: Case[] = [
  { m: 1, inF: 1, out: 1, r: 1, s: 2 },
  { m: 13, inF: 29, out: 31, r: 4, s: 2 },
  { m: 70, inF: 65, out: 130, r: 16, s: 32 / Math.sqrt(16) },
  { m: 257, inF: 96, out: 49, r: 8, s: 0.5 },
];

describe('fused LoRA linear against the merged-weight float64 reference', () => {
  test.each(CASES)('m=$m in=$inF out=$out r=$r', (c) => {
    const v = makeInputs(c, c.m + c.inF);
    const ref = reference(c, v.x, v.w, v.b, v.A, v.B, v.dy);
    const params = {
      weight: tensor(v.w, [c.out, c.inF]), bias: tensor(v.b, [c.out]),
      loraA: tensor(v.A, [c.r, c.inF]), loraB: tensor(v.B, [c.out, c.r]), scale: c.s,
    };
    const x = tensor(v.x, [c.m, c.inF]);
    const { y, xa } = lora.linearForward(x, params);
    expect(relErr(y.toFloat32Array(), ref.y)).toBeLessThan(1e-5);
    expect(relErr(xa.toFloat32Array(), matmul64(v.x, c.m, c.inF, false, v.A, c.r, c.inF, true))).toBeLessThan(1e-5);
    const g = lora.linearBackward(tensor(v.dy, [c.m, c.out]), x, xa, params, { weightGrad: true });
    expect(normRelErr(g.dx!.toFloat32Array(), ref.dx)).toBeLessThan(1e-5);
    expect(normRelErr(g.dLoraA.toFloat32Array(), ref.dA)).toBeLessThan(1e-5);
    expect(normRelErr(g.dLoraB.toFloat32Array(), ref.dB)).toBeLessThan(1e-5);
    expect(normRelErr(g.dBias!.toFloat32Array(), ref.db)).toBeLessThan(1e-6);
    expect(normRelErr(g.dWeight!.toFloat32Array(), ref.dW)).toBeLessThan(1e-5);
  });

  test('leading batch dimensions, and no bias', () => {
    const c = { m: 6, inF: 10, out: 7, r: 3, s: 1.5 };
    const v = makeInputs(c, 99);
    const ref = reference(c, v.x, v.w, null, v.A, v.B, v.dy);
    const params = { weight: tensor(v.w, [7, 10]), loraA: tensor(v.A, [3, 10]), loraB: tensor(v.B, [7, 3]), scale: 1.5 };
    const x = tensor(v.x, [2, 3, 10]);
    const { y, xa } = lora.linearForward(x, params);
    expect(y.shape).toEqual([2, 3, 7]);
    expect(xa.shape).toEqual([2, 3, 3]);
    expect(relErr(y.toFloat32Array(), ref.y)).toBeLessThan(1e-5);
    const g = lora.linearBackward(tensor(v.dy, [2, 3, 7]), x, xa, params);
    expect(g.dx!.shape).toEqual([2, 3, 10]);
    expect(g.dBias).toBeUndefined();
    expect(g.dWeight).toBeUndefined();
    expect(normRelErr(g.dLoraA.toFloat32Array(), ref.dA)).toBeLessThan(1e-5);
  });

  test('a finite difference of the loss agrees with the analytic gradient', () => {
    const c = { m: 5, inF: 6, out: 4, r: 2, s: 3 };
    const v = makeInputs(c, 5);
    const loss = (A: Float32Array) => {
      const ref = reference(c, v.x, v.w, v.b, A, v.B, v.dy);
      return ref.y.reduce((s, yv, i) => s + yv * v.dy[i]!, 0); // L = <y, dy>, so dL/dy = dy
    };
    const params = { weight: tensor(v.w, [4, 6]), bias: tensor(v.b, [4]), loraA: tensor(v.A, [2, 6]), loraB: tensor(v.B, [4, 2]), scale: 3 };
    const x = tensor(v.x, [5, 6]);
    const { xa } = lora.linearForward(x, params);
    const dA = lora.linearBackward(tensor(v.dy, [5, 4]), x, xa, params).dLoraA.toFloat32Array();
    for (const idx of [0, 5, 11]) {
      const h = 1e-3;
      const up = Float32Array.from(v.A), dn = Float32Array.from(v.A);
      up[idx]! += h;
      dn[idx]! -= h;
      const fd = (loss(up) - loss(dn)) / (Math.fround(v.A[idx]! + h) - Math.fround(v.A[idx]! - h));
      expect(Math.abs(fd - dA[idx]!)).toBeLessThan(1e-3 * Math.max(1, Math.abs(fd)));
    }
  });

  test('bfloat16 activations and weight', () => {
    const c = { m: 40, inF: 48, out: 24, r: 4, s: 2 };
    const v = makeInputs(c, 21);
    const xb = new Uint16Array(v.x.length).map((_, i) => bf16Bits(v.x[i]!));
    const wb = new Uint16Array(v.w.length).map((_, i) => bf16Bits(v.w[i]!));
    const dyb = new Uint16Array(v.dy.length).map((_, i) => bf16Bits(v.dy[i]!));
    const ref = reference(c, Array.from(xb, bf16Value), Array.from(wb, bf16Value), v.b, v.A, v.B, Array.from(dyb, bf16Value));
    const params = { weight: tensor(wb, [24, 48], { dtype: 'bfloat16' }), bias: tensor(v.b, [24]), loraA: tensor(v.A, [4, 48]), loraB: tensor(v.B, [24, 4]), scale: 2 };
    const x = tensor(xb, [40, 48], { dtype: 'bfloat16' });
    const { y, xa } = lora.linearForward(x, params);
    expect(relErr(y.toFloat32Array(), ref.y)).toBeLessThan(1e-5);
    const g = lora.linearBackward(tensor(dyb, [40, 24], { dtype: 'bfloat16' }), x, xa, params);
    expect(normRelErr(g.dx!.toFloat32Array(), ref.dx)).toBeLessThan(1e-5);
    expect(normRelErr(g.dLoraB.toFloat32Array(), ref.dB)).toBeLessThan(1e-5);
  });

  test('an NF4 base weight gives the results of its dequantized float32 weight', () => {
    const c = { m: 33, inF: 128, out: 40, r: 8, s: 2 };
    const v = makeInputs(c, 31);
    for (const doubleQuant of [false, true]) {
      const q = nf4.quantize(tensor(v.w, [40, 128]), { blockSize: 64, doubleQuant });
      const wd = nf4.dequantize(q).toFloat32Array();
      const ref = reference(c, v.x, wd, v.b, v.A, v.B, v.dy);
      const params = { weight: q, bias: tensor(v.b, [40]), loraA: tensor(v.A, [8, 128]), loraB: tensor(v.B, [40, 8]), scale: 2 };
      const x = tensor(v.x, [33, 128]);
      const { y, xa } = lora.linearForward(x, params);
      expect(relErr(y.toFloat32Array(), ref.y)).toBeLessThan(1e-5);
      const g = lora.linearBackward(tensor(v.dy, [33, 40]), x, xa, params);
      expect(normRelErr(g.dx!.toFloat32Array(), ref.dx)).toBeLessThan(1e-5);
      expect(normRelErr(g.dLoraA.toFloat32Array(), ref.dA)).toBeLessThan(1e-5);
      expect(() => lora.linearBackward(tensor(v.dy, [33, 40]), x, xa, params, { weightGrad: true })).toThrow(/NF4 weight is frozen/);
      q.dispose();
    }
  });

  test('accumulateInto adds to existing gradients', () => {
    const c = { m: 9, inF: 11, out: 12, r: 3, s: 1 };
    const v = makeInputs(c, 41);
    const ref = reference(c, v.x, v.w, v.b, v.A, v.B, v.dy);
    const params = { weight: tensor(v.w, [12, 11]), bias: tensor(v.b, [12]), loraA: tensor(v.A, [3, 11]), loraB: tensor(v.B, [12, 3]), scale: 1 };
    const x = tensor(v.x, [9, 11]);
    const { xa } = lora.linearForward(x, params);
    const into = { loraA: zeros([3, 11]), loraB: zeros([12, 3]), bias: zeros([12]) };
    const dy = tensor(v.dy, [9, 12]);
    lora.linearBackward(dy, x, xa, params, { accumulateInto: into, inputGrad: false });
    const g = lora.linearBackward(dy, x, xa, params, { accumulateInto: into, inputGrad: false });
    expect(g.dLoraA).toBe(into.loraA);
    expect(g.dx).toBeUndefined();
    expect(normRelErr(into.loraA.toFloat32Array(), ref.dA.map((t) => 2 * t))).toBeLessThan(1e-5);
    expect(normRelErr(into.loraB.toFloat32Array(), ref.dB.map((t) => 2 * t))).toBeLessThan(1e-5);
    expect(normRelErr(into.bias.toFloat32Array(), ref.db.map((t) => 2 * t))).toBeLessThan(1e-6);
  });
});

describe('LoRA dropout', () => {
  // With A = I (r = in) the saved intermediate is dropout(x) itself, which exposes the mask.
  test('mask: kept values scaled by 1/(1-p), dropped ones zero, rate p, same mask in backward', () => {
    const [m, d, out, p] = [64, 32, 16, 0.25];
    const x = randomArray(m * d, 51);
    const eye = new Float32Array(d * d).map((_, i) => (i % (d + 1) === 0 ? 1 : 0));
    const w = randomArray(out * d, 52), B = randomArray(out * d, 53), dy = randomArray(m * out, 54);
    const params = { weight: tensor(w, [out, d]), loraA: tensor(eye, [d, d]), loraB: tensor(B, [out, d]), scale: 0.5 };
    const X = tensor(x, [m, d]);
    const { y, xa } = lora.linearForward(X, params, { dropout: p, seed: 1234 });
    const xd = xa.toFloat32Array();
    let dropped = 0;
    xd.forEach((val, i) => {
      if (val === 0 && x[i] !== 0) dropped++;
      else expect(val).toBeCloseTo(x[i]! / (1 - p), 6);
    });
    const rate = dropped / xd.length;
    expect(Math.abs(rate - p)).toBeLessThan(4 * Math.sqrt((p * (1 - p)) / xd.length));
    // y = x W^T + s xd B^T  with the exposed mask
    const yref = matmul64(x, m, d, false, w, out, d, true);
    const lr = matmul64(xd, m, d, false, B, out, d, true);
    expect(relErr(y.toFloat32Array(), yref.map((t, i) => t + 0.5 * lr[i]!))).toBeLessThan(1e-5);
    // Backward: dx = dy W + s (dy B A) * mask/(1-p); dA = s (dy B)^T xd; dB = s dy^T xd A^T.
    const g = lora.linearBackward(tensor(dy, [m, out]), X, xa, params, { dropout: p, seed: 1234 });
    const dyB = matmul64(dy, m, out, false, B, out, d, false);
    const dxref = matmul64(dy, m, out, false, w, out, d, false).map((t, i) => t + (xd[i] !== 0 ? (0.5 * dyB[i]!) / (1 - p) : 0));
    expect(normRelErr(g.dx!.toFloat32Array(), dxref)).toBeLessThan(1e-5);
    expect(normRelErr(g.dLoraA.toFloat32Array(), matmul64(dyB, m, d, true, xd, m, d, false).map((t) => 0.5 * t))).toBeLessThan(1e-5);
    expect(normRelErr(g.dLoraB.toFloat32Array(), matmul64(dy, m, out, true, xd, m, d, false).map((t) => 0.5 * t))).toBeLessThan(1e-5);
    // Another seed, another mask.
    const other = lora.linearForward(X, params, { dropout: p, seed: 1235 }).xa.toFloat32Array();
    expect(Array.from(other)).not.toEqual(Array.from(xd));
  });
});

describe('LoRA bad input', () => {
  const p = () => ({ weight: zeros([4, 6]), loraA: zeros([2, 6]), loraB: zeros([4, 2]), scale: 1 });
  const x = zeros([3, 6]);
  const gone = zeros([3, 6]);
  gone.dispose();
  const table: [string, () => unknown, new (...a: never[]) => Error, RegExp][] = [
    ['x features', () => lora.linearForward(zeros([3, 5]), p()), LorakitRangeError, /'x' has 5 features \(shape \[3, 5\]\), 'weight' \[4, 6\] expects 6/],
    ['loraA shape', () => lora.linearForward(x, { ...p(), loraA: zeros([2, 5]) }), LorakitRangeError, /'loraA' must have shape \[2, 6\], got \[2, 5\]/],
    ['loraB rank', () => lora.linearForward(x, { ...p(), loraB: zeros([4, 3]) }), LorakitRangeError, /'loraB' must have shape \[4, 2\], got \[4, 3\]/],
    ['loraA dtype', () => lora.linearForward(x, { ...p(), loraA: zeros([2, 6], { dtype: 'bfloat16' }) }), LorakitTypeError, /'loraA' must be float32, got bfloat16/],
    ['weight 1-D', () => lora.linearForward(x, { ...p(), weight: zeros([24]) }), LorakitRangeError, /'weight' must be 2-D/],
    ['weight int', () => lora.linearForward(x, { ...p(), weight: zeros([4, 6], { dtype: 'uint8' }) }), LorakitTypeError, /'weight' must be float32 or bfloat16 or float16, got uint8/],
    ['bias shape', () => lora.linearForward(x, { ...p(), bias: zeros([6]) }), LorakitRangeError, /'bias' must have shape \[4\], got \[6\]/],
    ['disposed x', () => lora.linearForward(gone, p()), DisposedError, /lora\.linearForward: 'x'/],
    ['dropout 1', () => lora.linearForward(x, p(), { dropout: 1 }), LorakitRangeError, /'dropout' must be < 1, got 1/],
    ['scale NaN', () => lora.linearForward(x, { ...p(), scale: NaN }), LorakitTypeError, /'scale' must be a finite number/],
    ['params null', () => lora.linearForward(x, null as never), LorakitTypeError, /params must be an object, got null/],
    ['dy shape', () => lora.linearBackward(zeros([3, 5]), x, zeros([3, 2]), p()), LorakitRangeError, /'dy' must have shape \[3, 4\], got \[3, 5\]/],
    ['xa shape', () => lora.linearBackward(zeros([3, 4]), x, zeros([3, 3]), p()), LorakitRangeError, /'xa' must have shape \[3, 2\], got \[3, 3\]/],
    ['partial accumulateInto', () => lora.linearBackward(zeros([3, 4]), x, zeros([3, 2]), p(), { accumulateInto: { loraA: zeros([2, 6]) } }), LorakitTypeError, /must hold a tensor for every gradient/],
    ['accumulateInto shape', () => lora.linearBackward(zeros([3, 4]), x, zeros([3, 2]), p(), { accumulateInto: { loraA: zeros([2, 5]), loraB: zeros([4, 2]) } }), LorakitRangeError, /'accumulateInto\.loraA' must have shape \[2, 6\]/],
    ['loraScale r', () => lora.loraScale(16, 0), LorakitRangeError, /'r' must be >= 1, got 0/],
  ];
  test.each(table)('%s', (_n, call, cls, msg) => {
    expect(call).toThrow(cls);
    expect(call).toThrow(msg);
  });

  test('loraScale follows PEFT (alpha/r, rsLoRA alpha/sqrt(r))', () => {
    expect(lora.loraScale(32, 16)).toBe(2);
    expect(lora.loraScale(16, 8, true)).toBeCloseTo(16 / Math.sqrt(8), 12);
  });
});
