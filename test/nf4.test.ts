/**
 * NF4 against bitsandbytes. The expected values come from two places that do not use lorakit: numbers
 * worked out by hand, and a plain float32 re-implementation of bitsandbytes' algorithm written below from
 * its description (csrc/kernels.cu: dQuantizeNF4, dQuantize, kQuantizeBlockwise, kDequantizeBlockwise;
 * bitsandbytes/functional.py: quantize_4bit, quantize_blockwise, create_dynamic_map). Comparisons are bit
 * for bit: -0 differs from 0, and only NaN matches NaN whatever its payload.
 */
import {
  DisposedError,
  LorakitRangeError,
  LorakitTypeError,
  NF4Tensor,
  Tensor,
  backend,
  nf4,
  randn,
  tensor,
  type DType,
} from '../lib';
import { native } from '../lib/native/binding';
import { rng } from './helpers/reference';
import { DTYPE_CODE } from '../lib/tensor/dtype';
import { cpuKernels } from './helpers/machine';

// ---- float32 helpers ------------------------------------------------------------------------------

const f = Math.fround;
const FLT_MAX = f(3.4028234663852886e38);
const scratch = new DataView(new ArrayBuffer(4));

function bitsOf(x: number): number {
  scratch.setFloat32(0, x);
  return scratch.getUint32(0);
}

function fromBits(u: number): number {
  scratch.setUint32(0, u >>> 0);
  return scratch.getFloat32(0);
}

/** The next float32 above (dir 1) or below (dir -1) a finite nonzero float32. */
function nextFloat(x: number, dir: 1 | -1): number {
  const u = bitsOf(x);
  return fromBits(x > 0 === (dir > 0) ? u + 1 : u - 1);
}

function bf16ToF32(h: number): number {
  return fromBits(h << 16);
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  return sign * (1024 + m) * 2 ** (e - 25);
}

function roundHalfEven(v: number): number {
  const r = Math.floor(v);
  const d = v - r;
  return d > 0.5 || (d === 0.5 && r % 2 === 1) ? r + 1 : r;
}

/** float32 bits -> bfloat16 bits, round to nearest even; a NaN stays NaN (quiet, sign kept). */
function bf16FromBits(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 bits -> float16 bits, round to nearest even, with subnormals and overflow to infinity. */
function f16FromBits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  if ((u & 0x7fffffff) > 0x7f800000) return sign | 0x7e00;
  const a = Math.abs(fromBits(u));
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  return sign | (((e + 15) << 10) + roundHalfEven(a / 2 ** (e - 10)) - 1024);
}

const toBf16 = (x: number): number => bf16FromBits(bitsOf(x));
const toF16 = (x: number): number => f16FromBits(bitsOf(x));

/**
 * A 16-bit output against float32 bits rounded by `round`. NaN only has to stay NaN: its sign and payload
 * are not values (bitsandbytes on a GPU returns one canonical NaN), and compilers may fold -1 * x to -x.
 */
function expectRounded(
  out: Uint16Array | Float32Array,
  f32: Uint32Array,
  round: (u: number) => number,
  widen: (h: number) => number,
  what: string,
): void {
  expect(out.length).toBe(f32.length);
  for (let i = 0; i < f32.length; i++) {
    const nan = (f32[i]! & 0x7fffffff) > 0x7f800000;
    const ok = nan ? Number.isNaN(widen(out[i]!)) : out[i] === round(f32[i]!);
    if (!ok) throw new Error(`${what}: element ${i} is 0x${out[i]!.toString(16)} for float32 0x${f32[i]!.toString(16)}`);
  }
}

function expectSameBits(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const same = (Number.isNaN(a) && Number.isNaN(e)) || Object.is(a, e);
    if (!same) throw new Error(`${what}: element ${i} is ${a}, expected ${e}`);
  }
}

// ---- the reference: bitsandbytes' algorithm in float32 ---------------------------------------------

/**
 * The float32 nearest to a plain decimal, rounded once, as a C++ or CUDA compiler rounds the literal
 * `0.1202552504837513f`. Math.fround(Number(s)) rounds twice (to float64, then float32) and can land on
 * the other neighbour; the exact comparison here uses integers scaled by 10^digits * 2^149.
 */
function float32Literal(s: string): number {
  const m = /^(-?)(\d+)\.(\d+)$/.exec(s);
  if (!m) throw new Error(`not a plain decimal: ${s}`);
  const digits = BigInt(m[2]! + m[3]!);
  if (digits === 0n) return m[1] ? -0 : 0;
  const approx = f(Math.abs(Number(s)));
  let best = approx;
  let bestErr = -1n;
  for (const c of [nextFloat(approx, -1), approx, nextFloat(approx, 1)]) {
    const u = bitsOf(c);
    const e = (u >>> 23) & 0xff;
    const mantissa = BigInt(e ? (u & 0x7fffff) | 0x800000 : u & 0x7fffff);
    const shift = BigInt(e ? e - 1 : 0); // c = mantissa * 2^(shift - 149)
    let err = digits * 2n ** 149n - mantissa * 2n ** shift * 10n ** BigInt(m[3]!.length);
    if (err < 0n) err = -err;
    if (bestErr < 0n || err < bestErr || (err === bestErr && (u & 1) === 0)) {
      best = c;
      bestErr = err;
    }
  }
  return m[1] ? -best : best;
}

/** The NF4 values of bitsandbytes (get_4bit_type('nf4'), dDequantizeNF4), index = code. */
const NF4 = Float32Array.from(
  [
    '-1.0', '-0.6961928009986877', '-0.5250730514526367', '-0.39491748809814453', '-0.28444138169288635',
    '-0.18477343022823334', '-0.09105003625154495', '0.0', '0.07958029955625534', '0.16093020141124725',
    '0.24611230194568634', '0.33791524171829224', '0.44070982933044434', '0.5626170039176941',
    '0.7229568362236023', '1.0',
  ].map(float32Literal),
);

/** dQuantizeNF4's comparison literals, as written in csrc/kernels.cu (float literals), ascending. */
const T_DECIMAL = [
  '-0.8480964004993439', '-0.6106329262256622', '-0.4599952697753906', '-0.33967943489551544',
  '-0.23460740596055984', '-0.13791173323988914', '-0.045525018125772476', '0.03979014977812767',
  '0.1202552504837513', '0.2035212516784668', '0.2920137718319893', '0.3893125355243683', '0.5016634166240692',
  '0.6427869200706482', '0.8614784181118011',
];
const T = T_DECIMAL.map(float32Literal);

/** dQuantizeNF4, node for node: a binary tree of strict '>' tests. */
function nf4Tree(x: number): number {
  if (x > T[7]!) {
    if (x > T[11]!) {
      if (x > T[13]!) return x > T[14]! ? 15 : 14;
      return x > T[12]! ? 13 : 12;
    }
    if (x > T[9]!) return x > T[10]! ? 11 : 10;
    return x > T[8]! ? 9 : 8;
  }
  if (x > T[3]!) {
    if (x > T[5]!) return x > T[6]! ? 7 : 6;
    return x > T[4]! ? 5 : 4;
  }
  if (x > T[1]!) return x > T[2]! ? 3 : 2;
  return x > T[0]! ? 1 : 0;
}

