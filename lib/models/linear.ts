/**
 * A linear module of a model: a base weight [out, in] (float or NF4), an optional bias, and an
 * optional LoRA adapter. Gradients (the adapter's, and the base weight's in full fine-tuning)
 * accumulate into tensors the module owns.
 */
import { Tensor, full, zeros } from '../tensor/tensor';
import { NF4Tensor, dequantize, quantize } from '../nf4';
import { linearForward, linearBackward } from '../lora/linear';
import { matmul } from '../ops/matmul';
import { addInPlace } from '../ops/nn';
import { LorakitTypeError } from '../errors';
import { loraSegments, type LoraSegmentSpec, type LoraSegmentWeights } from '../ops/decode';

export interface LoraAdapterWeights {
  loraA: Tensor;
  loraB: Tensor;
  scale: number;
  dropout: number;
}

/**
 * Rows [start, end) of a batch that run with one adapter's modules (by module name), without merging
 * it: how a generation engine serves many adapters on one base in one forward pass.
 */
export interface AdapterSegment {
  start: number;
  end: number;
  /** Each module's weights, or (from a server that keeps them) the same checked once, with Bᵀ on the CPU. */
  modules: ReadonlyMap<string, LoraAdapterWeights | { segment: LoraSegmentWeights }>;
}

/** What the backward pass needs from the forward pass. */
export interface LinearContext {
  x: Tensor;
  xa?: Tensor;
  seed: number;
}

export class Linear {
  readonly name: string;
  /** The checkpoint stores the weight [in, out] (GPT-2's Conv1D); it is held [out, in]. */
  readonly storedTransposed: boolean;
  /** Replaced (not mutated) when a merge re-quantizes or re-rounds it. */
  weight: Tensor | NF4Tensor;
  readonly bias?: Tensor;
  adapter?: LoraAdapterWeights;
  /** Gradients of loraA / loraB, allocated with the adapter. */
  grads?: { loraA: Tensor; loraB: Tensor };
  /** Gradients of the base weight and bias, allocated by requireBaseGrad() (full fine-tuning). */
  baseGrads?: { weight: Tensor; bias?: Tensor };
  /** The adapter's update is folded into the weight (and its branch skipped) until unmerge(). */
  #merged = false;

  constructor(name: string, weight: Tensor | NF4Tensor, bias?: Tensor, storedTransposed = false) {
    this.name = name;
    this.weight = weight;
    this.bias = bias;
    this.storedTransposed = storedTransposed;
  }

