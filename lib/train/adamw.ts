/**
 * Fused multi-tensor AdamW with torch.optim.AdamW's semantics (decoupled weight decay, bias-corrected
 * moments), per-group hyperparameters, fp32 moments, and clip-by-global-norm folded into the same pass.
 * A whole step over every parameter is one native call.
 */
import { native, type AddonAdamWTensor } from '../native/binding';
import { DisposedError, LorakitRangeError, LorakitTypeError } from '../errors';
import { Tensor, zeros } from '../tensor/tensor';
import { describe } from '../check';
import { checkNumber, checkOptions, shapeStr } from '../check';
import { checkTensor } from '../tensor/tensor';

export interface AdamWHyper {
  lr: number;
  betas: [number, number];
  eps: number;
  /** Decoupled: each step multiplies the parameter by (1 - lr·weightDecay). */
  weightDecay: number;
}

export interface ParamGroup extends Partial<AdamWHyper> {
  params: Tensor[];
}

export interface StepOptions {
  /** Multiply the gradients by this first (1/accumulation steps, for example); default 1. */
  gradScale?: number;
  /** Clip the global gradient norm (of the scaled gradients) to this value before the update (torch's clip_grad_norm_). */
  maxGradNorm?: number;
  /** Override every group's learning rate for this step (a scheduler's value). */
  lr?: number;
}

export interface StepResult {
  /** Global L2 norm of the (scaled) gradients before clipping (computed only when clipping). */
  gradNorm?: number;
  /** The factor the gradients were multiplied by (1 when not clipped). */
  clipScale: number;
}

/**
 * A step as a value: a non-finite gradient norm is an outcome the caller decides about (the trainer
 * stops the run naming its step), not an error to recognise by its message.
 */
export type StepOutcome = ({ ok: true } & StepResult) | { ok: false; reason: 'grad-norm'; gradNorm: number };

const DEFAULTS: AdamWHyper = { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-2 };

function checkHyper(op: string, where: string, h: Partial<AdamWHyper>, base: AdamWHyper): AdamWHyper {
  const lr = h.lr === undefined ? base.lr : checkNumber(op, `${where}lr`, h.lr, { min: 0 });
  const betas = h.betas ?? base.betas;
  if (!Array.isArray(betas) || betas.length !== 2)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${where}betas' must be [beta1, beta2], got ${describe(betas)}`);
  betas.forEach((b, i) => checkNumber(op, `${where}betas[${i}]`, b, { min: 0, max: 1, maxExclusive: true }));
  const eps = h.eps === undefined ? base.eps : checkNumber(op, `${where}eps`, h.eps, { min: 0 });
  const weightDecay = h.weightDecay === undefined ? base.weightDecay : checkNumber(op, `${where}weightDecay`, h.weightDecay, { min: 0 });
  return { lr, betas: [betas[0], betas[1]], eps, weightDecay };
}

