/**
 * The Llama family (Llama, Mistral, Qwen2, SmolLM): RMSNorm, rotary positions, grouped-query attention,
 * SwiGLU MLP; Qwen2 adds q/k/v biases. lm_head is its own weight unless tie_word_embeddings.
 */
import { type ModelConfig } from '../io/config';
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { Tensor } from '../tensor/tensor';
import { addInPlace, attentionBackward, embedding, embeddingBackward, rmsNorm, rmsNormBackward, ropeInPlace, swiglu, swigluBackward, type NormSaved } from '../ops/nn';
import { CausalLM, Scope, type PassInputs, type Trunk } from './causal-lm';
import { endTrunk } from './trunk';
import { type CheckpointWeights } from './weights';
import { Linear, type LinearContext } from './linear';

interface Layer {
  inNorm: Tensor;
  postNorm: Tensor;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export class Llama extends CausalLM {
  readonly #embed: Tensor;
  readonly #head: Tensor;
  readonly #norm: Tensor;
  readonly #layers: Layer[];

  private constructor(config: ModelConfig, embed: Tensor, head: Tensor, norm: Tensor, layers: Layer[]) {
    super(config, layers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]));
    this.#embed = embed;
    this.#head = head;
    this.#norm = norm;
    this.#layers = layers;
  }

  static fromWeights(config: ModelConfig, src: CheckpointWeights): Llama {
    if (config.slidingWindow !== null && config.slidingWindow < config.maxPositions)
      throw new LorakitTypeError('ERR_INVALID_ARG', `model: sliding-window attention (${config.slidingWindow}) is not supported yet`);
    const D = config.hiddenSize, F = config.intermediateSize, hd = config.headDim;
    const qW = config.numHeads * hd, kvW = config.numKvHeads * hd;
    const owned: { dispose(): void }[] = [];
    const load = (name: string, shape: number[]) => {
      const t = src.get(name, shape);
      owned.push(t);
      return t;
    };
    const linear = (name: string, inF: number, outF: number, bias: boolean) => {
      const w = src.linear(name, outF, inF, false);
      owned.push(w);
      return new Linear(name, w, bias ? load(`${name}.bias`, [outF]) : undefined);
    };
    try {
      const layers: Layer[] = [];
      for (let l = 0; l < config.numLayers; l++) {
        const p = `model.layers.${l}`;
        layers.push({
          inNorm: load(`${p}.input_layernorm.weight`, [D]),
          postNorm: load(`${p}.post_attention_layernorm.weight`, [D]),
          q: linear(`${p}.self_attn.q_proj`, D, qW, config.attentionBias),
          k: linear(`${p}.self_attn.k_proj`, D, kvW, config.attentionBias),
          v: linear(`${p}.self_attn.v_proj`, D, kvW, config.attentionBias),
          o: linear(`${p}.self_attn.o_proj`, qW, D, config.attentionOutBias),
          gate: linear(`${p}.mlp.gate_proj`, D, F, config.mlpBias),
          up: linear(`${p}.mlp.up_proj`, D, F, config.mlpBias),
          down: linear(`${p}.mlp.down_proj`, F, D, config.mlpBias),
        });
      }
      const embed = load('model.embed_tokens.weight', [config.vocabSize, D]);
      const head = config.tieWordEmbeddings || !src.has('lm_head.weight') ? embed : load('lm_head.weight', [config.vocabSize, D]);
      return new Llama(config, embed, head, load('model.norm.weight', [D]), layers);
    } catch (e) {
      for (const t of owned) t.dispose();
      throw e;
    }
  }

  protected headWeight(): Tensor {
    return this.#head;
  }

  protected trunk({ ids, positions, docStarts, train, seed, grad, decode }: PassInputs, scope: Scope): Trunk {
    const { numHeads: heads, numKvHeads: kvHeads, normEps: eps } = this.config;
    const theta = this.config.ropeTheta ?? 10000;
    const window = this.config.slidingWindow;
    // A window no shorter than the context loads as full attention (fromWeights), which it is only while no
    // token looks further back than the window: a longer sequence (or packed document) is refused.
    // A generation step's row holds many sequences' tokens: the engine bounds each one's length instead.
    if (window !== null && !decode && ids.shape[1]! > window) {
      const seq = ids.shape[1]!;
      const starts = docStarts?.data() as BigInt64Array | undefined;
      for (let i = 0; i < ids.numel; i++) {
        const t = i % seq, back = t - (starts ? Number(starts[i]) : 0) + 1;
        if (back > window)
          throw new LorakitRangeError('ERR_SHAPE', `model: position ${t} of a row attends to ${back} tokens, beyond the sliding window of ${window}; lorakit does not implement sliding-window attention`);
      }
    }
    const keepCtx = (c: LinearContext) => c.xa && scope.keep(c.xa);
    const segments = decode?.segments;
    let h = scope.keep(embedding(ids, this.#embed));
    const caches: {
      x: Tensor; n1: NormSaved; qc: LinearContext; kc: LinearContext; vc: LinearContext; q: Tensor; k: Tensor; v: Tensor; out: Tensor; lse: Tensor;
      oc: LinearContext; h2: Tensor; n2: NormSaved; gc: LinearContext; uc: LinearContext; gate: Tensor; up: Tensor; dc: LinearContext;
    }[] = [];
    this.#layers.forEach((L, l) => {
      const s = seed * 1000003 + l * 8;
      const n1 = rmsNorm(h, L.inNorm, eps);
      const a = scope.keep(n1.y);
      scope.keep(n1.saved.rstd);
      const q = L.q.forward(a, train, s, segments), k = L.k.forward(a, train, s + 1, segments), v = L.v.forward(a, train, s + 2, segments);
      for (const r of [q, k, v]) {
        scope.keep(r.y);
        keepCtx(r.ctx);
      }
      ropeInPlace(q.y, { heads, theta, positions });
      ropeInPlace(k.y, { heads: kvHeads, theta, positions });
      const at = this.attend(l, q.y, k.y, v.y, { heads, kvHeads, docStarts }, decode);
      scope.keep(at.out);
      if (at.lse) scope.keep(at.lse);
      const o = L.o.forward(at.out, train, s + 3, segments);
      keepCtx(o.ctx);
      const h2 = scope.keep(addInPlace(o.y, h));
      const n2 = rmsNorm(h2, L.postNorm, eps);
      const m = scope.keep(n2.y);
      scope.keep(n2.saved.rstd);
      const gate = L.gate.forward(m, train, s + 4, segments), up = L.up.forward(m, train, s + 5, segments);
      for (const r of [gate, up]) {
        scope.keep(r.y);
        keepCtx(r.ctx);
      }
      const act = scope.keep(swiglu(gate.y, up.y));
      const down = L.down.forward(act, train, s + 6, segments);
      keepCtx(down.ctx);
      const h3 = scope.keep(addInPlace(down.y, h2));
      if (grad)
        caches.push({
          x: h, n1: n1.saved, qc: q.ctx, kc: k.ctx, vc: v.ctx, q: q.y, k: k.y, v: v.y, out: at.out, lse: at.lse!,
          oc: o.ctx, h2, n2: n2.saved, gc: gate.ctx, uc: up.ctx, gate: gate.y, up: up.y, dc: down.ctx,
        });
      h = h3;
    });
    const nf = rmsNorm(h, this.#norm, eps);
    const last = h;
    const g = (w: Tensor) => ({ weight: this.gradOf(w) });
    return endTrunk(scope, nf, {
      norm: (dHidden) => rmsNormBackward(dHidden, last, this.#norm, nf.saved, g(this.#norm)),
      layers: this.#layers.length,
      layer: (l, dh) => {
        const L = this.#layers[l]!, c = caches[l]!;
        const dact = scope.keep(L.down.backward(dh, c.dc, train));
        const sw = swigluBackward(dact, c.gate, c.up);
        scope.keep(sw.dGate);
        scope.keep(sw.dUp);
        const dm = addInPlace(scope.keep(L.gate.backward(sw.dGate, c.gc, train)), scope.keep(L.up.backward(sw.dUp, c.uc, train)));
        const dh2 = addInPlace(scope.keep(rmsNormBackward(dm, c.h2, L.postNorm, c.n2, g(L.postNorm))), dh);
        const dout = scope.keep(L.o.backward(dh2, c.oc, train));
        const ag = attentionBackward(dout, c.q, c.k, c.v, c.out, c.lse, { heads, kvHeads, docStarts });
        for (const t of [ag.dq, ag.dk, ag.dv]) scope.keep(t);
        // q and k were rotated after their projections: rotate their gradients back.
        ropeInPlace(ag.dq, { heads, theta, positions, inverse: true });
        ropeInPlace(ag.dk, { heads: kvHeads, theta, positions, inverse: true });
        const da = scope.keep(L.q.backward(ag.dq, c.qc, train));
        addInPlace(da, scope.keep(L.k.backward(ag.dk, c.kc, train)));
        addInPlace(da, scope.keep(L.v.backward(ag.dv, c.vc, train)));
        return addInPlace(scope.keep(rmsNormBackward(da, c.x, L.inNorm, c.n1, g(L.inNorm))), dh2);
      },
      embeddings: (dh) => {
        const demb = this.gradOf(this.#embed);
        if (demb) embeddingBackward(ids, dh, demb);
      },
    });
  }

  protected ownWeights(): [string, Tensor][] {
    const out: [string, Tensor][] = [['model.embed_tokens.weight', this.#embed], ['model.norm.weight', this.#norm]];
    if (this.#head !== this.#embed) out.push(['lm_head.weight', this.#head]);
    this.#layers.forEach((L, l) => {
      const p = `model.layers.${l}`;
      out.push([`${p}.input_layernorm.weight`, L.inNorm], [`${p}.post_attention_layernorm.weight`, L.postNorm]);
    });
    return out;
  }

  protected disposeWeights(): void {
    this.#embed.dispose();
    if (this.#head !== this.#embed) this.#head.dispose();
    this.#norm.dispose();
    for (const L of this.#layers) {
      L.inNorm.dispose();
      L.postNorm.dispose();
    }
  }
}
