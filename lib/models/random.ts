/**
 * A model of a given shape with random weights and no checkpoint: for throughput and memory measurements
 * (`lorakit bench train`) at the sizes of real models without downloading them. Linear and embedding
 * weights are N(0, 0.02²) as GPT-2 initialises them, norm weights one, biases zero; every tensor's draw
 * is seeded by its name, so a shape gives the same model on every machine and device.
 */
import { parseModelConfig, type ModelConfig } from '../io/config';
import { type TensorSource } from '../io/safetensors';
import { type Device } from '../check';
import { type Tensor, full } from '../tensor/tensor';
import { randn } from '../tensor/random';
import { LorakitError } from '../errors';
import { type CausalLM } from './causal-lm';
import { GPT2 } from './gpt2';
import { Llama } from './llama';
import { CheckpointWeights, type LoadModelOptions } from './weights';

/** Hugging Face `config.json` fields of the shapes #7's benchmarks name, and a tiny one for tests. */
export const MODEL_SHAPES: Record<string, Record<string, unknown>> = {
  'gpt2-124m': { model_type: 'gpt2', n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
  'smollm-135m': {
    model_type: 'llama', hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9,
    num_key_value_heads: 3, vocab_size: 49152, max_position_embeddings: 2048, tie_word_embeddings: true, rope_theta: 10000,
  },
  'tinyllama-1.1b': {
    model_type: 'llama', hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32,
    num_key_value_heads: 4, vocab_size: 32000, max_position_embeddings: 2048, tie_word_embeddings: false, rope_theta: 10000,
  },
  'gpt2-tiny': { model_type: 'gpt2', n_layer: 2, n_embd: 64, n_head: 4, vocab_size: 512, n_positions: 128 },
  'llama-tiny': {
    model_type: 'llama', hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 256, tie_word_embeddings: false,
  },
};

// FNV-1a of the name: a stable per-tensor seed.
function nameSeed(name: string, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

// No file behind it: CheckpointWeights asks it only whether bitsandbytes quantization state exists.
const EMPTY: TensorSource = {
  keys: () => [],
  has: () => false,
  info: (name) => {
    throw new LorakitError('ERR_INVALID_ARG', `random weights: no stored tensor '${name}'`);
  },
  load: (name) => {
    throw new LorakitError('ERR_INVALID_ARG', `random weights: no stored tensor '${name}'`);
  },
  close: () => {},
  [Symbol.dispose]: () => {},
};

class RandomWeights extends CheckpointWeights {
  readonly #seed: number;
  readonly #device: Device;
  constructor(options: LoadModelOptions, seed: number) {
    super(EMPTY, options);
    this.#seed = seed;
    this.#device = options.device ?? 'cpu';
  }
  override has(name: string): boolean {
    return !name.includes('quant_state');
  }
  override get(name: string, shape: readonly number[]): Tensor {
    const device = this.#device;
    if (name.endsWith('.bias')) return full(shape, 0, { device });
    if (/(norm|ln_\d+|ln_f)\.weight$/.test(name)) return full(shape, 1, { device });
    return randn(shape, { seed: nameSeed(name, this.#seed), std: 0.02, device });
  }
}

/** A randomly initialised model from `config.json` fields (see MODEL_SHAPES). */
export function randomModel(config: Record<string, unknown> | ModelConfig, options: LoadModelOptions & { seed?: number } = {}): CausalLM {
  const c = 'modelType' in config ? (config as ModelConfig) : parseModelConfig(config, 'randomModel: config');
  const src = new RandomWeights(options, options.seed ?? 0);
  return c.modelType === 'gpt2' ? GPT2.fromWeights(c, src) : Llama.fromWeights(c, src);
}
