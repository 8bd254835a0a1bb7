/**
 * `lorakit plan`: will full fine-tuning, LoRA or QLoRA of this model fit on that GPU? Estimates from the
 * model's shape, for mixed-precision training with AdamW as Hugging Face transformers + PEFT run it.
 */
import { LorakitTypeError } from '../errors';
import { type ModelConfig, parameterCounts } from '../io/config';

/** Nominal memory of common GPUs, in GiB. */
export const GPUS: readonly { name: string; gib: number }[] = [
  { name: 'RTX 3090', gib: 24 },
  { name: 'RTX 4070', gib: 12 },
  { name: 'RTX 4090', gib: 24 },
  { name: 'A100 40GB', gib: 40 },
  { name: 'A100 80GB', gib: 80 },
  { name: 'H100 80GB', gib: 80 },
  { name: 'H200', gib: 141 },
  { name: 'MI300X', gib: 192 },
];

const GIB = 2 ** 30;

/** The share of a GPU's memory a plan may use: the rest goes to the CUDA context, kernel workspaces and allocator fragmentation. */
export const USABLE_SHARE = 0.9;

/**
 * Bytes per parameter. Full fine-tuning: bf16 weights (2) and gradients (2), fp32 master weights (4) and
 * Adam's two moments (4 + 4). An adapter is trained in fp32: weights, gradients and both moments, 4 each.
 * QLoRA's NF4 with double quantization (QLoRA's default): 4 bits, plus an 8-bit absmax per 64 weights and
 * an fp32 scale per 256 of those absmax.
 */
export const BYTES = { full: 16, frozenBf16: 2, adapter: 16, nf4: 0.5 + 1 / 64 + 4 / (64 * 256) } as const;

function gpuKey(s: string): string {
  return s.toLowerCase().replace(/nvidia|geforce|amd|instinct|gb/g, '').replace(/[^a-z0-9]/g, '');
}

export function gpuMemory(name: string): { name: string; bytes: number } {
  const key = gpuKey(name);
  const hits = GPUS.filter((g) => gpuKey(g.name) === key || (gpuKey(g.name).startsWith(key) && key.length >= 4));
  if (hits.length === 1) return { name: hits[0]!.name, bytes: hits[0]!.gib * GIB };
  const known = GPUS.map((g) => g.name).join(', ');
  throw new LorakitTypeError('ERR_INVALID_ARG', hits.length ? `'${name}' could be ${hits.map((g) => g.name).join(' or ')}: say which` : `unknown GPU '${name}' (known: ${known}); give --memory instead`);
}

/** "24GB", "24 GiB", "512MB", "80G": GPU capacities are binary, so GB and GiB both mean 2^30 bytes here. */
export function parseMemory(s: string): number {
  const m = /^\s*([\d.]+)\s*([kmgt]?)(i?b)?\s*$/i.exec(s);
  const n = m ? Number(m[1]) : NaN;
  if (!m || !Number.isFinite(n) || n <= 0) throw new LorakitTypeError('ERR_INVALID_ARG', `--memory '${s}' is not a size like 24GB or 512MB`);
  const unit = (m[2] || 'g').toLowerCase();
  return n * 1024 ** ' kmgt'.indexOf(unit);
}

/** "7B", "1.5b", "350M", "7e9". */
export function parseParams(s: string): number {
  const m = /^\s*([\d.]+(?:e\d+)?)\s*([kmbt]?)\s*$/i.exec(s);
  const n = m ? Number(m[1]) * { '': 1, k: 1e3, m: 1e6, b: 1e9, t: 1e12 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'b' | 't'] : NaN;
  if (!Number.isFinite(n) || n < 1e5) throw new LorakitTypeError('ERR_INVALID_ARG', `--params '${s}' is not a model size like 7B or 350M`);
  return n;
}

