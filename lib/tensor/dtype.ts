/** Element types a Tensor can hold. bfloat16 and float16 travel as raw bits in a Uint16Array. */
export type DType = 'float32' | 'bfloat16' | 'float16' | 'int32' | 'int64' | 'uint8';

export const DTYPES: readonly DType[] = ['float32', 'bfloat16', 'float16', 'int32', 'int64', 'uint8'];

/** Codes shared with csrc/ops.h (enum class DType). */
export const DTYPE_CODE: Readonly<Record<DType, number>> = {
  float32: 0,
  bfloat16: 1,
  float16: 2,
  int32: 3,
  int64: 4,
  uint8: 5,
};

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float32: 4,
  bfloat16: 2,
  float16: 2,
  int32: 4,
  int64: 8,
  uint8: 1,
};

export interface TypedArrayOf {
  float32: Float32Array;
  bfloat16: Uint16Array;
  float16: Uint16Array;
  int32: Int32Array;
  int64: BigInt64Array;
  uint8: Uint8Array;
}

export type AnyTypedArray = TypedArrayOf[DType];

export const FLOAT_DTYPES: readonly DType[] = ['float32', 'bfloat16', 'float16'];

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && (DTYPES as readonly string[]).includes(x);
}

export function isFloat(d: DType): boolean {
  return d === 'float32' || d === 'bfloat16' || d === 'float16';
}

export function typedArrayFor<D extends DType>(dtype: D, length: number): TypedArrayOf[D] {
  switch (dtype) {
    case 'float32':
      return new Float32Array(length) as TypedArrayOf[D];
    case 'bfloat16':
    case 'float16':
      return new Uint16Array(length) as TypedArrayOf[D];
    case 'int32':
      return new Int32Array(length) as TypedArrayOf[D];
    case 'int64':
      return new BigInt64Array(length) as TypedArrayOf[D];
    default:
      return new Uint8Array(length) as TypedArrayOf[D];
  }
}

/** The dtype a TypedArray implies; Uint16Array is ambiguous (bfloat16 or float16) and gives undefined. */
export function dtypeOfArray(a: ArrayBufferView): DType | undefined {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof BigInt64Array) return 'int64';
  if (a instanceof Uint8Array) return 'uint8';
  return undefined;
}

/** bfloat16 bits to a number (exact). */
export function bf16ToNumber(bits: number): number {
  const f = new Float32Array(new Uint32Array([bits << 16]).buffer);
  return f[0]!;
}

/** float16 bits to a number (exact). */
export function f16ToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
