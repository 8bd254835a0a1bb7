/**
 * The transformer layer ops, forward and backward, on float32 CPU tensors. Backward functions return
 * new tensors for activation gradients and add parameter gradients into tensors the caller passes
 * (`grads`), so gradient accumulation needs no extra pass.
 */
import { native } from '../native/binding';
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { Tensor, checkTensor } from '../tensor/tensor';
import { checkNumber, checkOptions, shapeStr } from '../check';

const F32 = ['float32'] as const;

function lastDim(op: string, arg: string, t: Tensor): { rows: number; dim: number } {
  checkTensor(op, arg, t, { dtypes: F32, minDim: 1 });
  const dim = t.shape[t.ndim - 1]!;
  return { rows: t.numel / Math.max(dim, 1), dim };
}

const like = (t: Tensor, op: string) => Tensor.empty(t.shape, 'float32', t.device, op);

export interface NormSaved {
  mean?: Tensor;
  rstd: Tensor;
}

/** LayerNorm over the last dimension; returns y and the row statistics the backward pass needs. */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor | undefined, eps: number): { y: Tensor; saved: NormSaved } {
  const op = 'layerNorm';
  const { rows, dim } = lastDim(op, 'x', x);
  checkTensor(op, 'weight', weight, { dtypes: F32, shape: [dim] });
  if (bias) checkTensor(op, 'bias', bias, { dtypes: F32, shape: [dim] });
  checkNumber(op, 'eps', eps, { min: 0 });
  const y = like(x, op), mean = Tensor.empty([rows], 'float32', x.device, op), rstd = Tensor.empty([rows], 'float32', x.device, op);
  native().layerNormForward({ x: x.storage(), w: weight.storage(), b: bias?.storage(), y: y.storage(), mean: mean.storage(), rstd: rstd.storage(), rows, dim, eps });
  return { y, saved: { mean, rstd } };
}

/** dx of LayerNorm; adds into grads.weight / grads.bias when given. */
export function layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, saved: NormSaved, grads: { weight?: Tensor; bias?: Tensor } = {}): Tensor {
  const op = 'layerNorm.backward';
  const { rows, dim } = lastDim(op, 'x', x);
  checkTensor(op, 'dy', dy, { dtypes: F32, shape: x.shape });
  checkTensor(op, 'weight', weight, { dtypes: F32, shape: [dim] });
  if (!saved?.mean) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'saved' must be what layerNorm returned`);
  checkTensor(op, 'saved.mean', saved.mean, { dtypes: F32, shape: [rows] });
  checkTensor(op, 'saved.rstd', saved.rstd, { dtypes: F32, shape: [rows] });
  if (grads.weight) checkTensor(op, 'grads.weight', grads.weight, { dtypes: F32, shape: [dim] });
  if (grads.bias) checkTensor(op, 'grads.bias', grads.bias, { dtypes: F32, shape: [dim] });
  const dx = like(x, op);
  native().layerNormBackward({
    dy: dy.storage(), x: x.storage(), w: weight.storage(), mean: saved.mean.storage(), rstd: saved.rstd.storage(),
    dx: dx.storage(), dw: grads.weight?.storage(), db: grads.bias?.storage(), rows, dim,
  });
  return dx;
}

/** RMSNorm (Llama): y = x / sqrt(mean(x²) + eps) * weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): { y: Tensor; saved: NormSaved } {
  const op = 'rmsNorm';
  const { rows, dim } = lastDim(op, 'x', x);
  checkTensor(op, 'weight', weight, { dtypes: F32, shape: [dim] });
  checkNumber(op, 'eps', eps, { min: 0 });
  const y = like(x, op), rstd = Tensor.empty([rows], 'float32', x.device, op);
  native().rmsNormForward({ x: x.storage(), w: weight.storage(), y: y.storage(), rstd: rstd.storage(), rows, dim, eps });
  return { y, saved: { rstd } };
}

export function rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, saved: NormSaved, grads: { weight?: Tensor } = {}): Tensor {
  const op = 'rmsNorm.backward';
  const { rows, dim } = lastDim(op, 'x', x);
  checkTensor(op, 'dy', dy, { dtypes: F32, shape: x.shape });
  checkTensor(op, 'weight', weight, { dtypes: F32, shape: [dim] });
  checkTensor(op, 'saved.rstd', saved?.rstd, { dtypes: F32, shape: [rows] });
  if (grads.weight) checkTensor(op, 'grads.weight', grads.weight, { dtypes: F32, shape: [dim] });
  const dx = like(x, op);
  native().rmsNormBackward({ dy: dy.storage(), x: x.storage(), w: weight.storage(), rstd: saved.rstd.storage(), dx: dx.storage(), dw: grads.weight?.storage(), rows, dim });
  return dx;
}

export interface RopeOptions {
  heads: number;
  theta: number;
  /** Positions per token ([batch, seq] int64); by default 0..seq-1 in every sequence. */
  positions?: Tensor;
  /** Apply the transpose rotation (the backward pass). */
  inverse?: boolean;
}

/** Rotary embedding applied in place to x [batch, seq, heads * headDim] (rotate-half layout). */
export function ropeInPlace(x: Tensor, options: RopeOptions): Tensor {
  const op = 'rope';
  const o = checkOptions<RopeOptions>(op, options);
  checkTensor(op, 'x', x, { dtypes: F32, ndim: 3 });
  const heads = checkNumber(op, 'heads', o.heads, { integer: true, min: 1 });
  const [batch, seq, width] = x.shape as [number, number, number];
  if (width % heads !== 0 || (width / heads) % 2 !== 0)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'x' width ${width} must be heads (${heads}) times an even head size`);
  if (o.positions) checkTensor(op, 'positions', o.positions, { dtypes: ['int64'], shape: [batch, seq] });
  native().rope({
    x: x.storage(), tokens: batch * seq, heads, headDim: width / heads, seq, pos: o.positions?.storage(),
    theta: checkNumber(op, 'theta', o.theta, { min: 0 }), inverse: o.inverse === true,
  });
  return x;
}

