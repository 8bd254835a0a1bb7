import { native, type AddonNF4, type AddonOperand } from '../native/binding';
import { NF4Tensor, nativeNF4 } from '../nf4';
import { LorakitRangeError } from '../errors';
import { DTYPE_CODE, type DType } from '../tensor/dtype';
import { Tensor, FLOATS, checkTensor } from '../tensor/tensor';
import { checkNumber, checkOptions, shapeStr } from '../check';

export interface MatmulOptions {
  transposeA?: boolean;
  transposeB?: boolean;
  /** Added to every row of the result: shape [n], float32. */
  bias?: Tensor;
  /** Scales the product (default 1). */
  alpha?: number;
  /** Result dtype; by default the inputs' dtype when they agree, else float32. */
  outDtype?: DType;
}

/** @internal A tensor viewed as a stored [rows, cols] matrix. */
export function operand(t: Tensor, rows: number, cols: number, trans = false): AddonOperand {
  return { s: t.storage(), dtype: DTYPE_CODE[t.dtype], rows, cols, trans };
}

/**
 * op(a) · op(b) with float32 accumulation. `a` may have leading batch dimensions ([..., m, k], not
 * with transposeA); `b` is 2-D. Inputs may be float32, bfloat16 or float16, mixed.
 */
export function matmul(a: Tensor, b: Tensor | NF4Tensor, options?: MatmulOptions): Tensor {
  const op = 'ops.matmul';
  const o = checkOptions<MatmulOptions>(op, options);
  checkTensor(op, 'a', a, { dtypes: FLOATS, minDim: 2 });
  const quantized = b instanceof NF4Tensor ? nativeNF4(op, b, 'b') : undefined;
  try {
    return matmulChecked(op, a, b, o, quantized?.nf4);
  } finally {
    quantized?.release();
  }
}

function matmulChecked(op: string, a: Tensor, b: Tensor | NF4Tensor, o: Partial<MatmulOptions>, nf4?: AddonNF4): Tensor {
  const transA = o.transposeA === true;
  const transB = o.transposeB === true;
  if (!nf4) checkTensor(op, 'b', b, { dtypes: FLOATS, ndim: 2 });
  else if (b.shape.length !== 2) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'b' must be 2-D, got shape ${shapeStr(b.shape)}`);
  if (transA && a.ndim !== 2) throw new LorakitRangeError('ERR_SHAPE', `${op}: transposeA needs a 2-D 'a', got shape ${shapeStr(a.shape)}`);
  const lead = a.shape.slice(0, -2);
  const ar = a.shape[a.ndim - 2]!, ac = a.shape[a.ndim - 1]!;
  const m = (transA ? ac : ar) * lead.reduce((x, y) => x * y, 1);
  const k = transA ? ar : ac;
  const [br, bc] = [b.shape[0]!, b.shape[1]!];
  const kb = transB ? bc : br;
  const n = transB ? br : bc;
  if (k !== kb)
    throw new LorakitRangeError(
      'ERR_SHAPE',
      `${op}: inner dimensions differ: a ${shapeStr(a.shape)}${transA ? 'ᵀ' : ''} has k=${k}, b ${shapeStr(b.shape)}${transB ? 'ᵀ' : ''} has k=${kb}`,
    );
  if (o.bias !== undefined) checkTensor(op, 'bias', o.bias, { dtypes: ['float32'], shape: [n] });
  const alpha = o.alpha === undefined ? 1 : checkNumber(op, 'alpha', o.alpha);
  const outDtype = o.outDtype ?? (a.dtype === b.dtype ? a.dtype : 'float32');
  if (!FLOATS.includes(outDtype)) throw new LorakitRangeError('ERR_DTYPE', `${op}: outDtype must be float32, bfloat16 or float16, got ${String(outDtype)}`);
  const outShape = [...lead, transA ? ac : ar, n];
  const c = Tensor.empty(outShape, 'float32', a.device, op);
  native().gemm({
    a: operand(a, transA ? ar : m, transA ? ac : k, transA),
    b: nf4 ? { rows: br, cols: bc, trans: transB, nf4 } : operand(b as Tensor, br, bc, transB),
    c: c.storage(),
    m,
    n,
    k,
    alpha,
    beta: 0,
    bias: o.bias?.storage() ?? null,
  });
  if (outDtype === 'float32') return c;
  try {
    return c.to(outDtype);
  } finally {
    c.dispose();
  }
}