// Published Llama shapes; a size far from all of them keeps the nearest one's width and changes the depth.
const LLAMAS: readonly { name: string; hidden: number; layers: number; heads: number; kvHeads: number; intermediate: number; vocab: number; tied: boolean }[] = [
  { name: 'Llama-3.2-1B', hidden: 2048, layers: 16, heads: 32, kvHeads: 8, intermediate: 8192, vocab: 128256, tied: true },
  { name: 'Llama-3.2-3B', hidden: 3072, layers: 28, heads: 24, kvHeads: 8, intermediate: 8192, vocab: 128256, tied: true },
  { name: 'Llama-2-7B', hidden: 4096, layers: 32, heads: 32, kvHeads: 32, intermediate: 11008, vocab: 32000, tied: false },
  { name: 'Llama-2-13B', hidden: 5120, layers: 40, heads: 40, kvHeads: 40, intermediate: 13824, vocab: 32000, tied: false },
  { name: 'Llama-2-70B', hidden: 8192, layers: 80, heads: 64, kvHeads: 8, intermediate: 28672, vocab: 32000, tied: false },
];

function llamaConfig(l: (typeof LLAMAS)[number], layers: number): ModelConfig {
  return {
    modelType: 'llama', vocabSize: l.vocab, hiddenSize: l.hidden, numLayers: layers, numHeads: l.heads, numKvHeads: l.kvHeads,
    headDim: l.hidden / l.heads, intermediateSize: l.intermediate, maxPositions: 4096, normEps: 1e-5, ropeTheta: 10000,
    tieWordEmbeddings: l.tied, dtype: 'bfloat16', attentionBias: false, attentionOutBias: false, mlpBias: false, hiddenAct: 'silu',
    slidingWindow: null, bosTokenId: 1, eosTokenId: [2],
  };
}

/** A Llama-like config of about `params` parameters, and a sentence saying what was assumed. */
export function assumedLlama(params: number): { config: ModelConfig; assumption: string } {
  const size = (l: (typeof LLAMAS)[number]) => parameterCounts(llamaConfig(l, l.layers)).total;
  const near = LLAMAS.reduce((a, b) => (Math.abs(Math.log(size(b) / params)) < Math.abs(Math.log(size(a) / params)) ? b : a));
  // Within 15% the published model is what "7B" means; otherwise keep its width and fit the depth.
  if (Math.abs(Math.log(size(near) / params)) < Math.log(1.15)) return { config: llamaConfig(near, near.layers), assumption: `no model given: assuming ${near.name}'s shape` };
  const one = parameterCounts(llamaConfig(near, 1)).total, zero = one - (parameterCounts(llamaConfig(near, 2)).total - one);
  const layers = Math.max(1, Math.round((params - zero) / (one - zero)));
  return { config: llamaConfig(near, layers), assumption: `no model given: assuming a Llama-like shape, ${near.name}'s width with ${layers} layers` };
}

export interface MethodPlan {
  method: 'full' | 'lora' | 'qlora';
  /** Weights, gradients and optimizer state. */
  stateBytes: number;
  activationBytes: number;
  totalBytes: number;
  /** Null when no memory was given. */
  fits: boolean | null;
}

/** What fits of one method, with or without gradient checkpointing, in the usable memory. */
export interface FitHint {
  method: MethodPlan['method'];
  checkpointing: boolean;
  /** Largest micro-batch at the plan's sequence length; 0 when not even one sequence fits. */
  maxBatchSize: number;
  /** Largest sequence at the plan's batch size and at batch 1 (at most the model's positions); 0 when none. */
  maxSeqLen: number;
  maxSeqLenBatch1: number;
}

export interface Plan {
  params: number;
  /** Trainable adapter parameters at rank r on every linear layer. */
  loraParams: number;
  r: number;
  batchSize: number;
  seqLen: number;
  checkpointing: boolean;
  activationBytes: number;
  memoryBytes: number | null;
  usableBytes: number | null;
  methods: MethodPlan[];
  /**
   * With a memory size: for each method, with and without gradient checkpointing, the largest batch and
   * sequence that fit (activations grow linearly in batch x sequence under memory-efficient attention).
   */
  fits: FitHint[] | null;
}

/** The assumptions behind every estimate, said with each plan. */
export const ASSUMPTIONS = {
  bytesPerParameter:
    `full ${BYTES.full} (bf16 weights 2 + gradients 2, fp32 master weights 4, AdamW moments 4 + 4); ` +
    `LoRA: frozen base ${BYTES.frozenBf16} (bf16) + adapter ${BYTES.adapter} (fp32 weights, gradients and both moments); ` +
    `QLoRA: linear weights ${BYTES.nf4.toFixed(4)} (NF4 4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax), the rest bf16, adapter ${BYTES.adapter}`,
  activations:
    'bf16, memory-efficient attention (no seq x seq scores kept); per token and layer 2·(4·hidden + 2·q + 2·kv + m·intermediate) + 4·heads bytes ' +
    '(m = 4 for a gated MLP, 2 for GPT-2), plus 6·vocab per token for the logits; with gradient checkpointing, 2·hidden per token and layer plus one layer\'s full set',
  usableShare: `${Math.round(USABLE_SHARE * 100)}% of the memory; the rest is CUDA context, kernel workspaces and allocator slack`,
} as const;

