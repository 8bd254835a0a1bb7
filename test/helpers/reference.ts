/** Independent float64 references and small utilities for the tests (no lorakit code involved). */
import * as fs from 'node:fs';

/** C = op(A)·op(B) in float64. A stored [ar, ac], B stored [br, bc], row-major. */
export function matmul64(
  a: ArrayLike<number>, ar: number, ac: number, ta: boolean,
  b: ArrayLike<number>, br: number, bc: number, tb: boolean,
): Float64Array {
  const m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = ta ? a[p * ac + i]! : a[i * ac + p]!;
      if (av === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += av * (tb ? b[j * bc + p]! : b[p * bc + j]!);
    }
  return out;
}

/** max |x - ref| / max(|ref|) over all elements. */
export function relErr(x: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (x.length !== ref.length) throw new Error(`length ${x.length} vs ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(x[i]! - ref[i]!));
    den = Math.max(den, Math.abs(ref[i]!));
  }
  return den === 0 ? num : num / den;
}

/** ||x - ref|| / ||ref|| (Frobenius). */
export function normRelErr(x: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (x[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

/** A small deterministic PRNG (mulberry32) for test inputs, independent of lorakit's generator. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

/** float32 -> bfloat16 bits, round to nearest even, computed with integer arithmetic on the bits. */
export function bf16Bits(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  const lower = u & 0xffff, upper = u >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1))) return (upper + 1) & 0xffff;
  return upper;
}

export function bf16Value(bits: number): number {
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0]!;
}

/** float16 bits -> value (exact). */
export function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float -> float16 bits by searching the nearest representable value (ties to even mantissa). */
export function f16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  // Candidates: floor and ceil in the f16 grid (spacing depends on exponent).
  const e = a < 2 ** -14 ? -14 : Math.floor(Math.log2(a));
  const ulp = 2 ** (Math.max(e, -14) - 10);
  const lo = Math.floor(a / ulp) * ulp, hi = lo + ulp;
  const pick = (v: number) => {
    if (v === 0) return sign;
    const ee = v < 2 ** -14 ? 0 : Math.floor(Math.log2(v)) + 15;
    const mm = ee === 0 ? v / 2 ** -24 : (v / 2 ** (ee - 15) - 1) * 1024;
    return sign | (ee << 10) | Math.round(mm);
  };
  const dl = a - lo, dh = hi - a;
  if (dl < dh) return pick(lo);
  if (dh < dl) return pick(hi);
  return (pick(lo) & 1) === 0 ? pick(lo) : pick(hi);
}

/** Reads a safetensors file into float64/bigint arrays by name (test fixtures only). */
export function readSafetensors(file: string): Map<string, { shape: number[]; dtype: string; data: Float64Array | BigInt64Array }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  const out = new Map<string, { shape: number[]; dtype: string; data: Float64Array | BigInt64Array }>();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [s, e] = info.data_offsets;
    const bytes = buf.subarray(base + s, base + e);
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    let data: Float64Array | BigInt64Array;
    if (info.dtype === 'F32') data = Float64Array.from(new Float32Array(ab));
    else if (info.dtype === 'I64') data = new BigInt64Array(ab);
    else throw new Error(`fixture dtype ${info.dtype} not handled`);
    out.set(name, { shape: info.shape, dtype: info.dtype, data });
  }
  return out;
}

/** Eigenvalues and eigenvectors (columns) of a symmetric n x n matrix, cyclic Jacobi in float64, descending. */
export function eigenSym(a0: ArrayLike<number>, n: number): { values: number[]; vectors: number[][] } {
  const a = Float64Array.from(a0);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0, diag = 0;
    for (let p = 0; p < n; p++) {
      diag += a[p * n + p]! ** 2;
      for (let q = p + 1; q < n; q++) off += a[p * n + q]! ** 2;
    }
    if (off <= 1e-32 * diag || off === 0) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (apq === 0) continue;
        const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const kp = a[k * n + p]!, kq = a[k * n + q]!;
          a[k * n + p] = c * kp - s * kq;
          a[k * n + q] = s * kp + c * kq;
        }
        for (let k = 0; k < n; k++) {
          const pk = a[p * n + k]!, qk = a[q * n + k]!;
          a[p * n + k] = c * pk - s * qk;
          a[q * n + k] = s * pk + c * qk;
        }
        for (let k = 0; k < n; k++) {
          const kp = v[k * n + p]!, kq = v[k * n + q]!;
          v[k * n + p] = c * kp - s * kq;
          v[k * n + q] = s * kp + c * kq;
        }
      }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => a[y * n + y]! - a[x * n + x]!);
  return { values: order.map((i) => a[i * n + i]!), vectors: order.map((j) => Array.from({ length: n }, (_, k) => v[k * n + j]!)) };
}

/** Eigenvalues of a symmetric n x n matrix (cyclic Jacobi in float64), descending. */
export function jacobiEigenvalues(a0: ArrayLike<number>, n: number): number[] {
  return eigenSym(a0, n).values;
}
