/**
 * The fused LoRA linear layer:  y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ
 * with W frozen (float32, bfloat16 or NF4), A [r, in], B [out, r] and s the scale (α/r, or α/√r for
 * rsLoRA). The backward pass works from the saved rank-r intermediate xa = dropout(x)·Aᵀ and never forms
 * W + s·B·A. The dropout mask is a function of (seed, element index), so it is regenerated, not stored.
 */
import { native, type AddonOperand } from '../native/binding';
import { DisposedError, LorakitRangeError, LorakitTypeError } from '../errors';
import { checkTensor, FLOATS, Tensor } from '../tensor/tensor';
import { checkNumber, checkOptions, describe, shapeStr } from '../check';
import { NF4Tensor, nativeNF4 } from '../nf4';
import { operand } from '../ops/matmul';

/** The layer's parameters. */
export interface LoraLinearParams {
  /** Base weight [out, in]: float32/bfloat16/float16, or NF4 (QLoRA). */
  weight: Tensor | NF4Tensor;
  /** Base bias [out], float32. */
  bias?: Tensor;
  /** lora_A [r, in], float32. */
  loraA: Tensor;
  /** lora_B [out, r], float32. */
  loraB: Tensor;
  /** The LoRA scale s; see `loraScale` (lib/lora/config.ts). */
  scale: number;
}

export interface LoraDropout {
  /** Dropout probability on the LoRA branch's input, in [0, 1). Default 0. */
  dropout?: number;
  /** Seed of the dropout mask; the backward pass must get the same one. Default 0. */
  seed?: number;
}

export interface LoraForwardResult {
  /** [..., out], float32. */
  y: Tensor;
  /** The saved rank-r intermediate dropout(x)·Aᵀ, [..., r] float32: pass it to the backward pass. */
  xa: Tensor;
}

export interface LoraBackwardOptions extends LoraDropout {
  /** Compute dx (default true). */
  inputGrad?: boolean;
  /** Compute dW, for full fine-tuning of a float base weight (default false). */
  weightGrad?: boolean;
  /** Compute the bias gradient when the layer has a bias (default true). */
  biasGrad?: boolean;
  /**
   * Existing gradient tensors to add into (gradient accumulation) instead of allocating new ones.
   * Each given tensor is returned in the result.
   */
  accumulateInto?: { loraA?: Tensor; loraB?: Tensor; bias?: Tensor; weight?: Tensor };
}

export interface LoraBackwardResult {
  dx?: Tensor;
  dLoraA: Tensor;
  dLoraB: Tensor;
  dBias?: Tensor;
  dWeight?: Tensor;
}

interface Dims {
  m: number;
  in: number;
  out: number;
  r: number;
  lead: number[];
}

function weightShape(op: string, w: unknown): readonly number[] {
  if (w instanceof NF4Tensor) {
    if (w.disposed) throw new DisposedError(`${op}: 'weight' (an NF4Tensor)`);
    return w.shape;
  }
  return checkTensor(op, 'weight', w, { dtypes: FLOATS, ndim: 2 }).shape;
}

function checkParams(op: string, x: Tensor, p: LoraLinearParams): Dims {
  if (p === null || typeof p !== 'object') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: params must be an object, got ${describe(p)}`);
  checkTensor(op, 'x', x, { dtypes: FLOATS, minDim: 1 });
  const ws = weightShape(op, p.weight);
  if (ws.length !== 2) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'weight' must be 2-D [out, in], got ${shapeStr(ws)}`);
  const [out, inF] = [ws[0]!, ws[1]!];
  const inX = x.shape[x.ndim - 1]!;
  if (inX !== inF) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'x' has ${inX} features (shape ${shapeStr(x.shape)}), 'weight' ${shapeStr(ws)} expects ${inF}`);
  checkTensor(op, 'loraA', p.loraA, { dtypes: ['float32'], ndim: 2 });
  const r = p.loraA.shape[0]!;
  checkTensor(op, 'loraA', p.loraA, { shape: [r, inF] });
  if (r < 1) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'loraA' must have rank r >= 1, got shape ${shapeStr(p.loraA.shape)}`);
  checkTensor(op, 'loraB', p.loraB, { dtypes: ['float32'], shape: [out, r] });
  if (p.bias !== undefined) checkTensor(op, 'bias', p.bias, { dtypes: ['float32'], shape: [out] });
  checkNumber(op, 'scale', p.scale);
  const lead = x.shape.slice(0, -1);
  return { m: lead.reduce((a, b) => a * b, 1), in: inF, out, r, lead };
}

function checkDropout(op: string, o: LoraDropout): { dropout: number; seed: number } {
  const dropout = o.dropout === undefined ? 0 : checkNumber(op, 'dropout', o.dropout, { min: 0, max: 1, maxExclusive: true });
  const seed = o.seed === undefined ? 0 : checkNumber(op, 'seed', o.seed, { integer: true, min: 0 });
  return { dropout, seed };
}

