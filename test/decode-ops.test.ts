// The generation ops (#13): kvWrite and pagedAttention over a paged KV pool, loraSegments for many adapters
// in one batch, each against a float64 reference written here (plain loops, no lorakit code), against the
// dense op it must agree with, and with hostile arguments.
import { DisposedError, LorakitRangeError, LorakitTypeError, lora, ops, tensor, zeros, type Tensor } from '../lib';
import { native } from '../lib/native/binding';
import { bf16Bits, bf16Value, randomArray, relErr, rng } from './helpers/reference';

const i64 = (xs: readonly number[]) => tensor(BigInt64Array.from(xs.map(BigInt)), [xs.length]);

/** Values as a bfloat16 pool holds them: each rounded to nearest even. */
const bf16Round = (a: ArrayLike<number>) => Float64Array.from(a, (x) => bf16Value(bf16Bits(x)));

describe('kvWrite', () => {
  const width = 6, poolSlots = 10;
  const k = randomArray(4 * width, 1), v = randomArray(4 * width, 2, 3);
  const slots = [7, -1, 2, 9];
  const sentinel = (i: number) => 1000 + i;

  test('float32 pools: each row lands in its slot exactly, a negative slot is skipped, other slots are untouched', () => {
    const kp = tensor(Float32Array.from({ length: poolSlots * width }, (_, i) => sentinel(i)), [poolSlots, width]);
    const vp = tensor(Float32Array.from({ length: poolSlots * width }, (_, i) => -sentinel(i)), [poolSlots, width]);
    ops.kvWrite(tensor(k, [2, 2, width]), tensor(v, [2, 2, width]), i64(slots), kp, vp);
    const K = kp.toFloat32Array(), V = vp.toFloat32Array();
    for (let s = 0; s < poolSlots; s++) {
      const row = slots.indexOf(s);
      for (let c = 0; c < width; c++) {
        const i = s * width + c;
        expect([K[i], V[i]]).toEqual(row >= 0 ? [k[row * width + c], v[row * width + c]] : [sentinel(i), -sentinel(i)]);
      }
    }
  });

  test('bfloat16 pools hold round-to-nearest-even of each value, bit for bit, ties included', () => {
    // Exact ties: 1 + 2^-8 rounds down to the even 1, 1 + 3·2^-8 up to the even 1 + 2^-6; then a value just
    // above a tie, a NaN, an infinity and random values.
    const special = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8 + 2 ** -20), NaN, -Infinity, 3.4e38];
    const kk = Float32Array.from(k, (x, i) => (i < special.length ? special[i]! : x));
    const pool = () => tensor(Uint16Array.from({ length: poolSlots * width }, (_, i) => 0x4000 + i), [poolSlots, width], { dtype: 'bfloat16' });
    const kp = pool(), vp = pool();
    ops.kvWrite(tensor(kk, [4, width]), tensor(v, [4, width]), i64(slots), kp, vp);
    const K = kp.data() as Uint16Array, V = vp.data() as Uint16Array;
    for (let s = 0; s < poolSlots; s++) {
      const row = slots.indexOf(s);
      for (let c = 0; c < width; c++) {
        const i = s * width + c;
        expect([K[i], V[i]]).toEqual(row >= 0 ? [bf16Bits(kk[row * width + c]!), bf16Bits(v[row * width + c]!)] : [0x4000 + i, 0x4000 + i]);
      }
    }
    // The ties themselves, spelled out.
    expect(K[7 * width]).toBe(0x3f80);
    expect(K[7 * width + 1]).toBe(0x3f82);
  });
});

// A paged pool filled by kvWrite: sequences of the given lengths in scattered blocks of a shared pool.
interface Paged {
  hq: number;
  hkv: number;
  d: number;
  bs: number;
  lens: number[];
  maxBlocks: number;
  table: number[]; // [numSeqs * maxBlocks]
  k: Float32Array[]; // per sequence, [len, hkv * d]
  v: Float32Array[];
  kPool: Tensor;
  vPool: Tensor;
  blockTable: Tensor;
}

