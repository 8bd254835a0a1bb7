import { native } from '../native/binding';
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { isDType, isFloat } from './dtype';
import { Tensor, type TensorOptions } from './tensor';
import { checkDevice, describe } from '../check';

/**
 * Random tensors from a counter-based generator (Philox4x32-10): element i of a draw is a function of
 * (seed, offset + i) only, so the numbers are the same on every machine and for every thread count.
 * With an explicit `seed` a draw starts at offset 0; without one it continues the global stream.
 */
export interface RandomOptions extends TensorOptions {
  seed?: number;
}

let globalSeed = 0;
let globalOffset = 0;

function checkSeed(op: string, seed: unknown): void {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: seed must be a non-negative safe integer, got ${describe(seed)}`);
}

/** Resets the global stream used by draws without an explicit seed. */
export function manualSeed(seed: number): void {
  checkSeed('manualSeed', seed);
  globalSeed = seed;
  globalOffset = 0;
}

function draw(op: string, shape: readonly number[], options: RandomOptions, normal: boolean, p0: number, p1: number): Tensor {
  const dtype = options.dtype ?? 'float32';
  if (!isDType(dtype) || !isFloat(dtype))
    throw new LorakitTypeError('ERR_DTYPE', `${op}: dtype must be float32, bfloat16 or float16, got ${describe(dtype)}`);
  const device = checkDevice(op, options.device);
  const f = Tensor.empty(shape, 'float32', device, op);
  let seed: number, offset: number;
  if (options.seed !== undefined) {
    checkSeed(op, options.seed);
    seed = options.seed;
    offset = 0;
  } else {
    seed = globalSeed;
    offset = globalOffset;
    globalOffset += f.numel;
  }
  const args = { dst: f.storage(), n: f.numel, seed, offset, p0, p1 };
  if (normal) native().randNormal(args);
  else native().randUniform(args);
  if (dtype === 'float32') return f;
  try {
    return f.to(dtype);
  } finally {
    f.dispose();
  }
}

/** Normal samples, mean 0 and std 1 unless given. */
export function randn(shape: readonly number[], options: RandomOptions & { mean?: number; std?: number } = {}): Tensor {
  return draw('randn', shape, options, true, options.mean ?? 0, options.std ?? 1);
}

/** Uniform samples in [low, high), [0, 1) unless given. */
export function rand(shape: readonly number[], options: RandomOptions & { low?: number; high?: number } = {}): Tensor {
  return draw('rand', shape, options, false, options.low ?? 0, options.high ?? 1);
}