function weightOperand(op: string, w: Tensor | NF4Tensor, d: Dims): { w: AddonOperand; release: () => void } {
  if (w instanceof NF4Tensor) {
    const { nf4, release } = nativeNF4(op, w);
    return { w: { rows: d.out, cols: d.in, nf4 }, release };
  }
  return { w: operand(w, d.out, d.in), release: () => {} };
}

/** Forward pass; returns y and the rank-r intermediate the backward pass needs. */
export function linearForward(x: Tensor, params: LoraLinearParams, options?: LoraDropout): LoraForwardResult {
  const op = 'lora.linearForward';
  const d = checkParams(op, x, params);
  const { dropout, seed } = checkDropout(op, checkOptions<LoraDropout>(op, options));
  const { w, release } = weightOperand(op, params.weight, d);
  const y = Tensor.empty([...d.lead, d.out], 'float32', x.device, op);
  const xa = Tensor.empty([...d.lead, d.r], 'float32', x.device, op);
  try {
    native().loraForward({
      m: d.m, in: d.in, out: d.out, r: d.r, scale: params.scale, dropout, seed,
      x: operand(x, d.m, d.in), w, bias: params.bias?.storage() ?? null,
      a: params.loraA.storage(), b: params.loraB.storage(), y: y.storage(), xa: xa.storage(),
    });
  } catch (e) {
    y.dispose();
    xa.dispose();
    throw e;
  } finally {
    release();
  }
  return { y, xa };
}

/** Backward pass from dy [..., out]: dx, dLoraA, dLoraB, and optionally dBias and dWeight. */
export function linearBackward(dy: Tensor, x: Tensor, xa: Tensor, params: LoraLinearParams, options?: LoraBackwardOptions): LoraBackwardResult {
  const op = 'lora.linearBackward';
  const d = checkParams(op, x, params);
  const o = checkOptions<LoraBackwardOptions>(op, options);
  const { dropout, seed } = checkDropout(op, o);
  checkTensor(op, 'dy', dy, { dtypes: FLOATS, shape: [...d.lead, d.out] });
  checkTensor(op, 'xa', xa, { dtypes: ['float32'], shape: [...d.lead, d.r] });
  const wantDx = o.inputGrad ?? true;
  const wantDw = o.weightGrad ?? false;
  const wantDb = (o.biasGrad ?? true) && params.bias !== undefined;
  if (wantDw && params.weight instanceof NF4Tensor)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'weightGrad' needs a float weight; an NF4 weight is frozen`);
  const acc = checkOptions<NonNullable<LoraBackwardOptions['accumulateInto']>>(op, o.accumulateInto);
  const given = [acc.loraA, acc.loraB, acc.bias, acc.weight].filter((t) => t !== undefined).length;
  if (given > 0 && (!acc.loraA || !acc.loraB || (wantDb && !acc.bias) || (wantDw && !acc.weight)))
    throw new LorakitTypeError(
      'ERR_INVALID_ARG',
      `${op}: 'accumulateInto' must hold a tensor for every gradient computed (loraA, loraB${wantDb ? ', bias' : ''}${wantDw ? ', weight' : ''})`,
    );
  const accumulate = given > 0;
  const grad = (name: 'loraA' | 'loraB' | 'bias' | 'weight', shape: number[]): Tensor => {
    const t = acc[name];
    if (t) return checkTensor(op, `accumulateInto.${name}`, t, { dtypes: ['float32'], shape });
    return Tensor.empty(shape, 'float32', x.device, op);
  };
  const owned: Tensor[] = [];
  const make = (name: 'loraA' | 'loraB' | 'bias' | 'weight', shape: number[]): Tensor => {
    const t = grad(name, shape);
    if (t !== acc[name]) owned.push(t);
    return t;
  };
  const { w, release } = weightOperand(op, params.weight, d);
  try {
    const dLoraA = make('loraA', [d.r, d.in]);
    const dLoraB = make('loraB', [d.out, d.r]);
    const dBias = wantDb ? make('bias', [d.out]) : undefined;
    const dWeight = wantDw ? make('weight', [d.out, d.in]) : undefined;
    const dx = wantDx ? Tensor.empty([...d.lead, d.in], 'float32', x.device, op) : undefined;
    if (dx) owned.push(dx);
    native().loraBackward({
      m: d.m, in: d.in, out: d.out, r: d.r, scale: params.scale, dropout, seed, accumulate,
      dy: operand(dy, d.m, d.out), x: operand(x, d.m, d.in), w, xa: xa.storage(),
      a: params.loraA.storage(), b: params.loraB.storage(),
      dx: dx?.storage() ?? null, da: dLoraA.storage(), db: dLoraB.storage(),
      dbias: dBias?.storage() ?? null, dw: dWeight?.storage() ?? null,
    });
    return { dx, dLoraA, dLoraB, dBias, dWeight };
  } catch (e) {
    for (const t of owned) t.dispose();
    throw e;
  } finally {
    release();
  }
}
