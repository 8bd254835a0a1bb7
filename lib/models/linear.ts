/**
 * A linear module of a model: a frozen base weight [out, in] (float or NF4), an optional bias, and an
 * optional LoRA adapter. Gradients of the adapter accumulate into tensors the module owns.
 */
import { Tensor, zeros } from '../tensor/tensor';
import { NF4Tensor } from '../nf4';
import { linearForward, linearBackward } from '../lora/linear';
import { matmul } from '../ops/matmul';
import { LorakitTypeError } from '../errors';

export interface LoraAdapterWeights {
  loraA: Tensor;
  loraB: Tensor;
  scale: number;
  dropout: number;
}

/** What the backward pass needs from the forward pass. */
export interface LinearContext {
  x: Tensor;
  xa?: Tensor;
  seed: number;
}

function frozenNF4(name: string): Error {
  return new LorakitTypeError('ERR_INVALID_ARG', `${name}: an NF4 weight is only used under a LoRA adapter; this module has none`);
}

export class Linear {
  readonly name: string;
  readonly weight: Tensor | NF4Tensor;
  readonly bias?: Tensor;
  adapter?: LoraAdapterWeights;
  /** Gradients of loraA / loraB, allocated with the adapter. */
  grads?: { loraA: Tensor; loraB: Tensor };

  constructor(name: string, weight: Tensor | NF4Tensor, bias?: Tensor) {
    this.name = name;
    this.weight = weight;
    this.bias = bias;
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
    this.grads = { loraA: zeros(adapter.loraA.shape), loraB: zeros(adapter.loraB.shape) };
  }

  detach(): void {
    this.adapter?.loraA.dispose();
    this.adapter?.loraB.dispose();
    this.grads?.loraA.dispose();
    this.grads?.loraB.dispose();
    this.adapter = undefined;
    this.grads = undefined;
  }

  zeroGrad(): void {
    this.grads?.loraA.fill(0);
    this.grads?.loraB.fill(0);
  }

  /** y = x·Wᵀ + b (+ the adapter's branch). `seed` keys the dropout mask when training. */
  forward(x: Tensor, train: boolean, seed = 0): { y: Tensor; ctx: LinearContext } {
    if (this.adapter) {
      const dropout = train ? this.adapter.dropout : 0;
      const { y, xa } = linearForward(x, { weight: this.weight, bias: this.bias, loraA: this.adapter.loraA, loraB: this.adapter.loraB, scale: this.adapter.scale }, { dropout, seed });
      return { y, ctx: { x, xa, seed } };
    }
    if (this.weight instanceof NF4Tensor) throw frozenNF4(this.name);
    return { y: matmul(x, this.weight, { transposeB: true, bias: this.bias, outDtype: 'float32' }), ctx: { x, seed } };
  }

  /** dx from dy; adds the adapter's gradients into `grads`. */
  backward(dy: Tensor, ctx: LinearContext, train: boolean): Tensor {
    if (this.adapter && ctx.xa) {
      const dropout = train ? this.adapter.dropout : 0;
      const g = linearBackward(dy, ctx.x, ctx.xa, { weight: this.weight, bias: this.bias, loraA: this.adapter.loraA, loraB: this.adapter.loraB, scale: this.adapter.scale }, {
        dropout, seed: ctx.seed, biasGrad: false, accumulateInto: { loraA: this.grads!.loraA, loraB: this.grads!.loraB },
      });
      return g.dx!;
    }
    if (this.weight instanceof NF4Tensor) throw frozenNF4(this.name);
    return matmul(dy, this.weight, { outDtype: 'float32' });
  }

  dispose(): void {
    this.detach();
    this.weight.dispose();
    this.bias?.dispose();
  }
}