/**
 * The block maximum of kQuantizeBlockwise: it starts at -FLT_MAX and takes fmaxf(m, |x|), which ignores
 * NaN; a short (last) block is loaded with zero padding that takes part.
 */
function blockAbsmax(x: ArrayLike<number>, first: number, len: number, full: boolean): number {
  let m = full ? -FLT_MAX : 0;
  for (let i = 0; i < len; i++) {
    const a = Math.abs(x[first + i]!);
    if (a > m) m = a;
  }
  return m;
}

interface Ref {
  packed: Uint8Array;
  absmax: Float32Array;
}

/** quantize_4bit(quant_type='nf4'): scale by 1/absmax in float32, two codes per byte, high nibble first. */
function refQuantize(x: ArrayLike<number>, bs: number): Ref {
  const n = x.length;
  const blocks = Math.ceil(n / bs);
  const packed = new Uint8Array(Math.ceil(n / 2));
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const first = b * bs;
    const len = Math.min(bs, n - first);
    const m = blockAbsmax(x, first, len, len === bs);
    absmax[b] = m;
    const inv = f(1 / m);
    for (let i = 0; i < len; i += 2) {
      const hi = nf4Tree(f(x[first + i]! * inv));
      const lo = nf4Tree(f((i + 1 < len ? x[first + i + 1]! : 0) * inv));
      packed[(first + i) >> 1] = (hi << 4) | lo;
    }
  }
  return { packed, absmax };
}

function refDequantize(packed: Uint8Array, absmax: Float32Array, bs: number, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let e = 0; e < n; e++) {
    const byte = packed[e >> 1]!;
    const code = e & 1 ? byte & 15 : byte >> 4;
    out[e] = f(NF4[code]! * absmax[Math.floor(e / bs)]!);
  }
  return out;
}

/** torch.linspace in float32 (torch >= 2.0 CPU and CUDA): the second half is counted back from the end. */
function linspace32(start: number, end: number, steps: number): number[] {
  const s = f(start);
  const e = f(end);
  const step = f(f(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  return Array.from({ length: steps }, (_, k) => (k < half ? f(s + f(step * k)) : f(e - f(step * (steps - k - 1)))));
}

/** create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8). */
function dynamicMap(): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const b = linspace32(0.1, 1, 2 ** i + 1);
    const scale = f(10 ** (i - 6));
    for (let k = 0; k + 1 < b.length; k++) {
      const mean = f(f(b[k]! + b[k + 1]!) / 2);
      data.push(f(scale * mean), f(-scale * mean));
    }
  }
  data.push(0, 1);
  return Float32Array.from(data.sort((a, b) => a - b));
}

const MAP = dynamicMap();

/** dQuantize<0>: a 7-step binary search from pivot 127, then the midpoint test against the neighbour. */
function dQuantize(code: Float32Array, x: number): number {
  let pivot = 127;
  let upperPivot = 255;
  let lowerPivot = 0;
  let lower = -1;
  let upper = 1;
  let val = code[pivot]!;
  for (let i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lowerPivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot]!;
  }
  if (upperPivot === 255) upper = code[upperPivot]!;
  if (lowerPivot === 0) lower = code[lowerPivot]!;
  if (x > val) return x > f(f(upper + val) * 0.5) ? upperPivot : pivot;
  return x < f(f(lower + val) * 0.5) ? lowerPivot : pivot;
}

interface RefNested {
  codes: Uint8Array;
  scales: Float32Array;
  offset: number;
}

/**
 * compress_statistics: offset = absmax.mean() (torch's CUDA mean: the float32 sum times float32(1/n); the
 * sum here is exact), then quantize_blockwise(absmax - offset, blocksize=256) with the dynamic map.
 */
function refDoubleQuant(absmax: Float32Array): RefNested {
  const n = absmax.length;
  let sum = 0;
  for (const a of absmax) sum += a;
  const offset = f(f(sum) * f(1 / f(n)));
  const blocks = Math.ceil(n / 256);
  const codes = new Uint8Array(n);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const first = b * 256;
    const len = Math.min(256, n - first);
    const d = Array.from({ length: len }, (_, i) => f(absmax[first + i]! - offset));
    const scale = blockAbsmax(d, 0, len, len === 256);
    scales[b] = scale;
    const inv = f(1 / scale);
    for (let i = 0; i < len; i++) codes[first + i] = dQuantize(MAP, f(d[i]! * inv));
  }
  return { codes, scales, offset };
}

/** dequantize_blockwise(code * scale) then `absmax += offset`: a float32 multiply, then an add. */
function refAbsmaxDecode(r: RefNested): Float32Array {
  return Float32Array.from(r.codes, (c, i) => f(f(MAP[c]! * r.scales[i >> 8]!) + r.offset));
}

// ---- lorakit side ---------------------------------------------------------------------------------

function asFloats(t: Tensor): Float32Array {
  const d = t.data();
  if (d instanceof Float32Array) return d;
  if (d instanceof Uint16Array) return Float32Array.from(d, t.dtype === 'bfloat16' ? bf16ToF32 : f16ToF32);
  throw new Error(`unexpected dtype ${t.dtype}`);
}

/** The stored elements: float32 values, or the raw bits of a 16-bit float. */
function numbersOf(t: Tensor): Float32Array | Uint16Array {
  const d = t.data();
  if (d instanceof Float32Array || d instanceof Uint16Array) return d;
  throw new Error(`unexpected dtype ${t.dtype}`);
}

function bytesOf(t: Tensor | undefined): Uint8Array {
  const d = t?.data();
  if (!(d instanceof Uint8Array)) throw new Error('expected a uint8 tensor');
  return d;
}

function floatsOf(t: Tensor | undefined): Float32Array {
  const d = t?.data();
  if (!(d instanceof Float32Array)) throw new Error('expected a float32 tensor');
  return d;
}

function dequantFloats(q: NF4Tensor, dtype?: DType): Float32Array {
  const t = nf4.dequantize(q, dtype ? { dtype } : undefined);
  try {
    return asFloats(t);
  } finally {
    t.dispose();
  }
}

/** Quantizes `t` both ways and checks every stored number and the dequantized values bit for bit. */
/**
 * The quantization kernels called directly, past nf4.quantize's refusal of NaN and infinities (issue
 * #11): what the kernels do with them is still bitsandbytes', bit for bit, and the GPU kernels are held
 * to the CPU's on such blocks.
 */
