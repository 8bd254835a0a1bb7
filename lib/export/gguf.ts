/**
 * A GGUF v3 writer (the file format of llama.cpp, ggml's `gguf.h`): a header, typed key/value metadata,
 * tensor descriptors, then the tensor data, each aligned. Tensor payloads are encoded here: float32,
 * float16 and bfloat16 (round to nearest even), and Q8_0 (ggml's block of 32 int8 values with one f16
 * scale, quantized as ggml's reference `quantize_row_q8_0_ref` does).
 */
import * as fs from 'node:fs';
import { LorakitError, LorakitRangeError } from '../errors';
import { ioError } from '../io/config';

/** ggml tensor types lorakit writes, with ggml's enum values. */
export const GGML_TYPE = { f32: 0, f16: 1, q8_0: 8, bf16: 30 } as const;
export type GgmlType = keyof typeof GGML_TYPE;

/** GGUF metadata value types (gguf_type). */
const T = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as const;

/** A metadata value with its GGUF type: the type is part of the format (llama.cpp reads u32 where it expects u32). */
export type GgufValue =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; of: 'string'; value: readonly string[] }
  | { type: 'array'; of: 'i32' | 'f32'; value: ArrayLike<number> };

export const u32 = (value: number): GgufValue => ({ type: 'u32', value });
export const f32 = (value: number): GgufValue => ({ type: 'f32', value });
export const str = (value: string): GgufValue => ({ type: 'string', value });
export const bool = (value: boolean): GgufValue => ({ type: 'bool', value });

export interface GgufTensor {
  name: string;
  /** Row-major shape as PyTorch writes it ([out, in] for a linear weight); GGUF stores it reversed. */
  shape: readonly number[];
  data: Float32Array;
  type: GgmlType;
}