function buildPaged(hq: number, hkv: number, d: number, bs: number, lens: number[], dtype: 'float32' | 'bfloat16', seed: number): Paged {
  const width = hkv * d;
  const need = lens.map((l) => Math.ceil(l / bs));
  const maxBlocks = Math.max(...need) + 1;
  const numBlocks = need.reduce((a, b) => a + b, 0) + 3; // spare blocks nobody owns
  // A shuffled list of block ids: each sequence's blocks are scattered, neither in order nor adjacent.
  const r = rng(seed);
  const ids = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  // Entries past a sequence's blocks hold garbage the op must never read.
  const table = new Array<number>(lens.length * maxBlocks).fill(-777);
  let next = 0;
  lens.forEach((_, s) => {
    for (let b = 0; b < need[s]!; b++) table[s * maxBlocks + b] = ids[next++]!;
  });
  const poolSlots = numBlocks * bs;
  const mk = () => zeros([poolSlots, width], { dtype });
  const kPool = mk(), vPool = mk();
  const k: Float32Array[] = [], v: Float32Array[] = [];
  lens.forEach((len, s) => {
    k.push(randomArray(len * width, seed * 100 + 2 * s, 1.5));
    v.push(randomArray(len * width, seed * 100 + 2 * s + 1));
    const slots = Array.from({ length: len }, (_, t) => table[s * maxBlocks + Math.floor(t / bs)]! * bs + (t % bs));
    ops.kvWrite(tensor(k[s]!, [len, width]), tensor(v[s]!, [len, width]), i64(slots), kPool, vPool);
  });
  const blockTable = tensor(BigInt64Array.from(table.map(BigInt)), [lens.length, maxBlocks]);
  return { hq, hkv, d, bs, lens, maxBlocks, table, k, v, kPool, vPool, blockTable };
}

// softmax(scale · q·Kᵀ) V in float64 over tokens 0..ctx-1 of a sequence, from the per-sequence K/V (rounded to
// bfloat16 first when the pool is bfloat16: that is what the op reads).
function refAttention(p: Paged, q: Float32Array, seq: number[], ctx: number[], scale: number, bf16: boolean): Float64Array {
  const { hq, hkv, d } = p, width = hkv * d, group = hq / hkv;
  const K = p.k.map((a) => (bf16 ? bf16Round(a) : Float64Array.from(a)));
  const V = p.v.map((a) => (bf16 ? bf16Round(a) : Float64Array.from(a)));
  const out = new Float64Array(seq.length * hq * d);
  for (let i = 0; i < seq.length; i++)
    for (let h = 0; h < hq; h++) {
      const g = Math.floor(h / group), s = seq[i]!, qo = (i * hq + h) * d;
      const scores: number[] = [];
      for (let j = 0; j < ctx[i]!; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += q[qo + e]! * K[s]![j * width + g * d + e]!;
        scores.push(scale * dot);
      }
      const mx = Math.max(...scores);
      const w = scores.map((x) => Math.exp(x - mx));
      const sum = w.reduce((a, b) => a + b, 0);
      for (let j = 0; j < ctx[i]!; j++)
        for (let e = 0; e < d; e++) out[qo + e] += (w[j]! / sum) * V[s]![j * width + g * d + e]!;
    }
  return out;
}

function paged(p: Paged, q: Float32Array, seq: number[], ctx: number[], scale?: number): Float32Array {
  const out = ops.pagedAttention(tensor(q, [seq.length, p.hq * p.d]), p.kPool, p.vPool, {
    heads: p.hq, kvHeads: p.hkv, blockSize: p.bs, blockTable: p.blockTable, seq: i64(seq), ctx: i64(ctx), scale,
  });
  expect(out.shape).toEqual([seq.length, p.hq * p.d]);
  return out.toFloat32Array();
}