function kernelQuantize(t: Tensor, { blockSize, doubleQuant = false }: { blockSize: number; doubleQuant?: boolean }): NF4Tensor {
  const n = t.numel;
  const blocks = Math.ceil(n / blockSize);
  const packed = Tensor.empty([Math.ceil(n / 2)], 'uint8');
  const absmax = Tensor.empty([blocks], 'float32');
  native().nf4Quantize({ src: t.storage(), dtype: DTYPE_CODE[t.dtype], n, blockSize, packed: packed.storage(), absmax: absmax.storage() });
  if (!doubleQuant) return new NF4Tensor({ packed, absmax, blockSize, shape: t.shape, dtype: t.dtype });
  const absmaxCodes = Tensor.empty([blocks], 'uint8');
  const absmaxScales = Tensor.empty([Math.ceil(blocks / 256)], 'float32');
  const absmaxOffset = native().absmaxQuantize({ absmax: absmax.storage(), n: blocks, codes: absmaxCodes.storage(), scales: absmaxScales.storage() });
  absmax.dispose();
  return new NF4Tensor({ packed, absmaxCodes, absmaxScales, absmaxOffset, blockSize, shape: t.shape, dtype: t.dtype });
}

function checkAgainstReference(
  t: Tensor,
  blockSize: number,
  doubleQuant: boolean,
  quantize: (t: Tensor, options: { blockSize: number; doubleQuant: boolean }) => NF4Tensor = nf4.quantize,
): void {
  const x = asFloats(t);
  const ref = refQuantize(x, blockSize);
  const q = quantize(t, { blockSize, doubleQuant });
  try {
    const what = `n=${x.length} ${t.dtype} blockSize=${blockSize}${doubleQuant ? ' doubleQuant' : ''}`;
    expect(q.shape).toEqual(t.shape);
    expect(q.dtype).toBe(t.dtype);
    expectSameBits(bytesOf(q.packed), ref.packed, `${what} packed`);
    let absmax = ref.absmax;
    if (doubleQuant) {
      expect(q.absmax).toBeUndefined();
      const nested = refDoubleQuant(ref.absmax);
      expect(q.absmaxOffset).toBe(nested.offset);
      expectSameBits(bytesOf(q.absmaxCodes), nested.codes, `${what} absmaxCodes`);
      expectSameBits(floatsOf(q.absmaxScales), nested.scales, `${what} absmaxScales`);
      absmax = refAbsmaxDecode(nested);
      const decoded = nf4.absmaxOf(q);
      expectSameBits(floatsOf(decoded), absmax, `${what} decoded absmax`);
      decoded.dispose();
    } else {
      expectSameBits(floatsOf(q.absmax), ref.absmax, `${what} absmax`);
    }
    const deq = refDequantize(ref.packed, absmax, blockSize, x.length);
    expectSameBits(dequantFloats(q, 'float32'), deq, `${what} dequantized`);
    const out = nf4.dequantize(q);
    const stored = t.dtype === 'float32' ? deq : Array.from(deq, t.dtype === 'bfloat16' ? toBf16 : toF16);
    expectSameBits(numbersOf(out), stored, `${what} dequantized to ${t.dtype}`);
    out.dispose();
  } finally {
    q.dispose();
  }
}

function randomNormal(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => f(Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r())));
}

/** Random finite 16-bit float patterns (subnormals included for float16). */
function random16(n: number, dtype: 'bfloat16' | 'float16', seed: number): Uint16Array {
  const r = rng(seed);
  return Uint16Array.from({ length: n }, () => {
    const sign = r() < 0.5 ? 0x8000 : 0;
    if (dtype === 'float16') return sign | (Math.floor(r() * 31) << 10) | Math.floor(r() * 1024);
    // bfloat16: exponents near 1 (0x3f80) with some spread, like weights.
    return sign | ((0x3c00 + Math.floor(r() * 0x600)) & 0x7f80) | Math.floor(r() * 128);
  });
}

const BLOCK_SIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096];

// ---- tests ----------------------------------------------------------------------------------------

