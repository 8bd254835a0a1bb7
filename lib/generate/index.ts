/** Generation: the engine, one-off generation from a model, sampling, chat prompts. */
import { type CausalLM } from '../models/causal-lm';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { Engine, type Generation, type GenerationRequest } from './engine';

export { Engine, type EngineOptions, type Generation, type GenerationEvent, type GenerationRequest, type GenerationResult, type FinishReason } from './engine';
export { Sampler, type SamplingOptions } from './sampling';
export { TextStream } from './text';
export { chatPrompt } from './chat';

/**
 * One request on `model` as it is (its attached adapter applied, merged or not): an engine of one sequence
 * whose KV pool holds exactly the prompt and the tokens asked for, freed when the generation ends.
 */
export function generate(model: CausalLM, tokenizer: Tokenizer | null, request: GenerationRequest, options: { signal?: AbortSignal } = {}): Generation {
  // The pool's size needs the prompt's length; the engine checks the request itself.
  const promptTokens = typeof request?.prompt === 'string' && tokenizer ? tokenizer.encode(request.prompt).length : Array.isArray(request?.prompt) ? request.prompt.length : 1;
  const want = promptTokens + (typeof request?.maxTokens === 'number' ? request.maxTokens : 128);
  const engine = new Engine(model, tokenizer, { maxBatch: 1, maxQueue: 1, cacheTokens: Math.max(1, Math.min(want, model.config.maxPositions)) });
  try {
    const g = engine.generate(request, options);
    void g.result.then(
      () => engine.dispose(),
      () => engine.dispose(),
    );
    return g;
  } catch (e) {
    engine.dispose();
    throw e;
  }
}
