/**
 * NF4 (4-bit NormalFloat) quantization, bit-compatible with bitsandbytes' quantize_4bit / dequantize_4bit
 * (quant_type "nf4"), with optional double quantization of the per-block absmax (compress_statistics).
 */
import { native, type AddonNF4 } from '../native/binding';
import { DisposedError, LorakitRangeError, LorakitTypeError } from '../errors';
import { DTYPE_CODE, type DType } from '../tensor/dtype';
import { type Device, describe, checkNumber, checkOptions } from '../check';
import { Tensor, numelOf, tensor, FLOATS, checkTensor } from '../tensor/tensor';

/**
 * The 16 NF4 values, index = 4-bit code (bitsandbytes' table), frozen. They are read from the addon, whose
 * csrc/bnb_codes.h is the one copy that both backends quantize with, on first use: importing lorakit loads
 * no native code.
 */
export const NF4_CODE: readonly number[] = lazyFrozen(() => Array.from(native().nf4CodeBook()));

// An array that `fill` fills, then frozen, on the first operation on it: a Proxy whose every trap fills
// its target first and then acts on it.
function lazyFrozen(fill: () => number[]): readonly number[] {
  const values: number[] = [];
  const ready = (): number[] => {
    if (!Object.isFrozen(values)) {
      values.push(...fill());
      Object.freeze(values);
    }
    return values;
  };
  const traps = ['get', 'has', 'ownKeys', 'getOwnPropertyDescriptor', 'set', 'defineProperty', 'deleteProperty',
    'isExtensible', 'preventExtensions', 'getPrototypeOf', 'setPrototypeOf'] as const;
  const handler: Record<string, unknown> = {};
  for (const trap of traps)
    handler[trap] = (_: number[], ...args: unknown[]) => (Reflect[trap] as (...a: unknown[]) => unknown)(ready(), ...args);
  return new Proxy(values, handler as ProxyHandler<number[]>);
}

/** Block size of the double-quantized absmax (fixed by bitsandbytes). */
export const ABSMAX_BLOCK = 256;

export interface QuantizeOptions {
  /** Elements per absmax block: a power of two from 32 to 4096 (default 64). */
  blockSize?: number;
  /** Quantize the absmax values too (8-bit, blocks of 256): about 0.37 fewer bits per parameter. */
  doubleQuant?: boolean;
  /** Names the tensor in errors (a weight's name); 't' by default. */
  name?: string;
}

/** A quantized tensor. It owns its tensors: dispose() frees them all. */
export class NF4Tensor {
  /** Two codes per byte, element 2j in the high nibble. */
  readonly packed: Tensor;
  /** One float32 scale per block (absent with double quantization). */
  readonly absmax?: Tensor;
  /** Double quantization: 8-bit codes of (absmax - absmaxOffset) ... */
  readonly absmaxCodes?: Tensor;
  /** ... scaled per 256 blocks by these float32 values ... */
  readonly absmaxScales?: Tensor;
  /** ... and the mean absmax that was subtracted. */
  readonly absmaxOffset?: number;
  readonly blockSize: number;
  /** Shape and dtype of the tensor that was quantized. */
  readonly shape: readonly number[];
  readonly dtype: DType;

  /** @internal */
  constructor(parts: {
    packed: Tensor;
    absmax?: Tensor;
    absmaxCodes?: Tensor;
    absmaxScales?: Tensor;
    absmaxOffset?: number;
    blockSize: number;
    shape: readonly number[];
    dtype: DType;
  }) {
    this.packed = parts.packed;
    this.absmax = parts.absmax;
    this.absmaxCodes = parts.absmaxCodes;
    this.absmaxScales = parts.absmaxScales;
    this.absmaxOffset = parts.absmaxOffset;
    this.blockSize = parts.blockSize;
    this.shape = Object.freeze([...parts.shape]);
    this.dtype = parts.dtype;
    // TypeScript's readonly is not enforced at run time: a rewritten shape or block size would size
    // the native work from numbers the packed storage does not match.
    Object.freeze(this);
  }