describe('nf4: constants against the bitsandbytes source', () => {
  test('the dequantized table is the 16 NF4 values of bitsandbytes, in code order', () => {
    // Bytes 0x01 0x23 ... 0xef hold the codes 0..15 in order; absmax 1 leaves the table unscaled.
    const packed = tensor(Uint8Array.from([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, ...new Array<number>(8).fill(0x77)]));
    const q = new NF4Tensor({ packed, absmax: tensor([1]), blockSize: 32, shape: [32], dtype: 'float32' });
    const out = dequantFloats(q);
    expectSameBits(out.subarray(0, 16), NF4, 'table');
    expect(out[0]).toBe(-1);
    expect(out[7]).toBe(0);
    expect(out[15]).toBe(1);
    q.dispose();
  });

  test("dQuantizeNF4's tree equals 'count of thresholds strictly below x' on every threshold and its neighbours", () => {
    const count = (x: number): number => T.filter((t) => x > t).length;
    const probes = [NaN, -Infinity, Infinity, -1, 1, 0, -0, ...T, ...T.map((t) => nextFloat(t, 1)), ...T.map((t) => nextFloat(t, -1))];
    for (const x of probes) expect([x, nf4Tree(x)]).toEqual([x, Number.isNaN(x) ? 0 : count(x)]);
    for (let c = 0; c < 16; c++) expect(nf4Tree(NF4[c]!)).toBe(c);
  });

  test('four thresholds are float64 midpoints that a double rounding would move by one float32 step', () => {
    // Each literal is the float64 midpoint of two NF4 values. For j = 0, 8, 12 and 14 that midpoint lies
    // exactly halfway between two float32 values, and its 16-17 digit decimal a hair to one side: the
    // compiler, rounding the decimal once, takes that side; rounding through float64 meets the exact tie
    // and takes the even neighbour instead.
    const moved = T_DECIMAL.flatMap((s, j) => (float32Literal(s) === f(Number(s)) ? [] : [j]));
    expect(moved).toEqual([0, 8, 12, 14]);
    for (let j = 0; j < 15; j++) expect(Number(T_DECIMAL[j]!)).toBe((NF4[j]! + NF4[j + 1]!) / 2);
  });

  test('the thresholds sit between consecutive NF4 values, at their midpoints to float32 precision', () => {
    for (let j = 0; j < 15; j++) {
      expect(T[j]!).toBeGreaterThan(NF4[j]!);
      expect(T[j]!).toBeLessThan(NF4[j + 1]!);
      expect(Math.abs(T[j]! - (NF4[j]! + NF4[j + 1]!) / 2)).toBeLessThan(1e-7);
    }
  });

  test("nf4.NF4_CODE, read from the addon's code book, is bitsandbytes' table bit for bit, and frozen", () => {
    expect(nf4.NF4_CODE).toEqual(Array.from(NF4));
    expect(Array.isArray(nf4.NF4_CODE)).toBe(true);
    expect(Object.isFrozen(nf4.NF4_CODE)).toBe(true);
    expect(() => {
      (nf4.NF4_CODE as number[])[0] = 0;
    }).toThrow(TypeError);
    expect(nf4.NF4_CODE[0]).toBe(-1);
  });

  test('nf4.absmaxCodeBook() is the dynamic map, bit for bit', () => {
    expect(Array.from(nf4.absmaxCodeBook())).toEqual(Array.from(MAP));
  });

  test('the dynamic map: 256 sorted float32 values, 0 and 1 in it, 127 negatives mirrored by positives', () => {
    expect(MAP.length).toBe(256);
    for (let i = 1; i < 256; i++) expect(MAP[i]!).toBeGreaterThan(MAP[i - 1]!);
    expect(MAP[255]).toBe(1);
    expect(MAP.indexOf(0)).toBe(127);
    const negatives = Array.from(MAP.filter((v) => v < 0));
    expect(negatives.length).toBe(127);
    for (const v of negatives) expect(MAP.includes(-v)).toBe(true);
    // The smallest magnitude is 1e-6 times the mean of linspace(0.1, 1, 2) = [0.1, 1].
    expect(MAP[128]).toBe(f(f(1e-6) * f(f(f(0.1) + 1) / 2)));
    // The largest below 1 is the mean of the last two of linspace(0.1, 1, 65), counted from the end.
    const step = f(f(1 - f(0.1)) / 64);
    expect(MAP[254]).toBe(f(f(f(1 - step) + 1) / 2));
    expect(MAP[0]).toBe(-MAP[254]!);
  });

  test("linspace's halfway rule matters: counting every point from the start builds a different map", () => {
    const naive = (n: number): number[] => {
      const step = f(f(1 - f(0.1)) / (n - 1));
      return Array.from({ length: n }, (_, k) => f(f(0.1) + f(step * k)));
    };
    const diffs = [17, 33, 65].map((n) => linspace32(0.1, 1, n).filter((v, k) => v !== naive(n)[k]).length);
    expect(diffs.some((d) => d > 0)).toBe(true);
  });

  test("lorakit's dynamic map equals the reference bit for bit (read back through absmax decoding)", () => {
    // codes 0..255 with scale 1 and offset 0 decode to map[code] * 1 + 0 = map[code] exactly.
    const n = 256 * 32;
    const q = new NF4Tensor({
      packed: tensor(new Uint8Array(n / 2)),
      absmaxCodes: tensor(Uint8Array.from({ length: 256 }, (_, i) => i)),
      absmaxScales: tensor([1]),
      absmaxOffset: 0,
      blockSize: 32,
      shape: [n],
      dtype: 'float32',
    });
    const decoded = nf4.absmaxOf(q);
    expectSameBits(floatsOf(decoded), MAP, 'dynamic map');
    decoded.dispose();
    q.dispose();
  });

  test('absmax decoding is map[code] * scale + offset in float32, per block of 256', () => {
    const r = rng(7);
    const n = 700;
    const codes = Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
    const scales = Float32Array.from([0.0371, 1.5, 3e-5], f);
    const offset = f(0.8125371);
    const q = new NF4Tensor({
      packed: tensor(new Uint8Array(n * 16)),
      absmaxCodes: tensor(codes),
      absmaxScales: tensor(scales),
      absmaxOffset: offset,
      blockSize: 32,
      shape: [n * 32],
      dtype: 'float32',
    });
    const decoded = nf4.absmaxOf(q);
    expectSameBits(floatsOf(decoded), refAbsmaxDecode({ codes, scales, offset }), 'decoded absmax');
    decoded.dispose();
    q.dispose();
  });
});