/** Largest n >= 0 with n * perUnit <= budget (0 when the budget is negative). */
const most = (budget: number, perUnit: number) => Math.max(0, Math.floor(budget / perUnit));

/**
 * Activation memory kept for the backward pass, in bytes, without gradient checkpointing, bf16 activations
 * and memory-efficient attention (no seq x seq score matrix kept). Per token and layer:
 *   2 * (4*hidden [each norm's input and output] + 2*q + 2*kv [q, attention output; k, v] + m*intermediate)
 *   + 4 * heads [attention's fp32 log-sum-exp]
 * where q = heads*headDim, kv = kvHeads*headDim, and m = 4 for a gated MLP (gate, up, activation, product) or 2
 * for GPT-2's (fc output, activation). Per token once: 6 * vocab for the logits (bf16, plus the fp32 copy the
 * loss is computed in). All times batch * seqLen. LoRA and QLoRA keep the same activations: gradients must
 * still flow through the frozen layers to reach earlier adapters. With gradient checkpointing only each
 * layer's bf16 input (2 * hidden) is kept, plus one layer's full set while it is recomputed.
 */
export function activationBytes(c: ModelConfig, batchSize: number, seqLen: number, checkpointing = false): number {
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  const mlp = (c.modelType === 'gpt2' ? 2 : 4) * c.intermediateSize;
  const perLayer = 2 * (4 * c.hiddenSize + 2 * q + 2 * kv + mlp) + 4 * c.numHeads;
  const layers = checkpointing ? c.numLayers * 2 * c.hiddenSize + perLayer : c.numLayers * perLayer;
  return batchSize * seqLen * (layers + 6 * c.vocabSize);
}

export function plan(c: ModelConfig, o: { batchSize?: number; seqLen?: number; r?: number; memoryBytes?: number | null; checkpointing?: boolean } = {}): Plan {
  const batchSize = o.batchSize ?? 8, seqLen = o.seqLen ?? 2048, r = o.r ?? 16;
  const counts = parameterCounts(c);
  const params = counts.total;
  let linear = 0, loraParams = 0;
  for (const e of counts.linear.values()) {
    linear += e.count * e.out * e.in;
    loraParams += e.count * r * (e.out + e.in);
  }
  const checkpointing = o.checkpointing ?? false;
  const act = activationBytes(c, batchSize, seqLen, checkpointing);
  const memoryBytes = o.memoryBytes ?? null;
  const usable = memoryBytes === null ? null : memoryBytes * USABLE_SHARE;
  const adapter = BYTES.adapter * loraParams;
  // QLoRA quantizes the layers' linear weights; embeddings, lm_head, norms and biases stay bf16.
  const states: [MethodPlan['method'], number][] = [
    ['full', BYTES.full * params],
    ['lora', BYTES.frozenBf16 * params + adapter],
    ['qlora', BYTES.nf4 * linear + BYTES.frozenBf16 * (params - linear) + adapter],
  ];
  const fits =
    usable === null
      ? null
      : states.flatMap(([method, stateBytes]) =>
          [true, false].map((ckpt): FitHint => {
            const perToken = activationBytes(c, 1, 1, ckpt);
            const tokens = most(usable - stateBytes, perToken);
            return {
              method, checkpointing: ckpt, maxBatchSize: Math.floor(tokens / seqLen),
              maxSeqLen: Math.min(c.maxPositions, Math.floor(tokens / batchSize)), maxSeqLenBatch1: Math.min(c.maxPositions, tokens),
            };
          }),
        );
  return {
    params, loraParams, r, batchSize, seqLen, checkpointing, activationBytes: act, memoryBytes, usableBytes: usable,
    methods: states.map(([method, stateBytes]) => ({ method, stateBytes, activationBytes: act, totalBytes: stateBytes + act, fits: usable === null ? null : stateBytes + act <= usable })),
    fits,
  };
}
