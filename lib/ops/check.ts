/** Argument checks shared by every op: each names the op, the argument, what it expected and what it got. */
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { type DType } from '../tensor/dtype';
import { Tensor, describe } from '../tensor/tensor';

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export interface TensorRequirement {
  dtypes?: readonly DType[];
  ndim?: number;
  minDim?: number;
  shape?: readonly number[];
}

/**
 * Checks that `t` is a live, contiguous tensor that meets `req`, and returns it. Devices are checked where
 * the op's storages meet (csrc/napi): every tensor of one call must be on one device.
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

export function checkNumber(op: string, arg: string, v: unknown, opts: { min?: number; max?: number; integer?: boolean; maxExclusive?: boolean } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${arg}' must be a finite number, got ${describe(v)}`);
  if (opts.integer && !Number.isSafeInteger(v)) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be an integer, got ${v}`);
  if (opts.min !== undefined && v < opts.min) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be >= ${opts.min}, got ${v}`);
  if (opts.max !== undefined && (opts.maxExclusive ? v >= opts.max : v > opts.max))
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be ${opts.maxExclusive ? '<' : '<='} ${opts.max}, got ${v}`);
  return v;
}

export function checkOptions<T extends object>(op: string, options: unknown): Partial<T> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: options must be an object, got ${describe(options)}`);
  return options as Partial<T>;
}

export const FLOATS: readonly DType[] = ['float32', 'bfloat16', 'float16'];
