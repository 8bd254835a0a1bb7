import { LorakitTypeError } from '../errors';
import { readModelConfig } from '../io/config';
import { openCheckpoint } from '../io/safetensors';
import { CausalLM } from './causal-lm';
import { GPT2 } from './gpt2';
import { Llama } from './llama';

export { CausalLM, type ForwardOptions, type ForwardResult } from './causal-lm';
export { GPT2 } from './gpt2';
export { Llama } from './llama';
export { Linear } from './linear';

/**
 * Loads a Hugging Face model folder (config.json + model.safetensors or a sharded index) for the CPU
 * backend, in float32.
 */
export function loadModel(dir: string): CausalLM {
  const config = readModelConfig(dir);
  using ckpt = openCheckpoint(dir);
  const src = { has: (n: string) => ckpt.has(n), get: (n: string) => ckpt.load(n, { dtype: 'float32' }) };
  switch (config.modelType) {
    case 'gpt2':
      return GPT2.fromWeights(config, src);
    case 'llama':
    case 'mistral':
    case 'qwen2':
      return Llama.fromWeights(config, src);
    default:
      throw new LorakitTypeError('ERR_INVALID_ARG', `loadModel: model_type '${String(config.modelType)}' has no implementation`);
  }
}