export interface AttentionOptions {
  heads: number;
  kvHeads?: number;
  /** Score scale; 1/sqrt(headDim) by default. */
  scale?: number;
  /**
   * Packed sequences: int64 [batch, seq], the index in its row where each token's document starts;
   * a token then attends only to earlier tokens of its own document. A start outside [0, the token's
   * position] is refused on the CPU; on a GPU it is clamped to that range, since checking it would copy
   * the tensor back to the host on every call.
   */
  docStarts?: Tensor;
}

interface AttnDims {
  batch: number;
  seq: number;
  hq: number;
  hkv: number;
  d: number;
  scale: number;
  starts?: Tensor;
}

function attnDims(op: string, q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttnDims {
  const o = checkOptions<AttentionOptions>(op, options);
  checkTensor(op, 'q', q, { dtypes: F32, ndim: 3 });
  const hq = checkNumber(op, 'heads', o.heads, { integer: true, min: 1 });
  const hkv = o.kvHeads === undefined ? hq : checkNumber(op, 'kvHeads', o.kvHeads, { integer: true, min: 1 });
  const [batch, seq, width] = q.shape as [number, number, number];
  if (width % hq !== 0 || hq % hkv !== 0)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'q' width ${width} must split into ${hq} heads, a multiple of ${hkv} kv heads`);
  const d = width / hq;
  checkTensor(op, 'k', k, { dtypes: F32, shape: [batch, seq, hkv * d] });
  checkTensor(op, 'v', v, { dtypes: F32, shape: [batch, seq, hkv * d] });
  const scale = o.scale === undefined ? 1 / Math.sqrt(d) : checkNumber(op, 'scale', o.scale);
  if (o.docStarts !== undefined) checkTensor(op, 'docStarts', o.docStarts, { dtypes: ['int64'], shape: [batch, seq] });
  return { batch, seq, hq, hkv, d, scale, starts: o.docStarts };
}

/** Causal attention with grouped-query heads; q [B, T, H·D], k/v [B, T, Hkv·D]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): { out: Tensor; lse: Tensor } {
  const op = 'attention';
  const d = attnDims(op, q, k, v, options);
  const out = like(q, op), lse = Tensor.empty([d.batch, d.hq, d.seq], 'float32', q.device, op);
  native().attentionForward({ q: q.storage(), k: k.storage(), v: v.storage(), out: out.storage(), lse: lse.storage(), ...d, starts: d.starts?.storage() });
  return { out, lse };
}

export function attentionBackward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, options: AttentionOptions): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const op = 'attention.backward';
  const d = attnDims(op, q, k, v, options);
  checkTensor(op, 'dout', dout, { dtypes: F32, shape: q.shape });
  checkTensor(op, 'out', out, { dtypes: F32, shape: q.shape });
  checkTensor(op, 'lse', lse, { dtypes: F32, shape: [d.batch, d.hq, d.seq] });
  const dq = like(q, op), dk = like(k, op), dv = like(v, op);
  native().attentionBackward({
    q: q.storage(), k: k.storage(), v: v.storage(), out: out.storage(), lse: lse.storage(), dout: dout.storage(),
    dq: dq.storage(), dk: dk.storage(), dv: dv.storage(), ...d, starts: d.starts?.storage(),
  });
  return { dq, dk, dv };
}

/** GPT-2's gelu_new (tanh approximation). */
export function gelu(x: Tensor): Tensor {
  checkTensor('gelu', 'x', x, { dtypes: F32 });
  const y = like(x, 'gelu');
  native().geluForward({ x: x.storage(), y: y.storage(), n: x.numel });
  return y;
}

export function geluBackward(dy: Tensor, x: Tensor): Tensor {
  const op = 'gelu.backward';
  checkTensor(op, 'x', x, { dtypes: F32 });
  checkTensor(op, 'dy', dy, { dtypes: F32, shape: x.shape });
  const dx = like(x, op);
  native().geluBackward({ dy: dy.storage(), x: x.storage(), dx: dx.storage(), n: x.numel });
  return dx;
}

/** silu(gate) · up, the Llama MLP's gating. */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const op = 'swiglu';
  checkTensor(op, 'gate', gate, { dtypes: F32 });
  checkTensor(op, 'up', up, { dtypes: F32, shape: gate.shape });
  const y = like(gate, op);
  native().swigluForward({ gate: gate.storage(), up: up.storage(), y: y.storage(), n: gate.numel });
  return y;
}

export function swigluBackward(dy: Tensor, gate: Tensor, up: Tensor): { dGate: Tensor; dUp: Tensor } {
  const op = 'swiglu.backward';
  checkTensor(op, 'gate', gate, { dtypes: F32 });
  checkTensor(op, 'up', up, { dtypes: F32, shape: gate.shape });
  checkTensor(op, 'dy', dy, { dtypes: F32, shape: gate.shape });
  const dGate = like(gate, op), dUp = like(gate, op);
  native().swigluBackward({ dy: dy.storage(), gate: gate.storage(), up: up.storage(), dgate: dGate.storage(), dup: dUp.storage(), n: gate.numel });
  return { dGate, dUp };
}

/** Rows of `table` [vocab, dim] picked by int64 ids of any shape: result [...ids.shape, dim]. */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  const op = 'embedding';
  checkTensor(op, 'ids', ids, { dtypes: ['int64'] });
  checkTensor(op, 'table', table, { dtypes: F32, ndim: 2 });
  const [vocab, dim] = table.shape as [number, number];
  const out = Tensor.empty([...ids.shape, dim], 'float32', table.device, op);
  native().embeddingForward({ ids: ids.storage(), table: table.storage(), out: out.storage(), n: ids.numel, dim, vocab });
  return out;
}

/** Adds dout's rows into dTable at the ids (repeated ids sum, deterministically). */
export function embeddingBackward(ids: Tensor, dout: Tensor, dTable: Tensor): void {
  const op = 'embedding.backward';
  checkTensor(op, 'ids', ids, { dtypes: ['int64'] });
  checkTensor(op, 'dTable', dTable, { dtypes: F32, ndim: 2 });
  const [vocab, dim] = dTable.shape as [number, number];
  checkTensor(op, 'dout', dout, { dtypes: F32, shape: [...ids.shape, dim] });
  native().embeddingBackward({ ids: ids.storage(), dout: dout.storage(), dtable: dTable.storage(), n: ids.numel, dim, vocab });
}

export interface CrossEntropyOptions {
  /** Label value that is skipped (default -100, as transformers). */
  ignoreIndex?: number;
  /**
   * Overwrite the logits with d(mean loss)/d(logits), scaled by gradScale (default 1). The
   * probabilities are never stored; pass a copy if the logits are still needed.
   */
  gradInPlace?: boolean;
  gradScale?: number;
}

/** Mean cross-entropy of logits [N, V] against int64 labels [N]; ignored labels do not count. */
export function crossEntropy(logits: Tensor, labels: Tensor, options?: CrossEntropyOptions): { loss: number; count: number } {
  const op = 'crossEntropy';
  const o = checkOptions<CrossEntropyOptions>(op, options);
  checkTensor(op, 'logits', logits, { dtypes: F32, ndim: 2 });
  const [rows, vocab] = logits.shape as [number, number];
  checkTensor(op, 'labels', labels, { dtypes: ['int64'], shape: [rows] });
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : checkNumber(op, 'ignoreIndex', o.ignoreIndex, { integer: true });
  const scale = o.gradScale === undefined ? 1 : checkNumber(op, 'gradScale', o.gradScale);
  const r = native().crossEntropy({
    logits: logits.storage(), labels: labels.storage(), rows, vocab, ignoreIndex, gradScale: scale, wantGrad: o.gradInPlace === true,
  });
  // With no counted row the mean is NaN, as in torch.
  return { loss: r.count > 0 ? r.loss / r.count : NaN, count: r.count };
}

/** Copies (or adds) a column slice between 2-D row-major tensors: dst[:, dstCol:+cols] (+)= src[:, srcCol:+cols]. */
export function copyColumns(src: Tensor, srcCol: number, dst: Tensor, dstCol: number, cols: number, accumulate = false): void {
  const op = 'copyColumns';
  checkTensor(op, 'src', src, { dtypes: F32, minDim: 1 });
  checkTensor(op, 'dst', dst, { dtypes: F32, minDim: 1 });
  const sw = src.shape[src.ndim - 1]!, dw = dst.shape[dst.ndim - 1]!;
  const rows = src.numel / Math.max(sw, 1);
  if (dst.numel / Math.max(dw, 1) !== rows)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'src' ${shapeStr(src.shape)} and 'dst' ${shapeStr(dst.shape)} have different row counts`);
  if (srcCol < 0 || srcCol + cols > sw || dstCol < 0 || dstCol + cols > dw || !Number.isInteger(cols) || cols < 0)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: columns [${srcCol}, ${srcCol + cols}) of 'src' (width ${sw}) or [${dstCol}, ${dstCol + cols}) of 'dst' (width ${dw}) are out of range`);
  native().copy2d({ src: src.storage(), srcLd: sw, srcOffset: srcCol, dst: dst.storage(), dstLd: dw, dstOffset: dstCol, rows, cols, accumulate });
}

/** Copies a block of rows between 2-D row-major tensors of one width: dst[dstRow:+rows] = src[srcRow:+rows]. */
export function copyRows(src: Tensor, srcRow: number, dst: Tensor, dstRow: number, rows: number): void {
  const op = 'copyRows';
  checkTensor(op, 'src', src, { dtypes: F32, ndim: 2 });
  checkTensor(op, 'dst', dst, { dtypes: F32, ndim: 2 });
  const width = src.shape[1]!;
  if (dst.shape[1] !== width) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'src' ${shapeStr(src.shape)} and 'dst' ${shapeStr(dst.shape)} differ in width`);
  if (!Number.isInteger(rows) || rows < 0 || srcRow < 0 || srcRow + rows > src.shape[0]! || dstRow < 0 || dstRow + rows > dst.shape[0]!)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: rows [${srcRow}, ${srcRow + rows}) of 'src' (${src.shape[0]} rows) or [${dstRow}, ${dstRow + rows}) of 'dst' (${dst.shape[0]} rows) are out of range`);
  if (rows === 0 || width === 0) return;
  // One row of width x rows: the block is contiguous in both.
  native().copy2d({ src: src.storage(), srcLd: rows * width, srcOffset: srcRow * width, dst: dst.storage(), dstLd: rows * width, dstOffset: dstRow * width, rows: 1, cols: rows * width, accumulate: false });
}

/** y += alpha · x (same number of elements). */
export function addInPlace(y: Tensor, x: Tensor, alpha = 1): Tensor {
  const op = 'addInPlace';
  checkTensor(op, 'y', y, { dtypes: F32 });
  checkTensor(op, 'x', x, { dtypes: F32 });
  if (x.numel !== y.numel) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'x' ${shapeStr(x.shape)} and 'y' ${shapeStr(y.shape)} differ in size`);
  native().axpy({ x: x.storage(), y: y.storage(), alpha: checkNumber(op, 'alpha', alpha), n: x.numel });
  return y;
}
