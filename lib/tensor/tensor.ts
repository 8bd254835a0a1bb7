import '../native/polyfill';
import { gpuCount, native, type AddonStorage } from '../native/binding';
import { checkDevice, checkShape, describe, shapeStr, type Device } from '../check';
import { DisposedError, LorakitRangeError, LorakitTypeError, fromNative } from '../errors';
import { DTYPE_BYTES, DTYPE_CODE, type DType, type TypedArrayOf, bf16ToNumber, dtypeOfArray, f16ToNumber, isDType, typedArrayFor } from './dtype';

export interface TensorOptions {
  dtype?: DType;
  device?: Device;
}

/** Nested arrays of numbers (or bigints for int64), as `toArray()` returns them. */
export type NestedArray = number | bigint | NestedArray[];

/**
 * Native bytes shared by a tensor and its reshaped views; freed when the last view is disposed (or,
 * as a safety net only, garbage collected).
 */
class SharedStorage {
  refs = 1;
  constructor(readonly native: AddonStorage) {}
  release(): void {
    if (--this.refs === 0) this.native.free();
  }
}

// Safety net: a tensor that was never disposed gives its reference back when collected.
let liveTensors = 0;
const registry = new FinalizationRegistry<SharedStorage>((s) => {
  s.release();
  liveTensors--;
});