  get numel(): number {
    return numelOf(this.shape);
  }
  get device(): Device {
    return this.packed.device;
  }
  /** A copy on another device ('cpu', 'cuda', 'cuda:N'). */
  to(device: Device): NF4Tensor {
    const moved: Tensor[] = [];
    const move = (t?: Tensor) => {
      if (!t) return undefined;
      const m = t.to(device);
      moved.push(m);
      return m;
    };
    try {
      return new NF4Tensor({
        packed: move(this.packed)!, absmax: move(this.absmax), absmaxCodes: move(this.absmaxCodes), absmaxScales: move(this.absmaxScales),
        absmaxOffset: this.absmaxOffset, blockSize: this.blockSize, shape: this.shape, dtype: this.dtype,
      });
    } catch (e) {
      for (const t of moved) t.dispose();
      throw e;
    }
  }
  get doubleQuant(): boolean {
    return this.absmaxCodes !== undefined;
  }
  get disposed(): boolean {
    return this.packed.disposed;
  }
  dispose(): void {
    for (const t of [this.packed, this.absmax, this.absmaxCodes, this.absmaxScales]) t?.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

function checkBlockSize(op: string, bs: unknown): number {
  const n = checkNumber(op, 'blockSize', bs, { integer: true, min: 32, max: 4096 });
  if ((n & (n - 1)) !== 0) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'blockSize' must be a power of two from 32 to 4096, got ${n}`);
  return n;
}

/** Quantizes a float tensor to NF4, block by block over its row-major elements. */
export function quantize(t: Tensor, options?: QuantizeOptions): NF4Tensor {
  const op = 'nf4.quantize';
  const x = checkTensor(op, 't', t, { dtypes: FLOATS });
  const o = checkOptions<QuantizeOptions>(op, options);
  const blockSize = checkBlockSize(op, o.blockSize ?? 64);
  if (o.doubleQuant !== undefined && typeof o.doubleQuant !== 'boolean')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'doubleQuant' must be a boolean, got ${describe(o.doubleQuant)}`);
  const n = x.numel;
  rejectNonFinite(op, x, typeof o.name === 'string' ? o.name : 't');
  const blocks = Math.ceil(n / blockSize);
  const packed = Tensor.empty([Math.ceil(n / 2)], 'uint8', x.device, op);
  const absmax = Tensor.empty([blocks], 'float32', x.device, op);
  native().nf4Quantize({
    src: x.storage(),
    dtype: DTYPE_CODE[x.dtype],
    n,
    blockSize,
    packed: packed.storage(),
    absmax: absmax.storage(),
  });
  if (!o.doubleQuant) return new NF4Tensor({ packed, absmax, blockSize, shape: x.shape, dtype: x.dtype });
  const absmaxCodes = Tensor.empty([blocks], 'uint8', x.device, op);
  const absmaxScales = Tensor.empty([Math.ceil(blocks / ABSMAX_BLOCK)], 'float32', x.device, op);
  try {
    const absmaxOffset = native().absmaxQuantize({
      absmax: absmax.storage(),
      n: blocks,
      codes: absmaxCodes.storage(),
      scales: absmaxScales.storage(),
    });
    return new NF4Tensor({ packed, absmaxCodes, absmaxScales, absmaxOffset, blockSize, shape: x.shape, dtype: x.dtype });
  } finally {
    absmax.dispose();
  }
}

/**
 * NaN and infinities are rejected rather than coded. bitsandbytes' quantize_4bit codes them without a
 * word: a block holding +inf gets absmax inf, its finite values scale to 0 * inf and dequantize to NaN,
 * and the inf itself (inf / inf is NaN, which its code search sends to code 0, -1.0) comes back as -inf.
 * No weight worth fine-tuning holds one, so an error naming the first is more use than that.
 */
function rejectNonFinite(op: string, x: Tensor, name: string): void {
  const i = native().firstNonFinite({ src: x.storage(op, name), dtype: DTYPE_CODE[x.dtype], n: x.numel });
  if (i < 0) return;
  const index: number[] = [];
  for (let rest = i, d = x.ndim - 1; d >= 0; d--) {
    index.unshift(rest % x.shape[d]!);
    rest = Math.floor(rest / x.shape[d]!);
  }
  throw new LorakitRangeError(
    'ERR_OUT_OF_RANGE',
    `${op}: '${name}' (a ${x.dtype} tensor of shape [${x.shape.join(', ')}]) holds NaN or an infinity at element ${i} ([${index.join(', ')}]); ` +
      'NF4 codes only finite values (bitsandbytes would turn that block into NaN and -inf), so replace or clip it before quantizing',
  );
}

function checkQuantized(op: string, arg: string, q: unknown): NF4Tensor {
  if (!(q instanceof NF4Tensor))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${arg}' must be an NF4Tensor from nf4.quantize, got ${describe(q)}`);
  if (q.disposed) throw new DisposedError(`${op}: '${arg}' (an NF4Tensor of shape [${q.shape.join(', ')}])`);
  const blocks = Math.ceil(q.numel / q.blockSize);
  checkTensor(op, 'packed', q.packed, { dtypes: ['uint8'], shape: [Math.ceil(q.numel / 2)] });
  if (q.absmax) checkTensor(op, 'absmax', q.absmax, { dtypes: ['float32'], shape: [blocks] });
  else {
    checkTensor(op, 'absmaxCodes', q.absmaxCodes, { dtypes: ['uint8'], shape: [blocks] });
    checkTensor(op, 'absmaxScales', q.absmaxScales, { dtypes: ['float32'], shape: [Math.ceil(blocks / ABSMAX_BLOCK)] });
  }
  return q;
}

/** The float32 absmax of a quantized tensor (decoded when double-quantized; the caller disposes it). */
export function absmaxOf(q: NF4Tensor): Tensor {
  const op = 'nf4.absmaxOf';
  checkQuantized(op, 'q', q);
  if (q.absmax) return q.absmax.clone();
  const blocks = Math.ceil(q.numel / q.blockSize);
  const out = Tensor.empty([blocks], 'float32', q.packed.device, op);
  native().absmaxDequantize({
    codes: q.absmaxCodes!.storage(),
    scales: q.absmaxScales!.storage(),
    offset: q.absmaxOffset!,
    n: blocks,
    absmax: out.storage(),
  });
  return out;
}

/**
 * @internal The native view of a quantized weight and a cleanup for the decoded absmax. `arg` names the
 * weight in errors.
 */
export function nativeNF4(op: string, q: NF4Tensor, arg = 'weight'): { nf4: AddonNF4; release: () => void } {
  checkQuantized(op, arg, q);
  const absmax = q.absmax ?? absmaxOf(q);
  return {
    nf4: { packed: q.packed.storage(), absmax: absmax.storage(), blockSize: q.blockSize },
    release: () => {
      if (absmax !== q.absmax) absmax.dispose();
    },
  };
}

/** Reconstructs the tensor (in its original dtype unless `dtype` is given). */
export function dequantize(q: NF4Tensor, options?: { dtype?: DType }): Tensor {
  const op = 'nf4.dequantize';
  checkQuantized(op, 'q', q);
  const o = checkOptions<{ dtype: DType }>(op, options);
  const dtype = o.dtype ?? q.dtype;
  if (!FLOATS.includes(dtype))
    throw new LorakitTypeError('ERR_DTYPE', `${op}: 'dtype' must be float32, bfloat16 or float16, got ${describe(dtype)}`);
  const { nf4, release } = nativeNF4(op, q, 'q');
  try {
    const out = Tensor.empty(q.shape, dtype, q.packed.device, op);
    native().nf4Dequantize({ ...nf4, n: q.numel, dst: out.storage(), dtype: DTYPE_CODE[dtype] });
    return out;
  } finally {
    release();
  }
}

let codeBook: Float32Array | undefined;

/**
 * The 256 values of bitsandbytes' signed dynamic 8-bit map that double quantization codes the absmax
 * with, read back from the native decoder (code i, scale 1, offset 0).
 */
export function absmaxCodeBook(): Float32Array {
  if (codeBook) return codeBook.slice();
  const blocks = 256;
  using q = new NF4Tensor({
    packed: Tensor.empty([(blocks * 32) / 2], 'uint8', 'cpu', 'nf4.absmaxCodeBook'),
    absmaxCodes: tensor(Uint8Array.from({ length: blocks }, (_, i) => i), [blocks], { dtype: 'uint8' }),
    absmaxScales: tensor(new Float32Array([1]), [1]),
    absmaxOffset: 0,
    blockSize: 32,
    shape: [blocks * 32],
    dtype: 'float32',
  });
  using decoded = absmaxOf(q);
  codeBook = decoded.toFloat32Array();
  return codeBook.slice();
}
