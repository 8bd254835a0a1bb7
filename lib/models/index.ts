import { LorakitTypeError } from '../errors';
import { readModelConfig } from '../io/config';
import { openCheckpoint } from '../io/safetensors';
import { CausalLM } from './causal-lm';
import { CheckpointWeights, type LoadModelOptions } from './weights';
import { checkOptions } from '../check';
import { GPT2 } from './gpt2';
import { Llama } from './llama';

export { CausalLM, type ForwardOptions, type ForwardResult } from './causal-lm';
export { GPT2 } from './gpt2';
export { Llama } from './llama';
export { Linear } from './linear';
export { type LoadModelOptions } from './weights';

/**
 * Loads a Hugging Face model folder (config.json + model.safetensors or a sharded index) for the CPU
 * backend: computation in float32, linear weights float32, bfloat16 or NF4 (see LoadModelOptions).
 */
export function loadModel(dir: string, options: LoadModelOptions = {}): CausalLM {
  const config = readModelConfig(dir);
  using ckpt = openCheckpoint(dir);
  const src = new CheckpointWeights(ckpt, checkOptions<LoadModelOptions>('loadModel', options));
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