function isDeviceName(x: unknown): boolean {
  return typeof x === 'string' && (x === 'cpu' || /^cuda(:\d+)?$/.test(x));
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function allocate(op: string, bytes: number, device: Device): AddonStorage {
  const { Storage } = native();
  if (!Number.isSafeInteger(bytes))
    throw new LorakitRangeError('ERR_OUT_OF_MEMORY', `${op}: cannot allocate ${bytes} bytes: the tensor is too large`);
  try {
    return new Storage(bytes, device);
  } catch (e) {
    throw fromNative(e, new Error().stack);
  }
}

/** An n-dimensional, contiguous, row-major array in native memory. */
export class Tensor {
  // Private and read through getters: TypeScript's `readonly` is not enforced at run time, and a shape
  // rewritten after allocation would make every op size its work from numbers the storage does not have.
  readonly #shape: readonly number[];
  readonly #dtype: DType;
  readonly #device: Device;
  #store: SharedStorage | null;

  /** @internal Use tensor(), zeros(), ... to make tensors. */
  constructor(store: SharedStorage, shape: readonly number[], dtype: DType, device: Device) {
    this.#store = store;
    this.#shape = Object.freeze([...shape]);
    this.#dtype = dtype;
    this.#device = device;
    // No own property can then shadow the getters (Object.defineProperty(t, 'shape', ...) throws).
    Object.preventExtensions(this);
    registry.register(this, store, this);
    liveTensors++;
  }

  /** The dimensions, a frozen array: assigning to it or to `shape` throws in strict mode. */
  get shape(): readonly number[] {
    return this.#shape;
  }
  get dtype(): DType {
    return this.#dtype;
  }
  get device(): Device {
    return this.#device;
  }

  /** @internal Allocates an uninitialised tensor. */
  static empty(shape: readonly number[], dtype: DType, device: Device = 'cpu', op = 'empty'): Tensor {
    const s = checkShape(op, shape);
    return new Tensor(new SharedStorage(allocate(op, numelOf(s) * DTYPE_BYTES[dtype], device)), s, dtype, device);
  }

  get numel(): number {
    return numelOf(this.shape);
  }
  get ndim(): number {
    return this.shape.length;
  }
  get nbytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }
  get disposed(): boolean {
    return this.#store === null;
  }
  /** Tensors are always contiguous row-major; ops check this for views made by future slicing ops. */
  get contiguous(): boolean {
    return true;
  }

  /**
   * @internal The native storage, for ops. Throws if disposed.
   * `op` and `arg` name the caller in the error.
   */
  storage(op = 'Tensor', arg = 'tensor'): AddonStorage {
    if (!this.#store) throw new DisposedError(`${op}: '${arg}' (a ${this.dtype} tensor of shape [${this.shape.join(', ')}])`);
    return this.#store.native;
  }

  /** Frees the native memory (once the last reshaped view of it is disposed). Idempotent. */
  dispose(): void {
    if (!this.#store) return;
    registry.unregister(this);
    this.#store.release();
    this.#store = null;
    liveTensors--;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A copy of the elements in a TypedArray of the dtype (bf16/f16 as raw bits in a Uint16Array). */
  data(): TypedArrayOf[typeof this.dtype] {
    const out = typedArrayFor(this.dtype, this.numel);
    this.storage('data').download(out);
    return out;
  }

  /** The elements converted to float32 (int64 beyond 2^24 loses precision, as a cast would). */
  toFloat32Array(): Float32Array {
    if (this.dtype === 'float32') return this.data() as Float32Array;
    using f = this.to('float32');
    return f.data() as Float32Array;
  }

  /** Nested arrays of numbers following the shape (int64 as bigint, so no value is rounded). */
  toArray(): NestedArray {
    const flat = this.data();
    const value = (i: number): number | bigint => {
      const v = flat[i]!;
      if (this.dtype === 'bfloat16') return bf16ToNumber(v as number);
      if (this.dtype === 'float16') return f16ToNumber(v as number);
      return v;
    };
    if (this.shape.length === 0) return value(0);
    let next = 0;
    const build = (dim: number): NestedArray[] => {
      const n = this.shape[dim]!;
      const out: NestedArray[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = dim === this.shape.length - 1 ? value(next++) : build(dim + 1);
      return out;
    };
    return build(0);
  }

  /**
   * A new tensor of another dtype (floats round to nearest even, floats to ints truncate, saturating), or
   * a copy on another device ('cpu', 'cuda', 'cuda:N').
   */
  to(target: DType | Device): Tensor {
    if (isDeviceName(target)) return this.toDevice(checkDevice('Tensor.to', target));
    const dtype = target as DType;
    if (!isDType(dtype)) throw new LorakitTypeError('ERR_DTYPE', `Tensor.to: unknown dtype or device ${describe(dtype)} (expected a dtype such as 'float32', or 'cpu' / 'cuda[:N]')`);
    const src = this.storage('Tensor.to', 'this');
    const out = Tensor.empty(this.shape, dtype, this.device, 'Tensor.to');
    native().cast({ src, from: DTYPE_CODE[this.dtype], dst: out.storage(), to: DTYPE_CODE[dtype], n: this.numel });
    return out;
  }

  // Through host memory: GPU-to-GPU copies between devices are rare enough here not to need peer access.
  private toDevice(device: Device): Tensor {
    const src = this.storage('Tensor.to', 'this');
    const host = typedArrayFor(this.dtype, this.numel);
    src.download(host);
    const out = Tensor.empty(this.shape, this.dtype, device, 'Tensor.to');
    out.storage().upload(host);
    return out;
  }

  /** Sets every element to `value`, in place. */
  fill(value: number): this {
    if (typeof value !== 'number') throw new LorakitTypeError('ERR_INVALID_ARG', `Tensor.fill: value must be a number, got ${describe(value)}`);
    if (isIntDType(this.dtype)) checkInteger('Tensor.fill', 'value', value, this.dtype);
    native().fill({ dst: this.storage('Tensor.fill', 'this'), dtype: DTYPE_CODE[this.dtype], n: this.numel, value });
    return this;
  }

  /** A copy with its own storage. */
  clone(): Tensor {
    return this.to(this.dtype);
  }

  /**
   * A view with another shape over the same storage (one dimension may be -1). Disposing the view
   * releases only its own reference.
   */
  reshape(shape: readonly number[]): Tensor {
    const store = this.#store;
    if (!store) throw new DisposedError(`Tensor.reshape: the tensor of shape [${this.shape.join(', ')}]`);
    if (!Array.isArray(shape)) throw new LorakitTypeError('ERR_SHAPE', `Tensor.reshape: shape must be an array, got ${describe(shape)}`);
    const infer = shape.indexOf(-1);
    if (infer >= 0 && shape.lastIndexOf(-1) !== infer)
      throw new LorakitRangeError('ERR_SHAPE', `Tensor.reshape: cannot infer more than one -1 in [${shape.join(', ')}]`);
    const known = shape.filter((_, i) => i !== infer);
    const dims = checkShape('Tensor.reshape', known);
    const rest = numelOf(dims);
    const full = [...shape];
    if (infer >= 0) {
      if (rest === 0 || this.numel % rest !== 0)
        throw new LorakitRangeError('ERR_SHAPE', `Tensor.reshape: cannot infer -1 in [${shape.join(', ')}] for ${this.numel} elements`);
      full[infer] = this.numel / rest;
    }
    if (numelOf(full) !== this.numel)
      throw new LorakitRangeError(
        'ERR_SHAPE',
        `Tensor.reshape: [${this.shape.join(', ')}] has ${this.numel} elements, [${shape.join(', ')}] needs ${numelOf(full)}`,
      );
    store.refs++;
    return new Tensor(store, full, this.dtype, this.device);
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  // console.log and util.inspect show no getters: without this a tensor would print as `Tensor {}`.
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

type NumberData = number | bigint | NumberData[];

function inferShape(data: NumberData): number[] {
  const shape: number[] = [];
  let cur: NumberData = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    if (cur.length === 0) break;
    cur = cur[0]!;
  }
  return shape;
}

function flatten(op: string, data: NumberData, shape: readonly number[], out: (number | bigint)[], dim = 0): void {
  if (dim === shape.length) {
    if (Array.isArray(data)) throw new LorakitRangeError('ERR_SHAPE', `${op}: nested array is ragged or deeper than shape [${shape.join(', ')}]`);
    if (typeof data !== 'number' && typeof data !== 'bigint')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: elements must be numbers, got ${describe(data)}`);
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[dim])
    throw new LorakitRangeError(
      'ERR_SHAPE',
      `${op}: nested array is ragged: expected ${shape[dim]} entries at depth ${dim}, got ${Array.isArray(data) ? data.length : describe(data)}`,
    );
  for (const d of data) flatten(op, d, shape, out, dim + 1);
}

type IntDType = 'int32' | 'int64' | 'uint8';

const INT_RANGE: Readonly<Record<IntDType, readonly [bigint, bigint]>> = {
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint8: [0n, 255n],
};

function isIntDType(d: DType): d is IntDType {
  return d in INT_RANGE;
}

/**
 * `v` as an integer of `dtype`, or an error naming it (`what`: 'element 3', 'value'), the value and the
 * dtype's range. A TypedArray store would wrap or truncate it silently (2n ** 70n into int64 is 0n,
 * NaN into int32 is 0).
 */
export function checkInteger(op: string, what: string, v: number | bigint, dtype: IntDType): bigint {
  const [lo, hi] = INT_RANGE[dtype];
  const range = `${dtype} holds integers in [${lo}, ${hi}]`;
  if (typeof v === 'number' && !Number.isInteger(v))
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: ${what} (${v}) is not an integer; ${range}`);
  const b = BigInt(v);
  if (b < lo || b > hi) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: ${what} (${v}) is not representable as ${dtype}: ${range}`);
  return b;
}

/** Writes numbers into a fresh tensor of `dtype` (floats through float32, rounding to nearest even). */
function fromNumbers(op: string, values: (number | bigint)[], shape: number[], dtype: DType, device: Device): Tensor {
  if (isIntDType(dtype)) {
    const arr = typedArrayFor(dtype, values.length);
    if (arr instanceof BigInt64Array) values.forEach((v, i) => (arr[i] = checkInteger(op, `element ${i}`, v, dtype)));
    else {
      const [lo, hi] = INT_RANGE[dtype].map(Number) as [number, number];
      values.forEach((v, i) => {
        // Numbers in range skip the BigInt round trip: token ids arrive by the million.
        arr[i] = typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi ? v : Number(checkInteger(op, `element ${i}`, v, dtype));
      });
    }
    return upload(op, arr, shape, dtype, device);
  }
  const f = upload(op, Float32Array.from(values, Number), shape, 'float32', device);
  if (dtype === 'float32') return f;
  try {
    return f.to(dtype);
  } finally {
    f.dispose();
  }
}

function upload(op: string, arr: ArrayBufferView, shape: number[], dtype: DType, device: Device): Tensor {
  const t = Tensor.empty(shape, dtype, device, op);
  t.storage().upload(arr);
  return t;
}

/**
 * A tensor from a TypedArray (with its shape) or from nested arrays (shape inferred, or given).
 * bfloat16/float16 data given as Uint16Array is taken as raw bits; given as numbers, it is rounded.
 */
export function tensor(data: ArrayBufferView | NumberData, shape?: readonly number[], options: TensorOptions = {}): Tensor {
  const op = 'tensor';
  if (options === null || typeof options !== 'object') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: options must be an object`);
  const device = checkDevice(op, options.device);
  if (options.dtype !== undefined && !isDType(options.dtype))
    throw new LorakitTypeError('ERR_DTYPE', `${op}: unknown dtype ${describe(options.dtype)}; expected one of float32, bfloat16, float16, int32, int64, uint8`);
  if (ArrayBuffer.isView(data)) {
    if (data instanceof DataView) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: a DataView is not accepted; pass a TypedArray`);
    const implied = dtypeOfArray(data);
    const s = shape === undefined ? [(data as unknown as { length: number }).length] : checkShape(op, shape);
    const n = numelOf(s);
    const length = (data as unknown as { length: number }).length;
    if (length !== n)
      throw new LorakitRangeError('ERR_SHAPE', `${op}: data has ${length} elements, shape [${s.join(', ')}] needs ${n}`);
    if (data instanceof Uint16Array) {
      const dtype = options.dtype;
      if (dtype === 'bfloat16' || dtype === 'float16') return upload(op, data, s, dtype, device);
      if (dtype === undefined)
        throw new LorakitTypeError('ERR_DTYPE', `${op}: a Uint16Array holds raw 16-bit floats; say which with { dtype: 'bfloat16' } or { dtype: 'float16' }`);
      return fromNumbers(op, Array.from(data), s, dtype, device);
    }
    if (!implied && !(data instanceof Float64Array) && !(data instanceof Int16Array) && !(data instanceof Int8Array) && !(data instanceof Uint32Array) && !(data instanceof Uint8ClampedArray))
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: unsupported array type ${describe(data)}`);
    const dtype = options.dtype ?? implied ?? 'float32';
    if (dtype === implied) return upload(op, data, s, dtype, device);
    return fromNumbers(op, Array.from(data as unknown as ArrayLike<number | bigint>), s, dtype, device);
  }
  if (typeof data !== 'number' && typeof data !== 'bigint' && !Array.isArray(data))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: data must be a TypedArray, a number or nested arrays of numbers, got ${describe(data)}`);
  const inferred = inferShape(data);
  const s = shape === undefined ? inferred : checkShape(op, shape);
  const values: (number | bigint)[] = [];
  if (shape !== undefined && numelOf(s) !== numelOf(inferred)) {
    throw new LorakitRangeError('ERR_SHAPE', `${op}: data has ${numelOf(inferred)} elements, shape [${s.join(', ')}] needs ${numelOf(s)}`);
  }
  flatten(op, data, inferred, values);
  const dtype = options.dtype ?? (values.some((v) => typeof v === 'bigint') ? 'int64' : 'float32');
  return fromNumbers(op, values, s, dtype, device);
}

export function full(shape: readonly number[], value: number, options: TensorOptions = {}): Tensor {
  const op = 'full';
  const device = checkDevice(op, options.device);
  const dtype = options.dtype ?? 'float32';
  if (!isDType(dtype)) throw new LorakitTypeError('ERR_DTYPE', `${op}: unknown dtype ${describe(dtype)}`);
  if (typeof value !== 'number') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: value must be a number, got ${describe(value)}`);
  if (isIntDType(dtype)) checkInteger(op, 'value', value, dtype);
  const t = Tensor.empty(shape, dtype, device, op);
  native().fill({ dst: t.storage(), dtype: DTYPE_CODE[dtype], n: t.numel, value });
  return t;
}

export const zeros = (shape: readonly number[], options: TensorOptions = {}): Tensor => full(shape, 0, options);
export const ones = (shape: readonly number[], options: TensorOptions = {}): Tensor => full(shape, 1, options);

/** start, start+step, ... below end (like Python's range / torch.arange). */
export function arange(start: number, end?: number, step = 1, options: TensorOptions = {}): Tensor {
  const op = 'arange';
  if (end === undefined) [start, end] = [0, start];
  for (const [k, v] of Object.entries({ start, end, step }))
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${k} must be a finite number, got ${describe(v)}`);
  if (step === 0) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: step must not be 0`);
  const n = Math.max(0, Math.ceil((end - start) / step));
  const dtype = options.dtype ?? (Number.isInteger(start) && Number.isInteger(step) ? 'int64' : 'float32');
  const device = checkDevice(op, options.device);
  if (!isDType(dtype)) throw new LorakitTypeError('ERR_DTYPE', `${op}: unknown dtype ${describe(dtype)}`);
  // The ends are enough: the values between them are in range too.
  if (isIntDType(dtype) && n > 0)
    for (const [what, v] of [['start', start], ['the last value', start + step * (n - 1)]] as const)
      checkInteger(op, what, Math.trunc(v), dtype);
  const t = Tensor.empty([n], dtype, device, op);
  native().arange({ dst: t.storage(), dtype: DTYPE_CODE[dtype], n, start, step });
  return t;
}

/**
 * Live tensors and their native bytes, for leak hunting; the freed host blocks kept for reuse by the next
 * tensor of their size class (large ones up to LORAKIT_HOST_CACHE_MB, default 1024; those under 64 KiB up
 * to 64 MiB); and each GPU's allocator.
 */
export function memory(): {
  tensors: number;
  hostBytes: number;
  hostCachedBytes: number;
  /** Per GPU: bytes held by live tensors and scratch, freed blocks kept for reuse, and the peak. */
  gpus: { device: string; allocatedBytes: number; cachedBytes: number; peakBytes: number }[];
} {
  const m = native().memory();
  const gpus = Array.from({ length: gpuCount() }, (_, i) => ({ device: `cuda:${i}`, ...native().gpu!.gpuMemory(i) }));
  return { tensors: liveTensors, hostBytes: m.hostBytes, hostCachedBytes: m.hostCachedBytes, gpus };
}

export interface TensorRequirement {
  dtypes?: readonly DType[];
  ndim?: number;
  minDim?: number;
  shape?: readonly number[];
}

export const FLOATS: readonly DType[] = ['float32', 'bfloat16', 'float16'];

/**
 * Checks that `t` is a live, contiguous tensor that meets `req`, and returns it: the tensor argument check
 * of every op, kept beside the class it tests (lib/check.ts, below this module, holds the others). Devices
 * are checked where the op's storages meet (csrc/napi): every tensor of one call must be on one device.
 */
export function checkTensor(op: string, arg: string, t: unknown, req: TensorRequirement = {}): Tensor {
  if (!(t instanceof Tensor)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${arg}' must be a Tensor, got ${describe(t)}`);
  t.storage(op, arg); // throws DisposedError
  if (!t.contiguous) throw new LorakitTypeError('ERR_NOT_CONTIGUOUS', `${op}: '${arg}' must be contiguous; make a copy with clone()`);
  if (req.dtypes && !req.dtypes.includes(t.dtype))
    throw new LorakitTypeError('ERR_DTYPE', `${op}: '${arg}' must be ${req.dtypes.join(' or ')}, got ${t.dtype}`);
  if (req.ndim !== undefined && t.ndim !== req.ndim)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: '${arg}' must be ${req.ndim}-D, got shape ${shapeStr(t.shape)}`);
  if (req.minDim !== undefined && t.ndim < req.minDim)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: '${arg}' must have at least ${req.minDim} dimensions, got shape ${shapeStr(t.shape)}`);
  if (req.shape && (req.shape.length !== t.ndim || req.shape.some((d, i) => d !== t.shape[i])))
    throw new LorakitRangeError('ERR_SHAPE', `${op}: '${arg}' must have shape ${shapeStr(req.shape)}, got ${shapeStr(t.shape)}`);
  return t;
}
