/** A run's model step: the model, its adapter (or full gradients), and the optimizer over what trains. */
import { addAdapter, loadAdapter } from '../adapters/adapter';
import { resolveTarget } from '../lora/config';
import { loadModel } from '../models';
import { type CausalLM } from '../models/causal-lm';
import { type Tensor } from '../tensor/tensor';
import { AdamW } from './adamw';
import { loadOptimizer, type TrainerState } from './checkpoint';
import type { Resolved } from './options';

/** The checkpoint a run continues from. */
export interface Resume {
  dir: string;
  state: TrainerState;
}

/** What the run owns from here on: it disposes of `optimizer` and `model` on every path. */
export interface BuiltModel {
  model: CausalLM;
  optimizer: AdamW;
  /** Parameter names in the optimizer's order, by which checkpoints store the moments. */
  names: string[];
  /** Each parameter's gradient, in the optimizer's order. */
  grads: Tensor[];
  /** Trainable parameter count. */
  trainable: number;
}

/** Loads the model, adds (or, resuming, loads) the adapter, and builds the optimizer; on failure frees what it built. */
export function buildModel(o: Resolved, resume: Resume | null): BuiltModel {
  // Full fine-tuning resumes from the checkpoint's weights; adapters load onto the base below.
  const model: CausalLM =
    o.method === 'qlora'
      ? loadModel(o.model, { quantize: true, device: o.device })
      : loadModel(resume && o.method === 'full' ? resume.dir : o.model, { device: o.device });
  let optimizer: AdamW | undefined;
  try {
    if (o.method === 'full') model.requireFullGrad();
    else if (resume) loadAdapter(model, resume.dir);
    else {
      const target = resolveTarget(o.target, model.linears.keys());
      addAdapter(model, { r: o.r, loraAlpha: o.alpha, loraDropout: o.dropout, targetModules: target, useRslora: o.rslora, initLoraWeights: o.init, seed: o.seed });
    }
    if (o.method !== 'full') for (const l of model.linears.values()) if (l.adapter) l.adapter.dropout = o.dropout;
    const params = model.parameters();
    // Decay matrices only: biases and norm weights keep their scale (Hugging Face Trainer's rule).
    const decay = params.filter((p) => p.param.ndim >= 2), keep = params.filter((p) => p.param.ndim < 2);
    const ordered = [...decay, ...keep];
    optimizer = new AdamW(
      [{ params: decay.map((p) => p.param), weightDecay: o.weightDecay }, ...(keep.length ? [{ params: keep.map((p) => p.param), weightDecay: 0 }] : [])],
      { lr: o.lr, betas: [0.9, 0.999], eps: 1e-8 },
    );
    const names = ordered.map((p) => p.name);
    if (resume) loadOptimizer(resume.dir, optimizer, names);
    return { model, optimizer, names, grads: ordered.map((p) => p.grad), trainable: ordered.reduce((s, p) => s + p.param.numel, 0) };
  } catch (e) {
    optimizer?.dispose();
    model.dispose();
    throw e;
  }
}