describe('nf4: hand-worked values', () => {
  // 69 elements. Block 0 (absmax 2; scaling by 1/2 is exact, so each scaled value is known exactly):
  //   2 -> 1 -> 15;  -2 -> -1 -> 0;  0 -> 7;  1 -> 0.5 -> 12 (0.3893 < 0.5 <= 0.5017);
  //   -1 -> -0.5 -> 2 (-0.6106 < -0.5 <= -0.4600);  2*T7 -> exactly T7: not > T7, so 7 (tie goes low);
  //   2*T6 -> exactly T6 (negative): 6;  2*nextUp(T7) -> 8;  0.25 -> 0.125 -> 9 (0.1203 < 0.125 <= 0.2035);
  //   then 23 zeros -> 7.  Bytes: F0 7C 27 68 97, then 77 x 11.
  // Block 1: 32 zeros. absmax 0, 1/0 = inf, 0 * inf = NaN, which fails every '>' test: code 0, bytes 00,
  //   and each dequantizes to NF4[0] * 0 = -1 * 0 = -0.
  // Block 2: 5 elements (odd tail), absmax 0.5: 0.5 -> 1 -> 15; -0.125 -> -0.25 -> 4 (-0.3397 < -0.25
  //   <= -0.2346); f(0.2) -> 0.4 -> 12; f(-0.3) -> -0.6 -> 2; 0.0625 -> 0.125 -> 9; the missing sixth
  //   element is a zero of padding -> 7.  Bytes: F4 C2 97.
  const t7 = T[7]!;
  const t6 = T[6]!;
  const block0 = [2, -2, 0, 1, -1, 2 * t7, 2 * t6, 2 * nextFloat(t7, 1), 0.25, ...new Array<number>(23).fill(0)];
  const block2 = [0.5, -0.125, f(0.2), f(-0.3), 0.0625];
  const x = [...block0, ...new Array<number>(32).fill(0), ...block2];

  test('blockSize 32: packed bytes, absmax and dequantized values', () => {
    const t = tensor(x);
    const q = nf4.quantize(t, { blockSize: 32 });
    expect(q.numel).toBe(69);
    expect(q.packed.shape).toEqual([35]);
    expect(Array.from(floatsOf(q.absmax))).toEqual([2, 0, 0.5]);
    expect(Array.from(bytesOf(q.packed))).toEqual([
      0xf0, 0x7c, 0x27, 0x68, 0x97, ...new Array<number>(11).fill(0x77),
      ...new Array<number>(16).fill(0x00),
      0xf4, 0xc2, 0x97,
    ]);
    const expected = [
      2, -2, 0, NF4[12]! * 2, NF4[2]! * 2, 0, NF4[6]! * 2, NF4[8]! * 2, NF4[9]! * 2, ...new Array<number>(23).fill(0),
      ...new Array<number>(32).fill(-0),
      0.5, NF4[4]! * 0.5, NF4[12]! * 0.5, NF4[2]! * 0.5, NF4[9]! * 0.5,
    ];
    expectSameBits(dequantFloats(q), expected, 'dequantized');
    q.dispose();
    t.dispose();
  });

  test('blockSize 64 regroups the same elements: the zeros join block 0 and quantize to 7', () => {
    const t = tensor(x);
    const q = nf4.quantize(t, { blockSize: 64 });
    expect(Array.from(floatsOf(q.absmax))).toEqual([2, 0.5]);
    expect(Array.from(bytesOf(q.packed))).toEqual([
      0xf0, 0x7c, 0x27, 0x68, 0x97, ...new Array<number>(27).fill(0x77),
      0xf4, 0xc2, 0x97,
    ]);
    q.dispose();
    t.dispose();
  });

  test.each(BLOCK_SIZES)('blockSize %i: NF4 values times powers of two come back exactly', (bs) => {
    // Element i is NF4[i % 16] * 2^block: each block holds -1 and 1 times its scale, so absmax = 2^block,
    // x / absmax is exactly NF4[i % 16] whose code is i % 16. Bytes repeat 01 23 45 67 89 AB CD EF; the
    // last block has three elements (codes 0 1 2, then the pad code 7) with absmax 4.
    const n = 2 * bs + 3;
    const data = Float32Array.from({ length: n }, (_, i) => NF4[i % 16]! * 2 ** Math.floor(i / bs));
    const t = tensor(data);
    const q = nf4.quantize(t, { blockSize: bs });
    expect(Array.from(floatsOf(q.absmax))).toEqual([1, 2, 4]);
    const cycle = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const full = Array.from({ length: bs }, (_, j) => cycle[j % 8]!);
    expect(Array.from(bytesOf(q.packed))).toEqual([...full, 0x01, 0x27]);
    expectSameBits(dequantFloats(q), data, 'round trip');
    q.dispose();
    t.dispose();
  });

  test('every threshold is a tie that goes to the lower code; one float above goes to the upper', () => {
    // absmax 1, so x * (1/absmax) = x. Codes by hand: T[j] -> j, nextUp(T[j]) -> j + 1, nextDown(T[j]) -> j.
    const values = [1, ...T, ...T.map((t) => nextFloat(t, 1)), ...T.map((t) => nextFloat(t, -1)), 0, -0];
    const expected = [15, ...T.map((_, j) => j), ...T.map((_, j) => j + 1), ...T.map((_, j) => j), 7, 7];
    const data = [...values, ...new Array<number>(64 - values.length).fill(0)];
    const t = tensor(data);
    const q = nf4.quantize(t, { blockSize: 64 });
    const bytes = bytesOf(q.packed);
    const codes = Array.from({ length: values.length }, (_, i) => (i & 1 ? bytes[i >> 1]! & 15 : bytes[i >> 1]! >> 4));
    expect(codes).toEqual(expected);
    expect(values.map((v) => nf4Tree(v))).toEqual(expected);
    q.dispose();
    t.dispose();
  });

  test('a full block of NaN keeps absmax -FLT_MAX (dequantizing to +FLT_MAX); a short one gets 0', () => {
    // kQuantizeBlockwise seeds the maximum with -FLT_MAX and fmaxf skips NaN; a short block's zero
    // padding joins the maximum. NaN * anything is NaN: code 0 throughout.
    const data = [...new Array<number>(32).fill(NaN), NaN, NaN, NaN];
    const t = tensor(data);
    expect(() => nf4.quantize(t, { blockSize: 32 })).toThrow(/holds NaN or an infinity at element 0/);
    const q = kernelQuantize(t, { blockSize: 32 });
    expectSameBits(floatsOf(q.absmax), [-FLT_MAX, 0], 'absmax');
    expect(Array.from(bytesOf(q.packed))).toEqual(new Array<number>(18).fill(0));
    expectSameBits(dequantFloats(q), [...new Array<number>(32).fill(FLT_MAX), -0, -0, -0], 'dequantized');
    q.dispose();
    t.dispose();
  });

  test('NaN and infinities inside a block: NaN takes code 0, +-inf sets absmax inf and scales others to 0', () => {
    // absmax inf, 1/inf = 0: finite x -> x * 0 = +-0 -> code 7; +-inf * 0 = NaN -> 0; NaN -> 0.
    const data = [3, -Infinity, NaN, -5, Infinity, 0.5, ...new Array<number>(26).fill(1)];
    const t = tensor(data);
    expect(() => nf4.quantize(t, { blockSize: 32 })).toThrow(/holds NaN or an infinity at element 1 /);
    const q = kernelQuantize(t, { blockSize: 32 });
    expectSameBits(floatsOf(q.absmax), [Infinity], 'absmax');
    expect(Array.from(bytesOf(q.packed).subarray(0, 3))).toEqual([0x70, 0x07, 0x07]);
    // Code 7 dequantizes to 0 * inf = NaN, code 0 to -1 * inf.
    const nan = new Array<number>(26).fill(NaN);
    expectSameBits(dequantFloats(q), [NaN, -Infinity, -Infinity, NaN, -Infinity, NaN, ...nan], 'dequantized');
    q.dispose();
    t.dispose();
  });

  test('double quantization of infinite absmax: offset inf, NaN differences, scale -FLT_MAX for a full block', () => {
    // 257 blocks, each with an infinity: absmax inf everywhere, offset = inf * (1/257) = inf, and
    // absmax - offset = NaN throughout. The first 256 NaN form a full block (scale -FLT_MAX), the last
    // one a short block (scale 0); dQuantize sends NaN down to code 0.
    const data = new Float32Array(257 * 32);
    for (let b = 0; b < 257; b++) data[b * 32 + (b % 32)] = b % 2 ? Infinity : -Infinity;
    const t = tensor(data);
    const q = kernelQuantize(t, { blockSize: 32, doubleQuant: true });
    expect(q.absmaxOffset).toBe(Infinity);
    expectSameBits(floatsOf(q.absmaxScales), [-FLT_MAX, 0], 'absmaxScales');
    expect(Array.from(bytesOf(q.absmaxCodes))).toEqual(new Array<number>(257).fill(0));
    q.dispose();
    checkAgainstReference(t, 32, true, kernelQuantize);
    t.dispose();
  });

  test('an empty tensor quantizes to empty parts', () => {
    const t = tensor(new Float32Array(0));
    const q = nf4.quantize(t, { doubleQuant: true });
    expect(q.packed.shape).toEqual([0]);
    expect(q.absmaxCodes!.shape).toEqual([0]);
    const out = nf4.dequantize(q);
    expect(out.shape).toEqual([0]);
    out.dispose();
    q.dispose();
    t.dispose();
  });
});