describe('pagedAttention against float64', () => {
  const cases: [string, number, number, number, 'float32' | 'bfloat16'][] = [
    ['GQA 4/2, head dim 8, float32', 4, 2, 8, 'float32'],
    ['4/4 heads, head dim 64, float32', 4, 4, 64, 'float32'],
    ['GQA 4/2, head dim 64, bfloat16 pool', 4, 2, 64, 'bfloat16'],
    ['2/2 heads, head dim 8, bfloat16 pool', 2, 2, 8, 'bfloat16'],
  ];
  test.each(cases)('%s', (_name, hq, hkv, d, dtype) => {
    const lens = [7, 13, 3, 9], bs = 4;
    const p = buildPaged(hq, hkv, d, bs, lens, dtype, hq * 1000 + d);
    const bf16 = dtype === 'bfloat16';
    // Decode: one row per sequence (in a shuffled order), each at its last position.
    const dSeq = [2, 0, 3, 1], dCtx = dSeq.map((s) => lens[s]!);
    const qd = randomArray(dSeq.length * hq * d, 7, 2);
    expect(relErr(paged(p, qd, dSeq, dCtx), refAttention(p, qd, dSeq, dCtx, 1 / Math.sqrt(d), bf16))).toBeLessThan(1e-5);
    // Prefill: every position of sequence 1, ctx 1..13, with a scale of our own.
    const pSeq = Array(lens[1]).fill(1), pCtx = pSeq.map((_, t) => t + 1);
    const qp = randomArray(pSeq.length * hq * d, 8);
    expect(relErr(paged(p, qp, pSeq, pCtx, 0.3), refAttention(p, qp, pSeq, pCtx, 0.3, bf16))).toBeLessThan(1e-5);
    // Both in one call, rows of different sequences interleaved, contexts crossing block boundaries.
    const mSeq = [0, 1, 3, 0, 2, 1], mCtx = [4, 5, 8, 1, 2, 12];
    const qm = randomArray(mSeq.length * hq * d, 9);
    expect(relErr(paged(p, qm, mSeq, mCtx), refAttention(p, qm, mSeq, mCtx, 1 / Math.sqrt(d), bf16))).toBeLessThan(1e-5);
  });

  test('each row sees only its own sequence, up to its own context', () => {
    const p = buildPaged(2, 1, 8, 4, [6, 6], 'float32', 5);
    const q = randomArray(2 * 16, 3);
    const ref0 = refAttention(p, q, [0, 0], [6, 3], 0.5, false), ref1 = refAttention(p, q, [1, 1], [6, 3], 0.5, false);
    const got = paged(p, q, [0, 0], [6, 3], 0.5);
    expect(relErr(got, ref0)).toBeLessThan(1e-5);
    // Another sequence's keys, or a longer context, give a different answer: the comparison above can fail.
    expect(relErr(got, ref1)).toBeGreaterThan(1e-2);
    expect(relErr(got, refAttention(p, q, [0, 0], [6, 4], 0.5, false))).toBeGreaterThan(1e-3);
  });
});

describe('pagedAttention equals the dense attention op on the same K/V', () => {
  test.each([[4, 2, 8], [4, 4, 64]])('hq %i, hkv %i, head dim %i', (hq, hkv, d) => {
    const T = 11, bs = 4;
    const p = buildPaged(hq, hkv, d, bs, [T], 'float32', 42 + d);
    const q = randomArray(T * hq * d, 11, 2);
    const dense = ops.attention(tensor(q, [1, T, hq * d]), tensor(p.k[0]!, [1, T, hkv * d]), tensor(p.v[0]!, [1, T, hkv * d]), { heads: hq, kvHeads: hkv });
    const got = paged(p, q, Array(T).fill(0), Array.from({ length: T }, (_, t) => t + 1));
    expect(relErr(got, dense.out.toFloat32Array())).toBeLessThan(1e-5);
  });
});

