/**
 * GPT-2: learned positions, pre-LayerNorm blocks, fused c_attn, gelu_new MLP, lm_head tied to wte.
 * Conv1D weights are stored [in, out] in checkpoints and transposed to [out, in] on load, so every
 * Linear (and every PEFT adapter, which GPT-2 marks fan_in_fan_out) has the same layout.
 */
import { type ModelConfig } from '../io/config';
import { Tensor } from '../tensor/tensor';
import { addInPlace, attentionBackward, copyColumns, embedding, embeddingBackward, gelu, geluBackward, layerNorm, layerNormBackward, type NormSaved } from '../ops/nn';
import { CausalLM, Scope, type PassInputs, type Trunk } from './causal-lm';
import { endTrunk } from './trunk';
import { type CheckpointWeights } from './weights';
import { Linear, type LinearContext } from './linear';

interface Block {
  ln1: { w: Tensor; b: Tensor };
  ln2: { w: Tensor; b: Tensor };
  attn: Linear;
  proj: Linear;
  fc: Linear;
  mlpProj: Linear;
}

export class GPT2 extends CausalLM {
  readonly #wte: Tensor;
  readonly #wpe: Tensor;
  readonly #lnf: { w: Tensor; b: Tensor };
  readonly #blocks: Block[];

  private constructor(config: ModelConfig, wte: Tensor, wpe: Tensor, lnf: { w: Tensor; b: Tensor }, blocks: Block[]) {
    super(config, blocks.flatMap((b) => [b.attn, b.proj, b.fc, b.mlpProj]));
    this.#wte = wte;
    this.#wpe = wpe;
    this.#lnf = lnf;
    this.#blocks = blocks;
  }

  /** Builds the model from a checkpoint's tensors (keys with or without the `transformer.` prefix). */
  static fromWeights(config: ModelConfig, src: CheckpointWeights): GPT2 {
    const prefix = src.has('transformer.wte.weight') ? 'transformer.' : '';
    const D = config.hiddenSize, F = config.intermediateSize;
    const owned: { dispose(): void }[] = [];
    const load = (name: string, shape: number[]) => {
      const t = src.get(prefix + name, shape);
      owned.push(t);
      return t;
    };
    // Module names always carry `transformer.`, as PEFT addresses GPT2LMHeadModel's modules.
    const conv = (name: string, inF: number, outF: number) => {
      const w = src.linear(prefix + name, outF, inF, true);
      owned.push(w);
      return new Linear(`transformer.${name}`, w, load(`${name}.bias`, [outF]), true);
    };
    try {
      const blocks: Block[] = [];
      for (let l = 0; l < config.numLayers; l++) {
        const p = `h.${l}`;
        blocks.push({
          ln1: { w: load(`${p}.ln_1.weight`, [D]), b: load(`${p}.ln_1.bias`, [D]) },
          ln2: { w: load(`${p}.ln_2.weight`, [D]), b: load(`${p}.ln_2.bias`, [D]) },
          attn: conv(`${p}.attn.c_attn`, D, 3 * D),
          proj: conv(`${p}.attn.c_proj`, D, D),
          fc: conv(`${p}.mlp.c_fc`, D, F),
          mlpProj: conv(`${p}.mlp.c_proj`, F, D),
        });
      }
      return new GPT2(
        config,
        load('wte.weight', [config.vocabSize, D]),
        load('wpe.weight', [config.maxPositions, D]),
        { w: load('ln_f.weight', [D]), b: load('ln_f.bias', [D]) },
        blocks,
      );
    } catch (e) {
      for (const t of owned) t.dispose();
      throw e;
    }
  }

  protected headWeight(): Tensor {
    return this.#wte;
  }

