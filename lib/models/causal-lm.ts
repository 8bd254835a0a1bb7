/**
 * Decoder-only causal language models (GPT-2 and the Llama family) built from lorakit's ops: forward,
 * loss, and the backward pass into LoRA gradients. Module names are Hugging Face's, so PEFT adapters
 * address them directly.
 */
import { DisposedError, LorakitRangeError } from '../errors';
import { type ModelConfig } from '../io/config';
import { checkOptions, type Device } from '../check';
import { checkTensor, Tensor, tensor, zeros } from '../tensor/tensor';
import { matmul } from '../ops/matmul';
import { addInPlace, attention, copyRows, crossEntropy, type AttentionOptions } from '../ops/nn';
import { kvWrite, pagedAttention } from '../ops/decode';
import { type KvCache } from './kv-cache';
import { Linear, type AdapterSegment } from './linear';
import { NF4Tensor, dequantize } from '../nf4';
import { transpose2d } from './weights';
import { logitsError } from './compare';
import { type LoraConfig } from '../lora/config';

export interface ForwardOptions {
  /**
   * Labels [batch, seq] int64, aligned with the inputs as transformers takes them (the model shifts
   * them: position t predicts label t+1). -100 is ignored. By default the inputs themselves.
   */
  labels?: Tensor;
  /** Return the logits [batch, seq, vocab] (the caller disposes them). */
  returnLogits?: boolean;
  /** Training mode: LoRA dropout is active. */
  train?: boolean;
  /** Seed of this step's dropout masks. */
  seed?: number;
  /** Position ids [batch, seq] int64 (packed rows restart them per document); 0..seq-1 by default. */
  positions?: Tensor;
  /**
   * Packed rows: int64 [batch, seq], the index in its row where each token's document starts;
   * attention then stays inside each document.
   */
  docStarts?: Tensor;
}

/**
 * @internal One generation step's tokens against the paged KV cache (lib/generate builds it). The step's
 * N tokens are one row of ids [1, N]; token i belongs to sequence seq[i], is written to pool row slots[i],
 * and attends to its sequence's first ctx[i] cached tokens.
 */
export interface DecodeInputs {
  cache: KvCache;
  /** int64 [N] */
  slots: Tensor;
  /** int64 [sequences, max blocks] */
  blockTable: Tensor;
  /** int64 [N] */
  seq: Tensor;
  /** int64 [N] */
  ctx: Tensor;
  /** Runs of rows served with an adapter (unmerged, many per batch). */
  segments?: readonly AdapterSegment[];
}

/** @internal What an architecture's trunk receives for one pass. */
export interface PassInputs {
  ids: Tensor;
  positions: Tensor;
  docStarts?: Tensor;
  train: boolean;
  seed: number;
  grad: boolean;
  /** A generation step: attention reads and extends the KV cache; no gradients. */
  decode?: DecodeInputs;
}

export interface ForwardResult {
  /** Mean next-token cross-entropy over the counted positions. */
  loss: number;
  /** Positions that counted. */
  tokens: number;
  logits?: Tensor;
}

/** Tensors made during one pass, disposed together. */
export class Scope {
  #owned: Tensor[] = [];
  keep<T extends Tensor>(t: T): T {
    this.#owned.push(t);
    return t;
  }
  dispose(): void {
    for (const t of this.#owned) t.dispose();
    this.#owned = [];
  }
}

/** What an architecture's layer stack hands back to the shared head: its final hidden state. */
export interface Trunk {
  hidden: Tensor;
  /** Runs the backward pass of the stack from d(hidden), accumulating adapter gradients. */
  backward(dHidden: Tensor): void;
}

export abstract class CausalLM {
  readonly config: ModelConfig;
  /** Every linear module by its Hugging Face module path. */
  readonly linears: ReadonlyMap<string, Linear>;
  readonly #grads = new Map<Tensor, Tensor>();
  /** The config of the attached adapter (set by addAdapter / loadAdapter). */
  adapterConfig?: LoraConfig;
  /**
   * The most logits (rows x vocabulary) the loss computes at once; larger batches go through the
   * classifier a block of rows at a time. 2^25 elements is 128 MiB of float32.
   */
  headChunkElements = 2 ** 25;
  #disposed = false;

  protected constructor(config: ModelConfig, linears: Linear[]) {
    this.config = config;
    this.linears = new Map(linears.map((l) => [l.name, l]));
  }