describe('loraSegments', () => {
  const m = 40, inF = 24, out = 20;
  const x = randomArray(m * inF, 21), y0 = randomArray(m * out, 22, 5);
  // Rank 2 on rows [0, 5), 8 on [9, 20), 16 on [20, 33); rows [5, 9) and [33, 40) have no adapter. Given out
  // of order, with an empty segment among them.
  const specs = [
    { start: 9, end: 20, r: 8, scale: 0.5 },
    { start: 0, end: 5, r: 2, scale: 2 },
    { start: 7, end: 7, r: 4, scale: 1 },
    { start: 20, end: 33, r: 16, scale: -0.25 },
  ].map((s, j) => ({ ...s, a: randomArray(s.r * inF, 30 + j), b: randomArray(out * s.r, 40 + j) }));
  const segs = () => specs.map((s) => ({ start: s.start, end: s.end, scale: s.scale, loraA: tensor(s.a, [s.r, inF]), loraB: tensor(s.b, [out, s.r]) }));

  function reference(): Float64Array {
    const y = Float64Array.from(y0);
    for (const s of specs)
      for (let i = s.start; i < s.end; i++) {
        const xa = new Float64Array(s.r);
        for (let k = 0; k < s.r; k++) for (let c = 0; c < inF; c++) xa[k] += x[i * inF + c]! * s.a[k * inF + c]!;
        for (let o = 0; o < out; o++) {
          let acc = 0;
          for (let k = 0; k < s.r; k++) acc += xa[k]! * s.b[o * s.r + k]!;
          y[i * out + o] += s.scale * acc;
        }
      }
    return y;
  }

  test('adds each segment\'s LoRA to its rows (float64 reference); rows without an adapter keep their bits', () => {
    const Y = tensor(y0, [m, out]);
    expect(ops.loraSegments(tensor(x, [m, inF]), Y, segs())).toBe(Y);
    const got = Y.toFloat32Array(), ref = reference();
    const covered = (i: number) => specs.some((s) => i >= s.start && i < s.end);
    const rows = (a: ArrayLike<number>, pick: (i: number) => boolean) =>
      Array.from({ length: m }, (_, i) => i).filter(pick).flatMap((i) => Array.from({ length: out }, (_, o) => a[i * out + o]!));
    expect(relErr(rows(got, covered), rows(ref, covered))).toBeLessThan(1e-5);
    // Untouched, bit for bit (toEqual on numbers compares with Object.is).
    expect(rows(got, (i) => !covered(i))).toEqual(rows(y0, (i) => !covered(i)));
    // The adapters changed the covered rows by much more than the tolerance.
    expect(relErr(rows(y0, covered), rows(ref, covered))).toBeGreaterThan(1e-2);
  });

  test('equals the single-adapter LoRA layer applied to each segment alone', () => {
    const Y = tensor(y0, [2, m / 2, out]);
    const got = ops.loraSegments(tensor(x, [2, m / 2, inF]), Y, segs()).toFloat32Array();
    for (const s of specs) {
      if (s.start === s.end) continue;
      const rowsX = tensor(x.slice(s.start * inF, s.end * inF), [s.end - s.start, inF]);
      const { y } = lora.linearForward(rowsX, { weight: zeros([out, inF]), loraA: tensor(s.a, [s.r, inF]), loraB: tensor(s.b, [out, s.r]), scale: s.scale });
      const delta = y.toFloat32Array();
      const want = Float64Array.from(delta, (dv, i) => y0[s.start * out + i]! + dv);
      expect(relErr(got.slice(s.start * out, s.end * out), want)).toBeLessThan(1e-5);
    }
  });

  test('with Bᵀ given (the engine\'s CPU layout): the same sums, the same untouched rows; a wrong Bᵀ is refused', () => {
    const transposed = (b: Float32Array, r: number) => Float32Array.from({ length: r * out }, (_, i) => b[(i % out) * r + Math.floor(i / out)]!);
    const Y = tensor(y0, [m, out]);
    ops.loraSegments(tensor(x, [m, inF]), Y, segs().map((g, j) => ({ ...g, loraBT: tensor(transposed(specs[j]!.b, specs[j]!.r), [specs[j]!.r, out]) })));
    const got = Y.toFloat32Array(), ref = reference();
    const covered = (i: number) => specs.some((s) => i >= s.start && i < s.end);
    for (let i = 0; i < m; i++) {
      const g = got.slice(i * out, (i + 1) * out), r = ref.slice(i * out, (i + 1) * out);
      if (covered(i)) expect(relErr(g, r)).toBeLessThan(1e-5);
      else expect(Array.from(g)).toEqual(Array.from(y0.slice(i * out, (i + 1) * out)));
    }
    const bad = segs().map((g, j) => ({ ...g, loraBT: zeros([out, specs[j]!.r]) }));
    expect(() => ops.loraSegments(tensor(x, [m, inF]), tensor(y0, [m, out]), bad)).toThrow(/segments\[0\]\.loraBT.*\[8, 20\]/);
  });

  test('weights checked once (LoraSegmentWeights) give the same sums; disposed ones are refused by name', () => {
    const Y1 = tensor(y0, [m, out]), Y2 = tensor(y0, [m, out]);
    ops.loraSegments(tensor(x, [m, inF]), Y1, segs());
    const prepared = segs().map((g) => ({ start: g.start, end: g.end, weights: new ops.LoraSegmentWeights(g.loraA, g.loraB, g.scale) }));
    ops.loraSegments(tensor(x, [m, inF]), Y2, prepared);
    expect(Array.from(Y2.toFloat32Array())).toEqual(Array.from(Y1.toFloat32Array()));
    prepared[3]!.weights.loraB.dispose();
    expect(() => ops.loraSegments(tensor(x, [m, inF]), Y2, prepared)).toThrow(/segments\[3\]\.loraB.*disposed/);
    expect(() => new ops.LoraSegmentWeights(zeros([2, 4]), zeros([5, 3]), 1)).toThrow(/weights\.loraB.*\[5, 2\]/);
  });

  test('no segments: y is unchanged', () => {
    const Y = tensor(y0, [m, out]);
    ops.loraSegments(tensor(x, [m, inF]), Y, []);
    expect(Array.from(Y.toFloat32Array())).toEqual(Array.from(y0));
  });
});