export const QK8_0 = 32;
export const ALIGNMENT = 32;

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** IEEE half of a float32, rounded to nearest even; out-of-range values become ±inf as in ggml. */
export function toHalf(x: number): number {
  f32buf[0] = x;
  const b = u32buf[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let h = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and reaches inf at the top).
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** The float value of IEEE half bits. */
export function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function toBf16(x: number): number {
  f32buf[0] = x;
  const b = u32buf[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff; // quiet NaN
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Q8_0 blocks of `x` (a multiple of 32 values): per block, d = max|x| / 127 stored as f16, and each value
 * round(x / d) as int8 (rounding half away from zero, as C's roundf), with 1/d taken from the unrounded d.
 */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % QK8_0 !== 0)
    throw new LorakitRangeError('ERR_SHAPE', `quantizeQ8_0: the length must be a multiple of ${QK8_0}, got ${x.length}`);
  const blocks = x.length / QK8_0;
  const out = new Uint8Array(blocks * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(x[b * QK8_0 + j]!));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(b * 34, toHalf(d), true);
    for (let j = 0; j < QK8_0; j++) {
      const v = Math.fround(x[b * QK8_0 + j]! * id);
      view.setInt8(b * 34 + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
  return out;
}

/** The values Q8_0 blocks decode to (ggml's dequantize_row_q8_0). */
export function dequantizeQ8_0(q: Uint8Array): Float32Array {
  const view = new DataView(q.buffer, q.byteOffset, q.byteLength);
  const blocks = q.byteLength / 34;
  const out = new Float32Array(blocks * QK8_0);
  for (let b = 0; b < blocks; b++) {
    const d = fromHalf(view.getUint16(b * 34, true));
    for (let j = 0; j < QK8_0; j++) out[b * QK8_0 + j] = d * view.getInt8(b * 34 + 2 + j);
  }
  return out;
}

/** The bytes of a tensor's data in its ggml type. */
export function encodeTensor(t: GgufTensor): Uint8Array {
  switch (t.type) {
    case 'f32':
      return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    case 'f16':
    case 'bf16': {
      const out = new Uint16Array(t.data.length);
      const enc = t.type === 'f16' ? toHalf : toBf16;
      for (let i = 0; i < out.length; i++) out[i] = enc(t.data[i]!);
      return new Uint8Array(out.buffer);
    }
    case 'q8_0':
      if (t.shape[t.shape.length - 1]! % QK8_0 !== 0)
        throw new LorakitRangeError('ERR_SHAPE', `GGUF: tensor '${t.name}' has rows of ${t.shape[t.shape.length - 1]} values, which Q8_0's blocks of ${QK8_0} do not divide`);
      return quantizeQ8_0(t.data);
  }
}

/** Growable little-endian byte buffer for the header. */
class Bytes {
  #buf = Buffer.alloc(1 << 16);
  #len = 0;
  #reserve(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    const next = Buffer.alloc(Math.max(this.#buf.length * 2, this.#len + n));
    this.#buf.copy(next, 0, 0, this.#len);
    this.#buf = next;
  }
  get length(): number {
    return this.#len;
  }
  u32(v: number): void {
    this.#reserve(4);
    this.#len = this.#buf.writeUInt32LE(v, this.#len);
  }
  i32(v: number): void {
    this.#reserve(4);
    this.#len = this.#buf.writeInt32LE(v, this.#len);
  }
  u64(v: number): void {
    this.#reserve(8);
    this.#len = this.#buf.writeBigUInt64LE(BigInt(v), this.#len);
  }
  f32(v: number): void {
    this.#reserve(4);
    this.#len = this.#buf.writeFloatLE(v, this.#len);
  }
  u8(v: number): void {
    this.#reserve(1);
    this.#len = this.#buf.writeUInt8(v, this.#len);
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.#reserve(b.length);
    b.copy(this.#buf, this.#len);
    this.#len += b.length;
  }
  pad(to: number): void {
    while (this.#len % to) this.u8(0);
  }
  bytes(): Buffer {
    return this.#buf.subarray(0, this.#len);
  }
}

function writeValue(h: Bytes, v: GgufValue): void {
  switch (v.type) {
    case 'u32': h.u32(T.u32); h.u32(v.value); break;
    case 'i32': h.u32(T.i32); h.i32(v.value); break;
    case 'u64': h.u32(T.u64); h.u64(v.value); break;
    case 'f32': h.u32(T.f32); h.f32(v.value); break;
    case 'bool': h.u32(T.bool); h.u8(v.value ? 1 : 0); break;
    case 'string': h.u32(T.string); h.string(v.value); break;
    case 'array':
      h.u32(T.array);
      h.u32(T[v.of]);
      h.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) {
        if (v.of === 'string') h.string((v.value as readonly string[])[i]!);
        else if (v.of === 'i32') h.i32((v.value as ArrayLike<number>)[i]!);
        else h.f32((v.value as ArrayLike<number>)[i]!);
      }
      break;
  }
}

/**
 * Writes a GGUF v3 file: to `<file>.gguf-<pid>.tmp`, renamed over `file` once complete, so a reader never
 * sees half a file and a link at `file` is replaced rather than written through. Tensors are encoded one
 * at a time, so only one tensor's encoded bytes are in memory beside the inputs.
 */
export function writeGguf(op: string, file: string, metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensor[]): void {
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new LorakitError('ERR_INVALID_ARG', `${op}: tensor '${t.name}' is written twice`);
    names.add(t.name);
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new LorakitError('ERR_SHAPE', `${op}: tensor '${t.name}' has shape [${t.shape.join(', ')}] (${n} values) but ${t.data.length} values`);
  }
  const h = new Bytes();
  h.u8(0x47); h.u8(0x47); h.u8(0x55); h.u8(0x46); // "GGUF"
  h.u32(3);
  h.u64(tensors.length);
  h.u64(metadata.size + (metadata.has('general.alignment') ? 0 : 1));
  if (!metadata.has('general.alignment')) {
    h.string('general.alignment');
    writeValue(h, u32(ALIGNMENT));
  }
  for (const [k, v] of metadata) {
    h.string(k);
    writeValue(h, v);
  }
  // Sizes first: each tensor's offset depends on those before it.
  const sizes = tensors.map((t) => {
    const n = t.data.length;
    return t.type === 'f32' ? n * 4 : t.type === 'q8_0' ? (n / QK8_0) * 34 : n * 2;
  });
  let offset = 0;
  tensors.forEach((t, i) => {
    h.string(t.name);
    h.u32(t.shape.length);
    for (let d = t.shape.length - 1; d >= 0; d--) h.u64(t.shape[d]!);
    h.u32(GGML_TYPE[t.type]);
    h.u64(offset);
    offset += Math.ceil(sizes[i]! / ALIGNMENT) * ALIGNMENT;
  });
  h.pad(ALIGNMENT);
  const tmp = `${file}.gguf-${process.pid}.tmp`;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w');
    fs.writeSync(fd, h.bytes());
    const zeros = new Uint8Array(ALIGNMENT);
    tensors.forEach((t, i) => {
      const bytes = encodeTensor(t);
      fs.writeSync(fd!, bytes);
      const pad = (ALIGNMENT - (sizes[i]! % ALIGNMENT)) % ALIGNMENT;
      if (pad) fs.writeSync(fd!, zeros, 0, pad);
    });
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw ioError(op, 'write', file, e);
  }
}
