/** Dense linear algebra on the native float64 solver (csrc/cpu/linalg.cc, csrc/gpu/linalg.cu). */
import { native, type AddonStorage } from '../native/binding';
import { LorakitRangeError } from '../errors';
import { checkNumber, shapeStr } from '../check';
import { FLOATS, Tensor, checkTensor } from '../tensor/tensor';

export interface LeftSVD {
  /** Left singular vectors, row-major [m, k]: column j belongs to s[j]; its largest-magnitude component is positive. */
  u: Float64Array;
  /** Singular values, descending. */
  s: Float64Array;
}

function scratch(bytes: number): AddonStorage {
  return new (native().Storage)(Math.max(bytes, 8), 'cpu');
}

/**
 * The top-k left singular vectors and singular values of a 2-D float tensor (float64 arithmetic; the
 * input is rounded to float32 first). k defaults to min(m, n), every vector with a singular value.
 */
export function svdLeft(t: Tensor, k?: number): LeftSVD {
  const op = 'analysis.svdLeft';
  checkTensor(op, 't', t, { dtypes: FLOATS, ndim: 2 });
  const [m, n] = [t.shape[0]!, t.shape[1]!];
  if (m === 0 || n === 0) throw new LorakitRangeError('ERR_SHAPE', `${op}: 't' must not be empty, got shape ${shapeStr(t.shape)}`);
  const kk = k === undefined ? Math.min(m, n) : checkNumber(op, 'k', k, { integer: true, min: 1, max: Math.min(m, n) });
  const f = t.dtype === 'float32' ? t : t.to('float32');
  const u = scratch(m * kk * 8), s = scratch(kk * 8);
  try {
    native().svdLeft({ w: f.storage(), m, n, k: kk, u, s });
    const out = { u: new Float64Array(m * kk), s: new Float64Array(kk) };
    u.download(out.u);
    s.download(out.s);
    return out;
  } finally {
    u.free();
    s.free();
    if (f !== t) f.dispose();
  }
}