describe('hostile arguments', () => {
  const W = 4;
  const kv = () => ({ k: zeros([3, W]), v: zeros([3, W]), kp: zeros([8, W]), vp: zeros([8, W]) });
  // Two sequences, block size 4, maxBlocks 2, a pool of 4 blocks (16 slots); heads 2 of dim 2 on 1 kv head.
  const pa = (o: { q?: Tensor; kp?: Tensor; vp?: Tensor; table?: number[]; seq?: number[]; ctx?: number[]; heads?: number; kvHeads?: number; blockSize?: number } = {}) => {
    const table = o.table ?? [0, 3, 2, 1];
    return ops.pagedAttention(o.q ?? zeros([2, 4]), o.kp ?? zeros([16, 2]), o.vp ?? zeros([16, 2]), {
      heads: o.heads ?? 2, kvHeads: o.kvHeads ?? 1, blockSize: o.blockSize ?? 4,
      blockTable: tensor(BigInt64Array.from(table.map(BigInt)), [2, table.length / 2]),
      seq: i64(o.seq ?? [0, 1]), ctx: i64(o.ctx ?? [8, 5]),
    });
  };
  const seg = (start: number, end: number, r = 2, inF = 6, out = 5) => ({ start, end, scale: 1, loraA: zeros([r, inF]), loraB: zeros([out, r]) });
  const ls = (segments: unknown[], x = zeros([8, 6]), y = zeros([8, 5])) => ops.loraSegments(x, y, segments as never);
  const disposed = (t: Tensor) => {
    t.dispose();
    return t;
  };

  test('the fixture itself is valid (so each case below fails for its own reason)', () => {
    const { k, v, kp, vp } = kv();
    expect(() => ops.kvWrite(k, v, i64([0, -1, 7]), kp, vp)).not.toThrow();
    expect(() => pa()).not.toThrow();
    expect(() => ls([seg(0, 3), seg(3, 8)])).not.toThrow();
  });

  test.each([
    ['kvWrite: k dtype', () => { const o = kv(); ops.kvWrite(zeros([3, W], { dtype: 'bfloat16' }), o.v, i64([0, 1, 2]), o.kp, o.vp); }, LorakitTypeError, /^kvWrite: 'k' must be float32, got bfloat16/],
    ['kvWrite: v shape', () => { const o = kv(); ops.kvWrite(o.k, zeros([2, W]), i64([0, 1, 2]), o.kp, o.vp); }, LorakitRangeError, /^kvWrite: 'v' must have shape \[3, 4\], got \[2, 4\]/],
    ['kvWrite: slots dtype', () => { const o = kv(); ops.kvWrite(o.k, o.v, zeros([3], { dtype: 'int32' }), o.kp, o.vp); }, LorakitTypeError, /^kvWrite: 'slots' must be int64, got int32/],
    ['kvWrite: slots length', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 1]), o.kp, o.vp); }, LorakitRangeError, /^kvWrite: 'slots' must have shape \[3\], got \[2\]/],
    ['kvWrite: float16 pool', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 1, 2]), zeros([8, W], { dtype: 'float16' }), o.vp); }, LorakitTypeError, /^kvWrite: 'kPool' must be float32 or bfloat16, got float16/],
    ['kvWrite: pool width', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 1, 2]), zeros([8, W + 1]), o.vp); }, LorakitRangeError, /^kvWrite: 'kPool' must have shape \[8, 4\], got \[8, 5\]/],
    ['kvWrite: pools of two dtypes', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 1, 2]), o.kp, zeros([8, W], { dtype: 'bfloat16' })); }, LorakitTypeError, /^kvWrite: 'vPool' must be float32, got bfloat16/],
    ['kvWrite: slot past the pool', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 8, 2]), o.kp, o.vp); }, LorakitRangeError, /^kvWrite: 'slots'\[1\] = 8 must be below the pools' 8 slots/],
    ['kvWrite: disposed k', () => { const o = kv(); ops.kvWrite(disposed(o.k), o.v, i64([0, 1, 2]), o.kp, o.vp); }, DisposedError, /^kvWrite: 'k' .* has been disposed/],
    ['kvWrite: disposed pool', () => { const o = kv(); ops.kvWrite(o.k, o.v, i64([0, 1, 2]), o.kp, disposed(o.vp)); }, DisposedError, /^kvWrite: 'vPool' .* has been disposed/],

    ['pagedAttention: q dtype', () => pa({ q: zeros([2, 4], { dtype: 'bfloat16' }) }), LorakitTypeError, /^pagedAttention: 'q' must be float32, got bfloat16/],
    ['pagedAttention: heads not a multiple of kvHeads', () => pa({ heads: 2, kvHeads: 3 }), LorakitRangeError, /^pagedAttention: 'heads' \(2\) must be a multiple of 'kvHeads' \(3\)/],
    ['pagedAttention: q width', () => pa({ q: zeros([2, 5]) }), LorakitRangeError, /^pagedAttention: 'q' rows of width 5 .* must split into 2 heads/],
    ['pagedAttention: pool width', () => pa({ kp: zeros([16, 3]) }), LorakitRangeError, /^pagedAttention: 'kPool' must have shape \[16, 2\], got \[16, 3\]/],
    ['pagedAttention: pools of two dtypes', () => pa({ vp: zeros([16, 2], { dtype: 'bfloat16' }) }), LorakitTypeError, /^pagedAttention: 'vPool' must be float32, got bfloat16/],
    ['pagedAttention: blockSize 0', () => pa({ blockSize: 0 }), LorakitRangeError, /^pagedAttention: 'blockSize' must be >= 1, got 0/],
    ['pagedAttention: ctx 0', () => pa({ ctx: [8, 0] }), LorakitRangeError, /^pagedAttention: 'ctx'\[1\] = 0 must lie in \[1, 8\]/],
    ['pagedAttention: ctx beyond the table', () => pa({ ctx: [9, 5] }), LorakitRangeError, /^pagedAttention: 'ctx'\[0\] = 9 must lie in \[1, 8\]/],
    ['pagedAttention: seq past the table', () => pa({ seq: [0, 2] }), LorakitRangeError, /^pagedAttention: 'seq'\[1\] = 2 must lie in \[0, 2\)/],
    ['pagedAttention: negative seq', () => pa({ seq: [-1, 0] }), LorakitRangeError, /^pagedAttention: 'seq'\[0\] = -1 must lie in \[0, 2\)/],
    ['pagedAttention: block id past the pool', () => pa({ table: [0, 4, 2, 1] }), LorakitRangeError, /^pagedAttention: 'blockTable'\[0, 1\] = 4 \(read by row 0\) must lie in \[0, 4\)/],
    ['pagedAttention: negative block id', () => pa({ table: [0, 3, 2, -1], ctx: [8, 6] }), LorakitRangeError, /^pagedAttention: 'blockTable'\[1, 1\] = -1 \(read by row 1\) must lie in \[0, 4\)/],
    ['pagedAttention: disposed pool', () => pa({ kp: disposed(zeros([16, 2])) }), DisposedError, /^pagedAttention: 'kPool' .* has been disposed/],
    ['pagedAttention: no blockTable', () => ops.pagedAttention(zeros([2, 4]), zeros([16, 4]), zeros([16, 4]), { heads: 2, blockSize: 4, seq: i64([0, 0]), ctx: i64([1, 1]) } as never),
      LorakitTypeError, /^pagedAttention: 'blockTable' must be a Tensor, got undefined/],
    ['pagedAttention: blockTable 1-D', () => ops.pagedAttention(zeros([2, 4]), zeros([16, 4]), zeros([16, 4]), { heads: 2, blockSize: 4, blockTable: i64([0]), seq: i64([0, 0]), ctx: i64([1, 1]) }),
      LorakitRangeError, /^pagedAttention: 'blockTable' must be 2-D, got shape \[1\]/],
    ['pagedAttention: seq dtype', () => ops.pagedAttention(zeros([2, 4]), zeros([16, 4]), zeros([16, 4]), { heads: 2, blockSize: 4, blockTable: zeros([1, 2], { dtype: 'int64' }), seq: zeros([2]), ctx: i64([1, 1]) }),
      LorakitTypeError, /^pagedAttention: 'seq' must be int64, got float32/],
    ['pagedAttention: ctx length', () => ops.pagedAttention(zeros([2, 4]), zeros([16, 4]), zeros([16, 4]), { heads: 2, blockSize: 4, blockTable: zeros([1, 2], { dtype: 'int64' }), seq: i64([0, 0]), ctx: i64([1]) }),
      LorakitRangeError, /^pagedAttention: 'ctx' must have shape \[2\], got \[1\]/],

    ['loraSegments: overlapping segments', () => ls([seg(0, 4), seg(6, 8), seg(3, 5)]), LorakitRangeError, /^loraSegments: 'segments\[2\]' \(rows \[3, 5\)\) overlaps 'segments\[0\]' \(rows \[0, 4\)\)/],
    ['loraSegments: a segment past the rows', () => ls([seg(5, 9)]), LorakitRangeError, /^loraSegments: 'segments\[0\]\.end' must be <= 8, got 9/],
    ['loraSegments: end before start', () => ls([seg(5, 4)]), LorakitRangeError, /^loraSegments: 'segments\[0\]\.end' must be >= 5, got 4/],
    ['loraSegments: loraA width', () => ls([seg(0, 2), seg(2, 4, 2, 7)]), LorakitRangeError, /^loraSegments: 'segments\[1\]' maps 7 -> 5 features \(loraA \[2, 7\], loraB \[5, 2\]\), but 'x' has rows of 6/],
    ['loraSegments: loraB rank', () => ls([{ ...seg(0, 2, 3), loraB: zeros([5, 2]) }]), LorakitRangeError, /^loraSegments: 'segments\[0\]\.loraB' must have shape \[5, 3\], got \[5, 2\]/],
    ['loraSegments: loraA dtype', () => ls([{ ...seg(0, 2), loraA: zeros([2, 6], { dtype: 'bfloat16' }) }]), LorakitTypeError, /^loraSegments: 'segments\[0\]\.loraA' must be float32, got bfloat16/],
    ['loraSegments: y rows', () => ls([seg(0, 2)], zeros([8, 6]), zeros([7, 5])), LorakitRangeError, /^loraSegments: 'y' \[7, 5\] must have as many rows as 'x' \[8, 6\] \(8\)/],
    ['loraSegments: scale', () => ls([{ ...seg(0, 2), scale: NaN }]), LorakitTypeError, /^loraSegments: 'segments\[0\]\.scale' must be a finite number, got number NaN/],
    ['loraSegments: not an array', () => ls({ length: 0 } as never), LorakitTypeError, /^loraSegments: 'segments' must be an array/],
    ['loraSegments: disposed loraB', () => ls([{ ...seg(0, 2), loraB: disposed(zeros([5, 2])) }]), DisposedError, /^loraSegments: 'segments\[0\]\.loraB' .* has been disposed/],
  ] as [string, () => unknown, new (...a: never[]) => Error, RegExp][])('%s', (_n, call, cls, msg) => {
    let err: unknown;
    try {
      call();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(cls);
    expect((err as Error).message).toMatch(msg);
  });

  // The addon checks again for a caller that bypasses lib/ops: what TypeScript refused above must not reach a kernel.
  test('the addon refuses overlapping or out-of-range segments and short storages on its own', () => {
    const x = zeros([8, 6]), y = zeros([8, 5]), a = zeros([2, 6]), b = zeros([5, 2]);
    const call = (segments: { start: number; end: number; r: number; a: Tensor; b: Tensor }[]) =>
      native().loraSegments({ x: x.storage(), y: y.storage(), m: 8, in: 6, out: 5, ldx: 6, ldy: 5,
        segments: segments.map((s) => ({ ...s, a: s.a.storage(), b: s.b.storage(), scale: 1 })) });
    expect(() => call([{ start: 0, end: 4, r: 2, a, b }, { start: 2, end: 6, r: 2, a, b }])).toThrow(/^loraSegments: 'segments\[1\]' overlaps 'segments\[0\]'/);
    expect(() => call([{ start: 4, end: 9, r: 2, a, b }])).toThrow(/^loraSegments: 'segments\[0\]' covers rows \[4, 9\), but must have 0 <= start <= end <= m = 8/);
    expect(() => call([{ start: 0, end: 2, r: 3, a, b }])).toThrow(/^loraSegments: 'segments\[0\]\.a' holds 48 bytes, the call needs 72/);
    expect(() => native().kvWrite({ k: x.storage(), v: x.storage(), slots: i64([0]).storage(), kPool: y.storage(), vPool: y.storage(), n: 1, width: 6, poolSlots: 8, dtype: 0 }))
      .toThrow(/^kvWrite: 'kPool' holds 160 bytes, the call needs 192/);
  });

  // Sizes whose products wrap around 64 bits (to a byte count a small storage "holds") or pass 2^53 are
  // refused before a kernel runs; a crash here would take jest down with it, which fails the run too.
  test('the addon refuses sizes whose products overflow', () => {
    const N = native(), s = () => new N.Storage(64, 'cpu');
    const H = 2 ** 32, K = 2 ** 52;
    const pa = { q: s(), kPool: s(), vPool: s(), blockTable: s(), seq: s(), ctx: s(), out: s(), dtype: 0, n: 1, hq: 1, hkv: 1, d: 1, blockSize: 1, maxBlocks: 1, numSeqs: 1, poolSlots: 1, scale: 1 };
    const ls = { x: s(), y: s(), m: 1, in: 1, out: 1, ldx: 1, ldy: 1, segments: [] as never[] };
    const cases: [() => void, RegExp][] = [
      [() => N.kvWrite({ k: s(), v: s(), slots: s(), kPool: s(), vPool: s(), n: H, width: H, poolSlots: 1, dtype: 0 }), /^kvWrite: 'k' would need 4294967296 x 4294967296/],
      [() => N.kvWrite({ k: s(), v: s(), slots: s(), kPool: s(), vPool: s(), n: 1, width: 1, poolSlots: 9e15, dtype: 1 }), /^kvWrite: 'kPool' would need 9000000000000000 x 2, more than the 2\^53/],
      [() => N.pagedAttention({ ...pa, n: H, hq: H }), /^pagedAttention: 'q' would need 4294967296 x 4294967296 x 1/],
      [() => N.pagedAttention({ ...pa, poolSlots: K, d: 4 }), /^pagedAttention: 'kPool' would need 4503599627370496 x 1 x 4/],
      [() => N.pagedAttention({ ...pa, numSeqs: H, maxBlocks: H }), /^pagedAttention: 'blockTable' would need 4294967296 x 4294967296/],
      [() => N.pagedAttention({ ...pa, hkv: 2 }), /^pagedAttention: query heads \(1\) must be a positive multiple of kv heads \(2\)/],
      [() => N.pagedAttention({ ...pa, dtype: 2 }), /^pagedAttention: the pools must be float32 or bfloat16, got float16/],
      [() => N.loraSegments({ ...ls, m: H, in: H, ldx: H }), /^loraSegments: 'x' would need 4294967295 x 4294967296/],
      [() => N.loraSegments({ ...ls, ldy: 0 }), /^loraSegments: row strides must be at least the row widths/],
      [() => N.loraSegments({ ...ls, segments: [{ start: 0, end: 1, r: K, a: s(), b: s(), scale: 1 }] as never }), /^loraSegments: 'segments\[0\]\.a' would need 4503599627370496 x 1 elements of 4 bytes/],
    ];
    for (const [call, msg] of cases) expect(call).toThrow(msg);
  });
});