  /** The [vocab, hidden] weight the logits are computed with (the embedding when tied). */
  protected abstract headWeight(): Tensor;
  /** Embedding, layers and final norm; `grad` keeps what the backward pass needs. */
  protected abstract trunk(inputs: PassInputs, scope: Scope): Trunk;
  protected abstract disposeWeights(): void;
  /** The weights outside the Linear modules (embeddings, norms, an untied head), by checkpoint name. */
  protected abstract ownWeights(): [string, Tensor][];

  /** Where the model's weights live. */
  get device(): Device {
    return this.headWeight().device;
  }

  /** The gradient tensor of a weight outside the Linears, when full fine-tuning is on. */
  protected gradOf(t: Tensor): Tensor | undefined {
    return this.#grads.get(t);
  }

  /** Full fine-tuning: every weight gets a gradient from the next backward pass on. */
  requireFullGrad(): void {
    for (const l of this.linears.values()) l.requireBaseGrad();
    for (const [, t] of this.ownWeights()) if (!this.#grads.has(t)) this.#grads.set(t, zeros(t.shape, { device: t.device }));
  }

  /**
   * The trainable tensors with their gradients, under checkpoint (or PEFT) names: the adapters'
   * lora_A/lora_B, and every weight when requireFullGrad() was called.
   */
  parameters(): { name: string; param: Tensor; grad: Tensor }[] {
    const out: { name: string; param: Tensor; grad: Tensor }[] = [];
    for (const [name, t] of this.ownWeights()) {
      const g = this.#grads.get(t);
      if (g) out.push({ name, param: t, grad: g });
    }
    for (const [name, l] of this.linears) {
      if (l.baseGrads) {
        out.push({ name: `${name}.weight`, param: l.weight as Tensor, grad: l.baseGrads.weight });
        if (l.bias && l.baseGrads.bias) out.push({ name: `${name}.bias`, param: l.bias, grad: l.baseGrads.bias });
      }
      if (l.adapter && l.grads) {
        out.push({ name: `${name}.lora_A.weight`, param: l.adapter.loraA, grad: l.grads.loraA });
        out.push({ name: `${name}.lora_B.weight`, param: l.adapter.loraB, grad: l.grads.loraB });
      }
    }
    return out;
  }

  /**
   * The model's weights under Hugging Face names, for writing a checkpoint: linears in `dtype` (NF4
   * ones dequantized, GPT-2's Conv1D back in [in, out]), everything else float32 or `dtype`. The
   * caller disposes the tensors.
   */
  exportWeights(dtype: 'float32' | 'bfloat16' = 'float32'): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    try {
      for (const [name, t] of this.ownWeights()) out[name] = t.to(dtype);
      for (const [name, l] of this.linears) {
        const w = l.weight instanceof NF4Tensor ? dequantize(l.weight, { dtype: 'float32' }) : l.weight.to('float32');
        const stored = l.storedTransposed ? transpose2d(w) : w;
        out[`${name}.weight`] = stored.to(dtype);
        stored.dispose();
        if (l.bias) out[`${name}.bias`] = l.bias.to(dtype);
      }
      return out;
    } catch (e) {
      for (const t of Object.values(out)) t.dispose();
      throw e;
    }
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Loss (and optionally logits) without gradients. */
  forward(inputIds: Tensor, options?: ForwardOptions): ForwardResult {
    return this.#run('forward', inputIds, options, false);
  }

  /** Loss, and the adapters' gradients added into each Linear's `grads`. */
  forwardBackward(inputIds: Tensor, options?: ForwardOptions): ForwardResult {
    return this.#run('forwardBackward', inputIds, options, true);
  }

  /**
   * Layer `layer`'s attention: causal over the pass's own tokens, or, in a generation step, over the KV
   * cache after this step's keys and values are written into it (then no lse: nothing runs backward).
   */
  protected attend(layer: number, q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions, decode?: DecodeInputs): { out: Tensor; lse?: Tensor } {
    if (!decode) return attention(q, k, v, options);
    const c = decode.cache;
    kvWrite(k, v, decode.slots, c.k[layer]!, c.v[layer]!);
    return {
      out: pagedAttention(q, c.k[layer]!, c.v[layer]!, {
        heads: options.heads, kvHeads: options.kvHeads, blockSize: c.blockSize, blockTable: decode.blockTable, seq: decode.seq, ctx: decode.ctx,
      }),
    };
  }

  /**
   * @internal One generation step: runs `ids` [1, N] at `positions` [1, N] through the model, reading and
   * extending the KV cache, and returns the float32 logits [rows.length, vocab] of the listed token rows
   * (each sequence's last token of the step; the others only fill the cache), or undefined when no row is listed.
   */
  decodeStep(ids: Tensor, positions: Tensor, decode: DecodeInputs, rows: readonly number[]): Tensor | undefined {
    const op = 'model.decodeStep';
    if (this.#disposed) throw new DisposedError(`${op}: the model`);
    if (decode.cache.disposed) throw new DisposedError(`${op}: the KV cache`);
    checkTensor(op, 'ids', ids, { dtypes: ['int64'], ndim: 2 });
    const n = ids.shape[1]!;
    checkTensor(op, 'positions', positions, { dtypes: ['int64'], shape: [1, n] });
    const scope = new Scope();
    try {
      const t = this.trunk({ ids, positions, train: false, seed: 0, grad: false, decode }, scope);
      const D = this.config.hiddenSize;
      // A step of prompt chunks only fills the cache: no row needs the head.
      if (rows.length === 0) return undefined;
      using hidden = t.hidden.reshape([n, D]);
      using picked = Tensor.empty([rows.length, D], 'float32', hidden.device, op);
      rows.forEach((r, i) => {
        if (!Number.isInteger(r) || r < 0 || r >= n) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: row ${r} is not a token of this step (0..${n - 1})`);
        copyRows(hidden, r, picked, i, 1);
      });
      return matmul(picked, this.headWeight(), { transposeB: true, outDtype: 'float32' });
    } finally {
      scope.dispose();
    }
  }

  /** Folds every attached adapter into its base weight (PEFT's merge); the adapters stay for unmerge. */
  mergeAdapters(): void {
    for (const l of this.linears.values()) if (l.adapter && !l.merged) l.merge();
  }

  /** Subtracts every merged adapter from its base weight again. */
  unmergeAdapters(): void {
    for (const l of this.linears.values()) if (l.merged) l.unmerge();
  }

  /**
   * Merges the adapters and reports how far the merged model's logits on `inputIds` are from the
   * unmerged model's: the largest absolute difference, and the Frobenius norm of the difference over
   * the norm of the unmerged logits. The model is left merged.
   */
  mergeError(inputIds: Tensor): { maxAbs: number; relative: number } {
    const before = this.forward(inputIds, { returnLogits: true }).logits!;
    try {
      this.mergeAdapters();
      using after = this.forward(inputIds, { returnLogits: true }).logits!;
      return logitsError(before.toFloat32Array(), after.toFloat32Array());
    } finally {
      before.dispose();
    }
  }

  /** Sets every gradient to zero. */
  zeroGrad(): void {
    for (const l of this.linears.values()) l.zeroGrad();
    for (const g of this.#grads.values()) g.fill(0);
  }

  #run(name: string, inputIds: Tensor, options: ForwardOptions | undefined, grad: boolean): ForwardResult {
    const op = `model.${name}`;
    if (this.#disposed) throw new DisposedError(`${op}: the model`);
    const o = checkOptions<ForwardOptions>(op, options);
    checkTensor(op, 'inputIds', inputIds, { dtypes: ['int64'], ndim: 2 });
    const [batch, seq] = inputIds.shape as [number, number];
    if (this.config.ropeTheta === null && seq > this.config.maxPositions)
      throw new LorakitRangeError('ERR_SHAPE', `${op}: sequence length ${seq} exceeds the model's ${this.config.maxPositions} positions`);
    if (o.labels !== undefined) checkTensor(op, 'labels', o.labels, { dtypes: ['int64'], shape: [batch, seq] });
    if (o.positions !== undefined) checkTensor(op, 'positions', o.positions, { dtypes: ['int64'], shape: [batch, seq] });
    if (o.docStarts !== undefined) checkTensor(op, 'docStarts', o.docStarts, { dtypes: ['int64'], shape: [batch, seq] });
    const scope = new Scope();
    try {
      const shifted = scope.keep(shiftLabels(o.labels ?? inputIds));
      const positions = o.positions ?? scope.keep(positionIds(batch, seq, inputIds.device));
      if (this.config.ropeTheta === null) {
        const maxPos = (positions.data() as BigInt64Array).reduce((m, v) => (v > m ? v : m), 0n);
        if (maxPos >= BigInt(this.config.maxPositions))
          throw new LorakitRangeError('ERR_SHAPE', `${op}: position ${maxPos} exceeds the model's ${this.config.maxPositions} positions`);
      }
      const t = this.trunk({ ids: inputIds, positions, docStarts: o.docStarts, train: o.train === true, seed: o.seed ?? 0, grad }, scope);
      const rows = batch * seq;
      const chunk = o.returnLogits ? rows : Math.max(1, Math.min(rows, Math.floor(this.headChunkElements / this.config.vocabSize)));
      if (chunk < rows) {
        const r = this.#chunkedHead(t, shifted, rows, chunk, grad, scope);
        if (grad) t.backward(r.dHidden!);
        return { loss: r.loss, tokens: r.tokens };
      }
      const logits = matmul(t.hidden, this.headWeight(), { transposeB: true, outDtype: 'float32' });
      const flat = logits.reshape([rows, this.config.vocabSize]);
      let ce;
      if (grad) {
        const work = o.returnLogits ? scope.keep(flat.clone()) : flat;
        ce = crossEntropy(work, shifted, { gradInPlace: true });
        const dFlat = scope.keep(matmul(work, this.headWeight(), { outDtype: 'float32' }));
        const dHidden = scope.keep(dFlat.reshape([batch, seq, this.config.hiddenSize]));
        const headGrad = this.gradOf(this.headWeight());
        if (headGrad) {
          // d(head) = dlogitsᵀ · hidden; a tied head adds to the embedding's gradient.
          using h2 = t.hidden.reshape([rows, this.config.hiddenSize]);
          using dHead = matmul(work, h2, { transposeA: true, outDtype: 'float32' });
          addInPlace(headGrad, dHead);
        }
        t.backward(dHidden);
      } else {
        ce = crossEntropy(flat, shifted);
      }
      flat.dispose();
      if (!o.returnLogits) logits.dispose();
      return { loss: ce.loss, tokens: ce.count, logits: o.returnLogits ? logits : undefined };
    } finally {
      scope.dispose();
    }
  }

  /**
   * The classifier and loss a block of rows at a time, so that the logits never exist for the whole batch
   * at once ([tokens, vocab] float32 is gigabytes for a 128K vocabulary). Each block's dlogits are written
   * in place over its logits, scaled to the gradient of the batch's mean loss, and turned into its rows of
   * d(hidden) and its share of the head's gradient before the next block is computed.
   */
  #chunkedHead(t: Trunk, shifted: Tensor, rows: number, chunk: number, grad: boolean, scope: Scope): { loss: number; tokens: number; dHidden?: Tensor } {
    const D = this.config.hiddenSize, V = this.config.vocabSize, device = t.hidden.device;
    const labels = shifted.data() as BigInt64Array;
    let total = 0;
    for (const l of labels) if (l !== -100n) total++;
    using hidden = t.hidden.reshape([rows, D]);
    const dHidden = grad ? scope.keep(Tensor.empty([rows, D], 'float32', device, 'model.head')) : undefined;
    const headGrad = grad ? this.gradOf(this.headWeight()) : undefined;
    let lossSum = 0;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      using h = Tensor.empty([n, D], 'float32', device, 'model.head');
      copyRows(hidden, r0, h, 0, n);
      using y = tensor(labels.subarray(r0, r0 + n), [n], { device });
      using logits = matmul(h, this.headWeight(), { transposeB: true, outDtype: 'float32' });
      let counted = 0;
      for (let i = r0; i < r0 + n; i++) if (labels[i] !== -100n) counted++;
      // crossEntropy scales its gradient by gradScale / (rows it counted): this makes it 1 / total.
      const ce = crossEntropy(logits, y, { gradInPlace: grad, gradScale: total > 0 ? counted / total : 0 });
      if (ce.count > 0) lossSum += ce.loss * ce.count;
      if (!grad) continue;
      using dh = matmul(logits, this.headWeight(), { outDtype: 'float32' });
      copyRows(dh, 0, dHidden!, r0, n);
      if (headGrad) {
        using dHead = matmul(logits, h, { transposeA: true, outDtype: 'float32' });
        addInPlace(headGrad, dHead);
      }
    }
    return { loss: total > 0 ? lossSum / total : NaN, tokens: total, dHidden: dHidden?.reshape([...t.hidden.shape]) };
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const l of this.linears.values()) l.dispose();
    for (const g of this.#grads.values()) g.dispose();
    this.disposeWeights();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Position ids [batch, seq]: 0..seq-1 in every row. */
function positionIds(batch: number, seq: number, device: Device): Tensor {
  const out = new BigInt64Array(batch * seq);
  for (let i = 0; i < out.length; i++) out[i] = BigInt(i % seq);
  return tensor(out, [batch, seq], { device });
}

/** Labels for next-token prediction: row t gets label t+1; each sequence's last position is ignored. */
function shiftLabels(labels: Tensor): Tensor {
  const [batch, seq] = labels.shape as [number, number];
  const src = labels.data() as BigInt64Array;
  const out = new BigInt64Array(batch * seq);
  for (let b = 0; b < batch; b++)
    for (let t = 0; t < seq; t++) out[b * seq + t] = t + 1 < seq ? src[b * seq + t + 1]! : -100n;
  return tensor(out, [batch * seq], { device: labels.device });
}