/** Global L2 norm of a list of float32 tensors, reduced in a fixed order (same bits on any thread count). */
export function gradNorm(grads: readonly Tensor[]): number {
  const op = 'gradNorm';
  if (!Array.isArray(grads)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: expected an array of tensors, got ${describe(grads)}`);
  grads.forEach((g, i) => checkTensor(op, `grads[${i}]`, g, { dtypes: ['float32'] }));
  return native().gradNorm({ grads: grads.map((g) => ({ s: g.storage(), numel: g.numel })) });
}

interface Slot {
  param: Tensor;
  expAvg: Tensor;
  expAvgSq: Tensor;
  group: number;
}

export class AdamW {
  readonly groups: AdamWHyper[];
  #slots: Slot[];
  #step = 0;
  #disposed = false;

  /** `params` is a list of float32 tensors, or of groups each with its own hyperparameters. */
  constructor(params: Tensor[] | ParamGroup[], defaults: Partial<AdamWHyper> = {}) {
    const op = 'AdamW';
    const base = checkHyper(op, '', checkOptions<AdamWHyper>(op, defaults), DEFAULTS);
    if (!Array.isArray(params) || params.length === 0)
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: expected a non-empty array of tensors or parameter groups, got ${describe(params)}`);
    const groups: ParamGroup[] = params[0] instanceof Tensor ? [{ params: params as Tensor[] }] : (params as ParamGroup[]);
    this.groups = [];
    this.#slots = [];
    const seen = new Set<Tensor>();
    groups.forEach((g, gi) => {
      if (g === null || typeof g !== 'object' || !Array.isArray(g.params))
        throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: groups[${gi}] must be { params: Tensor[], ... }, got ${describe(g)}`);
      this.groups.push(checkHyper(op, `groups[${gi}].`, g, base));
      g.params.forEach((p, pi) => {
        checkTensor(op, `groups[${gi}].params[${pi}]`, p, { dtypes: ['float32'] });
        if (seen.has(p)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: groups[${gi}].params[${pi}] appears twice`);
        seen.add(p);
        this.#slots.push({ param: p, expAvg: zeros(p.shape, { device: p.device }), expAvgSq: zeros(p.shape, { device: p.device }), group: gi });
      });
    });
  }

  /** Steps taken so far (the bias correction uses step + 1 next). */
  get stepCount(): number {
    return this.#step;
  }

  /** The parameters in order: step() takes their gradients in the same order. */
  get params(): Tensor[] {
    return this.#slots.map((s) => s.param);
  }

  /** First and second moments of parameter i (owned by the optimizer). */
  state(i: number): { expAvg: Tensor; expAvgSq: Tensor } {
    const s = this.#slots[i];
    if (!s) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `AdamW.state: index ${i} is out of range (0..${this.#slots.length - 1})`);
    return { expAvg: s.expAvg, expAvgSq: s.expAvgSq };
  }

  /** One update of every parameter from its gradient (same order as `params`). */
  step(grads: readonly Tensor[], options?: StepOptions): StepResult {
    const op = 'AdamW.step';
    const r = this.#update(op, grads, options);
    if (!r.ok) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: the gradient norm is ${r.gradNorm}; no parameter was updated`);
    return r.gradNorm === undefined ? { clipScale: r.clipScale } : { gradNorm: r.gradNorm, clipScale: r.clipScale };
  }

  /**
   * The same update, returning a non-finite gradient norm (with `maxGradNorm`) as `{ ok: false }`
   * instead of throwing; the parameters, moments and step count are then left as they were.
   */
  tryStep(grads: readonly Tensor[], options?: StepOptions): StepOutcome {
    return this.#update('AdamW.tryStep', grads, options);
  }

  #update(op: string, grads: readonly Tensor[], options: StepOptions | undefined): StepOutcome {
    if (this.#disposed) throw new DisposedError('AdamW');
    const o = checkOptions<StepOptions>(op, options);
    if (!Array.isArray(grads) || grads.length !== this.#slots.length)
      throw new LorakitRangeError('ERR_INVALID_ARG', `${op}: expected ${this.#slots.length} gradients (one per parameter), got ${Array.isArray(grads) ? grads.length : describe(grads)}`);
    this.#slots.forEach((s, i) => {
      checkTensor(op, `params[${i}]`, s.param, { dtypes: ['float32'] });
      const g = checkTensor(op, `grads[${i}]`, grads[i], { dtypes: ['float32'] });
      if (g.numel !== s.param.numel)
        throw new LorakitRangeError('ERR_SHAPE', `${op}: grads[${i}] has shape ${shapeStr(g.shape)}, its parameter ${shapeStr(s.param.shape)}`);
    });
    const lrOverride = o.lr === undefined ? undefined : checkNumber(op, 'lr', o.lr, { min: 0 });
    const scale = o.gradScale === undefined ? 1 : checkNumber(op, 'gradScale', o.gradScale, { min: 0 });
    const max = o.maxGradNorm === undefined ? undefined : checkNumber(op, 'maxGradNorm', o.maxGradNorm, { min: 0 });
    const tensors: AddonAdamWTensor[] = this.#slots.map((s, i) => {
      const h = this.groups[s.group]!;
      return {
        param: s.param.storage(), grad: grads[i]!.storage(), expAvg: s.expAvg.storage(), expAvgSq: s.expAvgSq.storage(),
        numel: s.param.numel, lr: lrOverride ?? h.lr, beta1: h.betas[0], beta2: h.betas[1], eps: h.eps, weightDecay: h.weightDecay,
      };
    });
    if (max === undefined) {
      native().adamwStep({ tensors, step: this.#step + 1, gradScale: scale });
      this.#step++;
      return { ok: true, clipScale: 1 };
    }
    // The norm, torch.nn.utils.clip_grad_norm_'s coefficient max/(norm + 1e-6) capped at 1, and the
    // update are one native call: on a GPU nothing waits for the norm between them.
    const r = native().adamwStep({ tensors, step: this.#step + 1, gradScale: scale, maxGradNorm: max });
    if (!r.updated) return { ok: false, reason: 'grad-norm', gradNorm: r.gradNorm };
    this.#step++;
    return { ok: true, gradNorm: r.gradNorm, clipScale: r.clipScale };
  }

  /**
   * Restores the step count and the moments saved from an optimizer over the same parameters (the
   * tensors are copied, so the caller keeps ownership of `moments`).
   */
  loadState(step: number, moments: { expAvg: Tensor; expAvgSq: Tensor }[]): void {
    const op = 'AdamW.loadState';
    if (this.#disposed) throw new DisposedError('AdamW');
    checkNumber(op, 'step', step, { integer: true, min: 0 });
    if (!Array.isArray(moments) || moments.length !== this.#slots.length)
      throw new LorakitRangeError('ERR_INVALID_ARG', `${op}: expected moments for ${this.#slots.length} parameters, got ${Array.isArray(moments) ? moments.length : describe(moments)}`);
    moments.forEach((m, i) => {
      const s = this.#slots[i]!;
      for (const [k, t] of [['expAvg', m.expAvg], ['expAvgSq', m.expAvgSq]] as const) {
        checkTensor(op, `moments[${i}].${k}`, t, { dtypes: ['float32'] });
        if (t.numel !== s.param.numel) throw new LorakitRangeError('ERR_SHAPE', `${op}: moments[${i}].${k} has ${t.numel} elements, its parameter ${s.param.numel}`);
      }
    });
    moments.forEach((m, i) => {
      const s = this.#slots[i]!;
      s.expAvg.storage().upload(m.expAvg.toFloat32Array());
      s.expAvgSq.storage().upload(m.expAvgSq.toFloat32Array());
    });
    this.#step = step;
  }

  /** Frees the moment buffers (not the parameters, which the caller owns). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.#slots) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
    }
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  get disposed(): boolean {
    return this.#disposed;
  }
}
