/**
 * Argument checks, the one module for them (core tier: it imports only errors and the native binding).
 * Each check names the op, the argument, what it expected and what it got, so every layer above reports a
 * wrong value in the same words. Tensor arguments are checked by `checkTensor` beside the Tensor
 * class (lib/tensor/tensor.ts), which is built on these.
 *
 * Two ways to write a value in a message, for two kinds of value: `describe` for an argument handed over in
 * code (its kind and value: `number NaN`, `an array of length 3`), `show` for a value read from a file (its
 * JSON, cut short so a hostile file cannot flood the message).
 */
import { gpuCount, loadedBackend } from './native/binding';
import { LorakitRangeError, LorakitTypeError } from './errors';

/** Where a tensor's bytes live: host memory, or GPU N ('cuda' is 'cuda:0'; AMD GPUs use the same names). */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`;

/** An argument's kind and value, for a message. */
export function describe(x: unknown): string {
  if (x === null) return 'null';
  if (Array.isArray(x)) return `an array of length ${x.length}`;
  if (ArrayBuffer.isView(x)) return `a ${x.constructor.name}`;
  if (typeof x === 'object') return `an object (${(x as object).constructor?.name ?? 'Object'})`;
  if (typeof x === 'string') return `'${x}'`;
  return `${typeof x} ${String(x)}`;
}

/** A JSON value read from a file, for a message, cut short. */
export function show(x: unknown): string {
  if (x === undefined) return 'nothing';
  const s = JSON.stringify(x) ?? describe(x);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** A non-null, non-array object, as JSON objects and option bags are. */
export function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function checkShape(op: string, shape: unknown): number[] {
  if (!Array.isArray(shape))
    throw new LorakitTypeError('ERR_SHAPE', `${op}: shape must be an array of non-negative integers, got ${describe(shape)}`);
  for (const d of shape)
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      throw new LorakitRangeError(
        'ERR_SHAPE',
        `${op}: shape must be an array of non-negative integers, got [${shape.map(String).join(', ')}]`,
      );
  return [...(shape as number[])];
}

/** Validates a device name against what loaded, and returns its canonical form ('cuda' -> 'cuda:0'). */
export function checkDevice(op: string, device: unknown): Device {
  if (device === undefined || device === 'cpu') return 'cpu';
  const m = typeof device === 'string' ? /^cuda(?::(\d+))?$/.exec(device) : null;
  if (!m) throw new LorakitTypeError('ERR_DEVICE', `${op}: device must be 'cpu' or 'cuda[:N]', got ${describe(device)}`);
  const ordinal = m[1] === undefined ? 0 : Number(m[1]);
  const count = gpuCount();
  if (count === 0)
    throw new LorakitTypeError(
      'ERR_DEVICE',
      `${op}: device '${device}' is not available: no GPU backend is active (${loadedBackend().gpuUnavailableReason ?? 'unknown reason'})`,
    );
  if (ordinal >= count)
    throw new LorakitTypeError('ERR_DEVICE', `${op}: device '${device}' does not exist: ${count} GPU(s) visible (cuda:0..cuda:${count - 1})`);
  return `cuda:${ordinal}`;
}

/** An op's numeric argument: finite, and optionally an integer within bounds. */
export function checkNumber(op: string, arg: string, v: unknown, opts: { min?: number; max?: number; integer?: boolean; maxExclusive?: boolean } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${arg}' must be a finite number, got ${describe(v)}`);
  if (opts.integer && !Number.isSafeInteger(v)) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be an integer, got ${v}`);
  if (opts.min !== undefined && v < opts.min) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be >= ${opts.min}, got ${v}`);
  if (opts.max !== undefined && (opts.maxExclusive ? v >= opts.max : v > opts.max))
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${arg}' must be ${opts.maxExclusive ? '<' : '<='} ${opts.max}, got ${v}`);
  return v;
}

/**
 * A setting of a workflow's options (train, sweep): an integer >= `min`, or with `max` a number in
 * [min, max]. Worded as a range, since a user picks settings from documented ranges.
 */
export function checkSetting(op: string, name: string, v: unknown, range: { integer: true; min: number } | { min: number; max?: number }): number {
  if ('integer' in range) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < range.min)
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${name}' must be an integer >= ${range.min}, got ${describe(v)}`);
    return v;
  }
  const max = range.max ?? Infinity;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < range.min || v > max)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: '${name}' must be a number in [${range.min}, ${max}], got ${describe(v)}`);
  return v;
}

/** One of a fixed set of values (strings or booleans); `words` is how a message lists them. */
export function checkChoice<T>(op: string, name: string, v: unknown, choices: readonly T[], words: string): T {
  if (!choices.includes(v as T)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${name}' must be ${words}, got ${describe(v)}`);
  return v as T;
}

/** An options argument: undefined (all defaults) or a plain object. */
export function checkOptions<T extends object>(op: string, options: unknown): Partial<T> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: options must be an object, got ${describe(options)}`);
  return options as Partial<T>;
}