describe('nf4: bit-for-bit against the re-implementation', () => {
  const SIZES = [1, 2, 3, 31, 33, 63, 65, 127, 1001, 4097, 12345];

  test.each([false, true])('float32 randn, odd sizes x every block size (doubleQuant %s)', (doubleQuant) => {
    for (const n of SIZES) {
      const t = randn([n], { seed: n });
      for (const bs of BLOCK_SIZES) checkAgainstReference(t, bs, doubleQuant);
      t.dispose();
    }
  });

  test.each([
    [300001, 32],
    [300001, 64],
    [1 << 20, 64],
  ])('float32, n = %i, blockSize %i, several blocks of 256 absmax (doubleQuant)', (n, bs) => {
    const t = tensor(randomNormal(n, n + bs), [n]);
    checkAgainstReference(t, bs, true);
    checkAgainstReference(t, bs, false);
    t.dispose();
  });

  test.each([
    ['bfloat16', 64],
    ['bfloat16', 128],
    ['float16', 64],
    ['float16', 256],
  ] as const)('%s inputs (raw bit patterns), blockSize %i, with and without doubleQuant', (dtype, bs) => {
    const bits = random16(20001, dtype, bs);
    const t = tensor(bits, [3, 6667], { dtype });
    checkAgainstReference(t, bs, false);
    checkAgainstReference(t, bs, true);
    t.dispose();
  });

  test('ties at every NF4 threshold in blocks of every scale', () => {
    // Each block: its absmax (a power of two, so scaling is exact) then scale * (threshold, neighbours,
    // table values, zeros), so many elements land exactly on a decision boundary.
    const probes = [...T, ...T.map((t) => nextFloat(t, 1)), ...T.map((t) => nextFloat(t, -1)), ...NF4, -0];
    const data: number[] = [];
    for (let b = 0; b < 40; b++) {
      const scale = 2 ** (b - 20);
      data.push(b % 2 ? -scale : scale, ...probes.map((p) => p * scale));
      while (data.length % 64) data.push(0);
    }
    const t = tensor(data);
    checkAgainstReference(t, 64, false);
    checkAgainstReference(t, 64, true);
    t.dispose();
  });

  test('extreme magnitudes: subnormal and near-FLT_MAX blocks', () => {
    const r = rng(11);
    const data = Float32Array.from({ length: 32 * 6 }, (_, i) => {
      const scale = [1e-45, 3e-42, 1e-39, 1e38, 3.4e38, 1][Math.floor(i / 32)]!;
      return f((r() * 2 - 1) * scale);
    });
    const t = tensor(data);
    checkAgainstReference(t, 32, false);
    checkAgainstReference(t, 32, true);
    t.dispose();
  });

  test('double quantization: exact midpoints of the dynamic map go to the even code, neighbours to the nearer', () => {
    // 256 blocks whose absmax values sum to exactly 256: offset = 256 * (1/256) = 1, scale = max|a - 1| = 1
    // (one block has absmax 2), so the 8-bit code is chosen for x = a - 1 exactly. A target x = v uses
    // a = 1 + v (exact for v in [-1, -0.5]); a block with a = 1 + h, h = |v| rounded down to 2^-23,
    // balances it, and one block collects the remainders |v| - h (multiples of 2^-24).
    const mids: { m: number; k: number }[] = [];
    for (let k = 0; k + 1 < 256; k++) {
      const m = f(f(MAP[k]! + MAP[k + 1]!) * 0.5);
      if (m >= -1 && m <= -0.5) mids.push({ m, k });
    }
    expect(mids.length).toBeGreaterThan(20);
    const targets: { v: number; code: number }[] = [];
    for (const { m, k } of mids) {
      targets.push({ v: m, code: k % 2 === 0 ? k : k + 1 });
      targets.push({ v: f(m + 2 ** -24), code: k + 1 });
      targets.push({ v: f(m - 2 ** -24), code: k });
    }
    expect(targets.length).toBeLessThanOrEqual(126);
    const absmax: number[] = [2];
    let remainder = 0;
    for (const { v } of targets) {
      const h = Math.floor(-v * 2 ** 23) / 2 ** 23;
      absmax.push(1 + v, 1 + h);
      remainder += -v - h;
    }
    absmax.push(remainder);
    while (absmax.length < 256) absmax.push(1);
    expect(absmax.reduce((a, b) => a + b, 0)).toBe(256);
    for (const a of absmax) expect(f(a)).toBe(a);

    const data = new Float32Array(256 * 32);
    absmax.forEach((a, b) => (data[b * 32] = a));
    const t = tensor(data);
    const q = nf4.quantize(t, { blockSize: 32, doubleQuant: true });
    expect(q.absmaxOffset).toBe(1);
    expect(Array.from(floatsOf(q.absmaxScales))).toEqual([1]);
    const codes = bytesOf(q.absmaxCodes);
    expect(targets.map((_, i) => codes[1 + 2 * i])).toEqual(targets.map((x) => x.code));
    expect(targets.map(({ v }) => dQuantize(MAP, v))).toEqual(targets.map((x) => x.code));
    q.dispose();
    checkAgainstReference(t, 32, true, kernelQuantize);
    t.dispose();
  });
});

/** The dequantization kernels this CPU can run; the decoder follows the GEMM kernel that is pinned. */
const KERNELS = cpuKernels('nf4.test');

afterEach(() => {
  native().setGemmKernel('auto');
});

describe('nf4: dequantization kernels', () => {
  test.each(KERNELS)('%s: float32, bfloat16 and float16 outputs match the reference', (kernel) => {
    expect(native().setGemmKernel(kernel)).toBe(true);
    for (const [n, bs] of [
      [1, 32],
      [31, 32],
      [32 * 7 + 17, 32],
      [64 * 9 + 1, 64],
      [4096 * 3 - 5, 4096],
      [100003, 128],
    ] as const) {
      const t = tensor(randomNormal(n, n), [n]);
      const x = asFloats(t);
      const ref = refQuantize(x, bs);
      for (const doubleQuant of [false, true]) {
        const q = nf4.quantize(t, { blockSize: bs, doubleQuant });
        const absmax = doubleQuant ? refAbsmaxDecode(refDoubleQuant(ref.absmax)) : ref.absmax;
        const deq = refDequantize(ref.packed, absmax, bs, n);
        const what = `${kernel} n=${n} bs=${bs}${doubleQuant ? ' dq' : ''}`;
        expectSameBits(dequantFloats(q, 'float32'), deq, `${what} float32`);
        const bf = nf4.dequantize(q, { dtype: 'bfloat16' });
        expectSameBits(numbersOf(bf), Array.from(deq, toBf16), `${what} bfloat16`);
        bf.dispose();
        const hf = nf4.dequantize(q, { dtype: 'float16' });
        expectSameBits(numbersOf(hf), Array.from(deq, toF16), `${what} float16`);
        hf.dispose();
        q.dispose();
      }
      t.dispose();
    }
  });

  test.each(KERNELS)('%s: block sizes below one SIMD step (2 to 16, through the addon)', (kernel) => {
    expect(native().setGemmKernel(kernel)).toBe(true);
    const r = rng(3);
    for (const bs of [2, 4, 8, 16]) {
      const n = bs * 5 + 1;
      const blocks = Math.ceil(n / bs);
      const packed = tensor(Uint8Array.from({ length: Math.ceil(n / 2) }, () => Math.floor(r() * 256)));
      const absmax = tensor(Float32Array.from({ length: blocks }, () => f(r() * 3)));
      const ref = refDequantize(bytesOf(packed), floatsOf(absmax), bs, n);
      for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
        const out = Tensor.empty([n], dtype);
        const args = { packed: packed.storage(), absmax: absmax.storage(), blockSize: bs, n };
        native().nf4Dequantize({ ...args, dst: out.storage(), dtype: DTYPE_CODE[dtype] });
        const expected = dtype === 'float32' ? ref : Array.from(ref, dtype === 'bfloat16' ? toBf16 : toF16);
        expectSameBits(numbersOf(out), expected, `${kernel} bs=${bs} ${dtype}`);
        out.dispose();
      }
      packed.dispose();
      absmax.dispose();
    }
  });
});