  protected trunk({ ids, positions: pos, docStarts, train, seed, grad, decode }: PassInputs, scope: Scope): Trunk {
    const segments = decode?.segments;
    const [batch, seq] = ids.shape as [number, number];
    const { numHeads: heads, hiddenSize: D, normEps: eps } = this.config;
    let h = scope.keep(embedding(ids, this.#wte));
    addInPlace(h, scope.keep(embedding(pos, this.#wpe)));
    const caches: {
      x: Tensor; ln1: NormSaved; a: Tensor; attnCtx: LinearContext; q: Tensor; k: Tensor; v: Tensor; out: Tensor; lse: Tensor;
      projCtx: LinearContext; h2: Tensor; ln2: NormSaved; m: Tensor; fcCtx: LinearContext; f: Tensor; g: Tensor; mlpCtx: LinearContext;
    }[] = [];
    this.#blocks.forEach((blk, l) => {
      const s = seed * 1000003 + l * 8;
      const n1 = layerNorm(h, blk.ln1.w, blk.ln1.b, eps);
      const a = scope.keep(n1.y);
      scope.keep(n1.saved.mean!);
      scope.keep(n1.saved.rstd);
      const qkv = blk.attn.forward(a, train, s, segments);
      scope.keep(qkv.y);
      if (qkv.ctx.xa) scope.keep(qkv.ctx.xa);
      const [q, k, v] = [0, 1, 2].map((i) => {
        const t = scope.keep(Tensor.empty([batch, seq, D], 'float32', qkv.y.device));
        copyColumns(qkv.y, i * D, t, 0, D);
        return t;
      }) as [Tensor, Tensor, Tensor];
      const at = this.attend(l, q, k, v, { heads, docStarts }, decode);
      scope.keep(at.out);
      if (at.lse) scope.keep(at.lse);
      const o = blk.proj.forward(at.out, train, s + 1, segments);
      if (o.ctx.xa) scope.keep(o.ctx.xa);
      const h2 = scope.keep(addInPlace(o.y, h));
      const n2 = layerNorm(h2, blk.ln2.w, blk.ln2.b, eps);
      const m = scope.keep(n2.y);
      scope.keep(n2.saved.mean!);
      scope.keep(n2.saved.rstd);
      const fc = blk.fc.forward(m, train, s + 2, segments);
      const f = scope.keep(fc.y);
      if (fc.ctx.xa) scope.keep(fc.ctx.xa);
      const g = scope.keep(gelu(f));
      const mp = blk.mlpProj.forward(g, train, s + 3, segments);
      if (mp.ctx.xa) scope.keep(mp.ctx.xa);
      const h3 = scope.keep(addInPlace(mp.y, h2));
      if (grad)
        caches.push({ x: h, ln1: n1.saved, a, attnCtx: qkv.ctx, q, k, v, out: at.out, lse: at.lse!, projCtx: o.ctx, h2, ln2: n2.saved, m, fcCtx: fc.ctx, f, g, mlpCtx: mp.ctx });
      h = h3;
    });
    const nf = layerNorm(h, this.#lnf.w, this.#lnf.b, eps);
    const last = h;
    const lnGrads = (n: { w: Tensor; b: Tensor }) => ({ weight: this.gradOf(n.w), bias: this.gradOf(n.b) });
    return endTrunk(scope, nf, {
      norm: (dHidden) => layerNormBackward(dHidden, last, this.#lnf.w, nf.saved, lnGrads(this.#lnf)),
      layers: this.#blocks.length,
      layer: (l, dh) => {
        const blk = this.#blocks[l]!, c = caches[l]!;
        // MLP: h3 = h2 + proj(gelu(fc(ln2(h2))))
        const dg = scope.keep(blk.mlpProj.backward(dh, c.mlpCtx, train));
        const df = scope.keep(geluBackward(dg, c.f));
        const dm = scope.keep(blk.fc.backward(df, c.fcCtx, train));
        const dh2 = addInPlace(scope.keep(layerNormBackward(dm, c.h2, blk.ln2.w, c.ln2, lnGrads(blk.ln2))), dh);
        // Attention: h2 = x + proj(attn(split(c_attn(ln1(x)))))
        const dout = scope.keep(blk.proj.backward(dh2, c.projCtx, train));
        const g = attentionBackward(dout, c.q, c.k, c.v, c.out, c.lse, { heads, docStarts });
        const dqkv = scope.keep(Tensor.empty([batch, seq, 3 * D], 'float32', dout.device));
        [g.dq, g.dk, g.dv].forEach((t, i) => {
          copyColumns(t, 0, dqkv, i * D, D);
          t.dispose();
        });
        const da = scope.keep(blk.attn.backward(dqkv, c.attnCtx, train));
        return addInPlace(scope.keep(layerNormBackward(da, c.x, blk.ln1.w, c.ln1, lnGrads(blk.ln1))), dh2);
      },
      embeddings: (dh) => {
        const dwte = this.gradOf(this.#wte), dwpe = this.gradOf(this.#wpe);
        if (dwte) embeddingBackward(ids, dh, dwte);
        if (dwpe) embeddingBackward(pos, dh, dwpe);
      },
    });
  }

  protected ownWeights(): [string, Tensor][] {
    const out: [string, Tensor][] = [
      ['transformer.wte.weight', this.#wte],
      ['transformer.wpe.weight', this.#wpe],
      ['transformer.ln_f.weight', this.#lnf.w],
      ['transformer.ln_f.bias', this.#lnf.b],
    ];
    this.#blocks.forEach((b, l) => {
      const p = `transformer.h.${l}`;
      out.push([`${p}.ln_1.weight`, b.ln1.w], [`${p}.ln_1.bias`, b.ln1.b], [`${p}.ln_2.weight`, b.ln2.w], [`${p}.ln_2.bias`, b.ln2.b]);
    });
    return out;
  }

  protected disposeWeights(): void {
    this.#wte.dispose();
    this.#wpe.dispose();
    this.#lnf.w.dispose();
    this.#lnf.b.dispose();
    for (const b of this.#blocks) for (const t of [b.ln1.w, b.ln1.b, b.ln2.w, b.ln2.b]) t.dispose();
  }
}
