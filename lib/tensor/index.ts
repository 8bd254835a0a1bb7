export { Tensor, tensor, zeros, ones, full, arange, memory, type TensorOptions, type NestedArray } from './tensor';
export { type Device } from '../check';
export { rand, randn, manualSeed, type RandomOptions } from './random';
export { type DType, DTYPES, type TypedArrayOf } from './dtype';