describe('nf4: dequantize dtype', () => {
  test.each(KERNELS)('%s: bfloat16 and float16 outputs are the float32 output rounded to nearest even', (kernel) => {
    expect(native().setGemmKernel(kernel)).toBe(true);
    // Blocks whose absmax makes 1 * absmax a tie: 1 + 2^-8 is 0x3f808000, a bfloat16 tie that rounds to
    // even 0x3f80; 1 + 3 * 2^-8 (0x3f818000) rounds up to even 0x3f82. For float16, 1 + 2^-11 is a tie
    // (-> 0x3c00) and 1 + 3 * 2^-11 rounds up (-> 0x3c02). Then a block with an infinite absmax (0 * inf
    // is NaN, -1 * inf is -inf), a full block of NaN (absmax -FLT_MAX: +-FLT_MAX, which rounds to
    // infinity in both), and random data.
    const ties = [1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11];
    const data: number[] = [];
    for (const a of ties) data.push(a, ...new Array<number>(31).fill(0));
    data.push(Infinity, -3, 0.5, ...new Array<number>(29).fill(1));
    data.push(...new Array<number>(32).fill(NaN));
    data.push(...randomNormal(4099, 5));
    const t = tensor(data);
    const q = kernelQuantize(t, { blockSize: 32 });
    const f32 = nf4.dequantize(q, { dtype: 'float32' });
    const bits = new Uint32Array(floatsOf(f32).buffer);
    const bf = nf4.dequantize(q, { dtype: 'bfloat16' });
    const bfBits = numbersOf(bf);
    expect(bf.dtype).toBe('bfloat16');
    expectRounded(bfBits, bits, bf16FromBits, bf16ToF32, 'bfloat16');
    expect([bfBits[0], bfBits[32]]).toEqual([0x3f80, 0x3f82]);
    const hf = nf4.dequantize(q, { dtype: 'float16' });
    const hfBits = numbersOf(hf);
    expectRounded(hfBits, bits, f16FromBits, f16ToF32, 'float16');
    expect([hfBits[64], hfBits[96]]).toEqual([0x3c00, 0x3c02]);
    expect(Number.isNaN(bf16ToF32(bfBits[129]!))).toBe(true);
    expect(Number.isNaN(f16ToF32(hfBits[129]!))).toBe(true);
    expect([bfBits[128], hfBits[128], bfBits[160], hfBits[160]]).toEqual([0xff80, 0xfc00, 0x7f80, 0x7c00]);
    for (const x of [f32, bf, hf, q, t]) x.dispose();
  });

  test.each(KERNELS)('%s: a NaN absmax with a payload stays NaN in bfloat16 and float16', (kernel) => {
    expect(native().setGemmKernel(kernel)).toBe(true);
    // Rounding the bits of 0x7fffffff as if it were a number would carry into 0x8000 (-0): every output
    // of these blocks must come out NaN.
    const absmax = tensor(new Float32Array(Uint32Array.from([0x7fffffff, 0xffbfffff, 0x7f800001]).buffer));
    const packed = tensor(Uint8Array.from({ length: 48 }, (_, i) => (i * 37) & 255));
    const q = new NF4Tensor({ packed, absmax, blockSize: 32, shape: [96], dtype: 'float32' });
    for (const [dtype, widen] of [
      ['bfloat16', bf16ToF32],
      ['float16', f16ToF32],
    ] as const) {
      const out = nf4.dequantize(q, { dtype });
      expect(Array.from(numbersOf(out)).filter((h) => !Number.isNaN(widen(h)))).toEqual([]);
      out.dispose();
    }
    expect(Array.from(dequantFloats(q, 'float32')).filter((v) => !Number.isNaN(v))).toEqual([]);
    q.dispose();
  });

  test('the default output dtype is the input dtype', () => {
    const bits = random16(300, 'bfloat16', 9);
    const t = tensor(bits, [300], { dtype: 'bfloat16' });
    const q = nf4.quantize(t);
    expect(q.dtype).toBe('bfloat16');
    const out = nf4.dequantize(q);
    expect(out.dtype).toBe('bfloat16');
    expectSameBits(numbersOf(out), Array.from(dequantFloats(q, 'float32'), toBf16), 'bfloat16');
    for (const x of [out, q, t]) x.dispose();
  });
});

describe('nf4: round-trip error', () => {
  // Every value lies within half a gap of its code: |x - dequant(x)| <= (largest gap / 2) * absmax.
  let maxGap = 0;
  for (let c = 0; c < 15; c++) maxGap = Math.max(maxGap, NF4[c + 1]! - NF4[c]!);
  const slack = 4 * 2 ** -24;

  test.each(BLOCK_SIZES)('blockSize %i: within half the largest NF4 gap times the block absmax', (bs) => {
    const n = 50001;
    const x = randomNormal(n, bs);
    for (let i = 0; i < n; i += 97) x[i] = f(x[i]! * 40);
    const t = tensor(x);
    const q = nf4.quantize(t, { blockSize: bs });
    const absmax = floatsOf(q.absmax);
    const y = dequantFloats(q);
    // The worst error as a fraction of its block's absmax: at most half the gap, and not far below it.
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!) / absmax[Math.floor(i / bs)]!);
    expect(maxGap).toBeCloseTo(0.3038071990013123, 12);
    expect(worst).toBeLessThanOrEqual(maxGap / 2 + slack);
    expect(worst).toBeGreaterThan(0.05);
    q.dispose();
    t.dispose();
  });

  test('doubleQuant: within half the NF4 gap of the decoded absmax plus the absmax error', () => {
    const n = 1 << 18;
    const x = randomNormal(n, 77);
    const t = tensor(x);
    const plain = nf4.quantize(t, { blockSize: 64 });
    const q = nf4.quantize(t, { blockSize: 64, doubleQuant: true });
    const exact = floatsOf(plain.absmax);
    const decodedT = nf4.absmaxOf(q);
    const decoded = floatsOf(decodedT);
    // An 8-bit code is off by at most half a gap of the map, or, below its lowest value (about -0.993),
    // by the distance to -1.
    let codeErr = 1 + MAP[0]!;
    for (let k = 0; k < 255; k++) codeErr = Math.max(codeErr, (MAP[k + 1]! - MAP[k]!) / 2);
    const scales = floatsOf(q.absmaxScales);
    // Each error over its bound; the largest must not exceed 1.
    let absmaxWorst = 0;
    for (let b = 0; b < exact.length; b++) {
      const bound = (codeErr + slack) * scales[b >> 8]! + slack * exact[b]!;
      absmaxWorst = Math.max(absmaxWorst, Math.abs(decoded[b]! - exact[b]!) / bound);
    }
    expect(absmaxWorst).toBeLessThanOrEqual(1);
    const y = dequantFloats(q);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const b = i >> 6;
      const bound = (maxGap / 2 + slack) * exact[b]! + Math.abs(decoded[b]! - exact[b]!) + slack * decoded[b]!;
      worst = Math.max(worst, Math.abs(x[i]! - y[i]!) / bound);
    }
    expect(worst).toBeLessThanOrEqual(1);
    expect(worst).toBeGreaterThan(0.3);
    for (const v of [decodedT, q, plain, t]) v.dispose();
  });
});