  /** Makes the base weight (and bias) trainable: their gradients accumulate from now on. */
  requireBaseGrad(): void {
    if (this.baseGrads) return;
    if (this.weight instanceof NF4Tensor || this.weight.dtype !== 'float32')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${this.name}: full fine-tuning needs a float32 weight, this one is ${this.weight instanceof NF4Tensor ? 'NF4' : this.weight.dtype}`);
    const device = this.weight.device;
    this.baseGrads = { weight: zeros(this.weight.shape, { device }), bias: this.bias ? zeros(this.bias.shape, { device }) : undefined };
  }

  get inFeatures(): number {
    return this.weight.shape[1]!;
  }
  get outFeatures(): number {
    return this.weight.shape[0]!;
  }

  /** Attaches an adapter (the module takes ownership of its tensors). */
  attach(adapter: LoraAdapterWeights): void {
    this.detach();
    this.adapter = adapter;
    const device = adapter.loraA.device;
    this.grads = { loraA: zeros(adapter.loraA.shape, { device }), loraB: zeros(adapter.loraB.shape, { device }) };
  }

  get merged(): boolean {
    return this.#merged;
  }

  /** W += s·B·A (an NF4 weight is dequantized, updated and quantized again: lossy). */
  merge(): void {
    this.#fold(1);
  }

  /** W -= s·B·A, undoing merge() (exactly only for float32 weights). */
  unmerge(): void {
    this.#fold(-1);
  }

  #fold(sign: 1 | -1): void {
    if (!this.adapter) throw new LorakitTypeError('ERR_INVALID_ARG', `${this.name}: has no adapter to ${sign > 0 ? 'merge' : 'unmerge'}`);
    if (this.#merged === (sign > 0)) throw new LorakitTypeError('ERR_INVALID_ARG', `${this.name}: the adapter is ${sign > 0 ? 'already' : 'not'} merged`);
    using delta = matmul(this.adapter.loraB, this.adapter.loraA, { alpha: sign * this.adapter.scale });
    if (this.weight instanceof NF4Tensor) {
      const q = this.weight;
      using w = dequantize(q, { dtype: 'float32' });
      addInPlace(w, delta);
      using w2 = w.to(q.dtype);
      const next = quantize(w2, { blockSize: q.blockSize, doubleQuant: q.doubleQuant });
      q.dispose();
      this.weight = next;
    } else if (this.weight.dtype === 'float32') {
      addInPlace(this.weight, delta);
    } else {
      using w = this.weight.to('float32');
      addInPlace(w, delta);
      const next = w.to(this.weight.dtype);
      this.weight.dispose();
      this.weight = next;
    }
    this.#merged = sign > 0;
  }

  /** Drops the adapter. A merged adapter's update stays in the weight (PEFT's merge_and_unload). */
  detach(): void {
    this.#merged = false;
    this.adapter?.loraA.dispose();
    this.adapter?.loraB.dispose();
    this.grads?.loraA.dispose();
    this.grads?.loraB.dispose();
    this.adapter = undefined;
    this.grads = undefined;
  }

  zeroGrad(): void {
    for (const g of [this.grads?.loraA, this.grads?.loraB, this.baseGrads?.weight, this.baseGrads?.bias]) g?.fill(0);
  }

  /**
   * y = x·Wᵀ + b (+ the adapter's branch). `seed` keys the dropout mask when training. `segments` adds,
   * to each run of rows, the branch of that run's adapter for this module (inference only).
   */
  forward(x: Tensor, train: boolean, seed = 0, segments?: readonly AdapterSegment[]): { y: Tensor; ctx: LinearContext } {
    if (segments) {
      const y = this.forward(x, false, seed).y;
      const specs: LoraSegmentSpec[] = [];
      for (const s of segments) {
        const w = s.modules.get(this.name);
        if (w && s.end > s.start) specs.push('segment' in w ? { start: s.start, end: s.end, weights: w.segment } : { start: s.start, end: s.end, loraA: w.loraA, loraB: w.loraB, scale: w.scale });
      }
      if (specs.length > 0) {
        const rows = x.numel / this.inFeatures;
        using x2 = x.reshape([rows, this.inFeatures]);
        using y2 = y.reshape([rows, this.outFeatures]);
        loraSegments(x2, y2, specs);
      }
      return { y, ctx: { x, seed } };
    }
    if (this.adapter && !this.#merged) {
      const dropout = train ? this.adapter.dropout : 0;
      const { y, xa } = linearForward(x, { weight: this.weight, bias: this.bias, loraA: this.adapter.loraA, loraB: this.adapter.loraB, scale: this.adapter.scale }, { dropout, seed });
      return { y, ctx: { x, xa, seed } };
    }
    return { y: matmul(x, this.weight, { transposeB: true, bias: this.bias, outDtype: 'float32' }), ctx: { x, seed } };
  }

  /** dx from dy; adds the adapter's gradients into `grads` and the base's into `baseGrads`. */
  backward(dy: Tensor, ctx: LinearContext, train: boolean): Tensor {
    const base = this.baseGrads;
    if (this.adapter && ctx.xa) {
      const dropout = train ? this.adapter.dropout : 0;
      const g = linearBackward(dy, ctx.x, ctx.xa, { weight: this.weight, bias: this.bias, loraA: this.adapter.loraA, loraB: this.adapter.loraB, scale: this.adapter.scale }, {
        dropout, seed: ctx.seed, biasGrad: base?.bias !== undefined, weightGrad: base !== undefined,
        accumulateInto: { loraA: this.grads!.loraA, loraB: this.grads!.loraB, weight: base?.weight, bias: base?.bias },
      });
      return g.dx!;
    }
    if (base) {
      const rows = dy.numel / this.outFeatures;
      using dy2 = dy.reshape([rows, this.outFeatures]);
      using x2 = ctx.x.reshape([rows, this.inFeatures]);
      using dw = matmul(dy2, x2, { transposeA: true, outDtype: 'float32' });
      addInPlace(base.weight, dw);
      if (base.bias) {
        using ones = full([1, rows], 1, { device: dy.device });
        using db = matmul(ones, dy2, { outDtype: 'float32' });
        addInPlace(base.bias, db);
      }
    }
    return matmul(dy, this.weight, { outDtype: 'float32' });
  }

  dispose(): void {
    this.detach();
    this.baseGrads?.weight.dispose();
    this.baseGrads?.bias?.dispose();
    this.weight.dispose();
    this.bias?.dispose();
  }
}