describe('nf4: bad input', () => {
  type ErrorClass = typeof LorakitTypeError | typeof LorakitRangeError | typeof DisposedError;
  const live = (): Tensor => tensor(new Float32Array(64));
  const quantized = (): NF4Tensor => {
    const t = live();
    try {
      return nf4.quantize(t);
    } finally {
      t.dispose();
    }
  };
  const disposedTensor = (): Tensor => {
    const t = live();
    t.dispose();
    return t;
  };
  const disposedNF4 = (): NF4Tensor => {
    const q = quantized();
    q.dispose();
    return q;
  };
  const forged = (): NF4Tensor =>
    new NF4Tensor({ packed: tensor(new Uint8Array(8)), absmax: tensor([1]), blockSize: 32, shape: [32], dtype: 'float32' });

  const cases: { name: string; run: () => unknown; cls: ErrorClass; code: string; message: RegExp }[] = [
    {
      name: 'quantize: int32 tensor',
      run: () => nf4.quantize(tensor([1, 2, 3], undefined, { dtype: 'int32' })),
      cls: LorakitTypeError,
      code: 'ERR_DTYPE',
      message: /^nf4\.quantize: 't' must be float32 or bfloat16 or float16, got int32$/,
    },
    {
      name: 'quantize: disposed tensor',
      run: () => nf4.quantize(disposedTensor()),
      cls: DisposedError,
      code: 'ERR_DISPOSED',
      message: /^nf4\.quantize: 't' \(a float32 tensor of shape \[64\]\) has been disposed$/,
    },
    {
      name: 'quantize: not a tensor',
      run: () => nf4.quantize([1, 2] as unknown as Tensor),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.quantize: 't' must be a Tensor, got an array of length 2$/,
    },
    {
      name: 'quantize: blockSize 48',
      run: () => nf4.quantize(live(), { blockSize: 48 }),
      cls: LorakitRangeError,
      code: 'ERR_OUT_OF_RANGE',
      message: /^nf4\.quantize: 'blockSize' must be a power of two from 32 to 4096, got 48$/,
    },
    {
      name: 'quantize: blockSize 16',
      run: () => nf4.quantize(live(), { blockSize: 16 }),
      cls: LorakitRangeError,
      code: 'ERR_OUT_OF_RANGE',
      message: /^nf4\.quantize: 'blockSize' must be >= 32, got 16$/,
    },
    {
      name: 'quantize: blockSize 8192',
      run: () => nf4.quantize(live(), { blockSize: 8192 }),
      cls: LorakitRangeError,
      code: 'ERR_OUT_OF_RANGE',
      message: /^nf4\.quantize: 'blockSize' must be <= 4096, got 8192$/,
    },
    {
      name: "quantize: blockSize '64'",
      run: () => nf4.quantize(live(), { blockSize: '64' as unknown as number }),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.quantize: 'blockSize' must be a finite number, got '64'$/,
    },
    {
      name: 'quantize: blockSize 64.5',
      run: () => nf4.quantize(live(), { blockSize: 64.5 }),
      cls: LorakitRangeError,
      code: 'ERR_OUT_OF_RANGE',
      message: /^nf4\.quantize: 'blockSize' must be an integer, got 64\.5$/,
    },
    {
      name: "quantize: doubleQuant 'yes'",
      run: () => nf4.quantize(live(), { doubleQuant: 'yes' as unknown as boolean }),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.quantize: 'doubleQuant' must be a boolean, got 'yes'$/,
    },
    {
      name: 'quantize: options a number',
      run: () => nf4.quantize(live(), 64 as unknown as object),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.quantize: options must be an object, got number 64$/,
    },
    {
      name: 'quantize: options null',
      run: () => nf4.quantize(live(), null as unknown as object),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.quantize: options must be an object, got null$/,
    },
    {
      name: 'dequantize: a plain tensor',
      run: () => nf4.dequantize(live() as unknown as NF4Tensor),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.dequantize: 'q' must be an NF4Tensor from nf4\.quantize, got an object \(Tensor\)$/,
    },
    {
      name: 'dequantize: undefined',
      run: () => nf4.dequantize(undefined as unknown as NF4Tensor),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.dequantize: 'q' must be an NF4Tensor from nf4\.quantize, got undefined undefined$/,
    },
    {
      name: 'dequantize: a disposed NF4Tensor',
      run: () => nf4.dequantize(disposedNF4()),
      cls: DisposedError,
      code: 'ERR_DISPOSED',
      message: /^nf4\.dequantize: 'q' \(an NF4Tensor of shape \[64\]\) has been disposed$/,
    },
    {
      name: 'dequantize: dtype int32',
      run: () => nf4.dequantize(quantized(), { dtype: 'int32' }),
      cls: LorakitTypeError,
      code: 'ERR_DTYPE',
      message: /^nf4\.dequantize: 'dtype' must be float32, bfloat16 or float16, got 'int32'$/,
    },
    {
      name: 'dequantize: options a string',
      run: () => nf4.dequantize(quantized(), 'float16' as unknown as object),
      cls: LorakitTypeError,
      code: 'ERR_INVALID_ARG',
      message: /^nf4\.dequantize: options must be an object, got 'float16'$/,
    },
    {
      name: 'dequantize: a forged NF4Tensor whose packed bytes are too few',
      run: () => nf4.dequantize(forged()),
      cls: LorakitRangeError,
      code: 'ERR_SHAPE',
      message: /^nf4\.dequantize: 'packed' must have shape \[16\], got \[8\]$/,
    },
    {
      name: 'absmaxOf: a disposed NF4Tensor',
      run: () => nf4.absmaxOf(disposedNF4()),
      cls: DisposedError,
      code: 'ERR_DISPOSED',
      message: /^nf4\.absmaxOf: 'q' \(an NF4Tensor of shape \[64\]\) has been disposed$/,
    },
  ];

  test.each(cases)('$name', ({ run, cls, code, message }) => {
    let caught: unknown;
    try {
      run();
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(cls);
    const err = caught as Error & { code: string };
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });

  test('the process is still healthy afterwards', () => {
    const t = tensor([0.5, -1, 0.25]);
    const q = nf4.quantize(t, { blockSize: 32 });
    expect(Array.from(dequantFloats(q))).toEqual([NF4[12]!, -1, NF4[10]!]);
    q.dispose();
    t.dispose();
  });
});
