/**
 * lorakit: LoRA, QLoRA and full fine-tuning on a native core.
 *
 *   import { tensor, ops, nf4, lora, optim, backend } from 'lorakit';
 */
export * from './tensor';
export * as ops from './ops';
export * as nf4 from './nf4';
export { NF4Tensor } from './nf4';
export { backend, type BackendInfo } from './backend';
export {
  LorakitError,
  LorakitTypeError,
  LorakitRangeError,
  DisposedError,
  NoBinaryError,
  type ErrorCode,
} from './errors';
export * as lora from './lora-api';
export { AdamW, gradNorm, evaluate, train, type AdamWHyper, type ParamGroup, type StepOptions, type StepResult, type StepOutcome, type EvalResult, type TrainOptions, type TrainHandle, type TrainResult } from './train';
export * as io from './io';
export { loadTokenizer, ByteTokenizer, type Tokenizer } from './tokenizer';
export { loadModel, CausalLM, GPT2, Llama, type LoadModelOptions, type ForwardOptions, type ForwardResult } from './models';
export { readJsonl, tokenize, type Example, type DataRecord } from './data';
export * as analysis from './analysis';
export { exportGguf, type ExportOptions, type ExportResult, type ExportDtype } from './export';
export { Engine, generate, chatPrompt, Sampler, type EngineOptions, type Generation, type GenerationEvent, type GenerationRequest, type GenerationResult, type FinishReason, type SamplingOptions } from './generate';
export { startServer, type ServerOptions, type Server } from './serve/server';

import { CausalLM } from './models';
import { generate, type Generation, type GenerationRequest } from './generate';
import { type Tokenizer } from './tokenizer';

declare module './models/causal-lm' {
  interface CausalLM {
    /**
     * Generates from this model (its attached adapter applied): `for await (const { token, delta } of
     * model.generate(tokenizer, { prompt, maxTokens }))`, or `await model.generate(...).result`. Many requests,
     * or many adapters at once: `new Engine(model, tokenizer)`.
     */
    generate(tokenizer: Tokenizer | null, request: GenerationRequest, options?: { signal?: AbortSignal }): Generation;
  }
}
// The model classes live below the generation engine (lib/ is in tiers); the package's surface joins them here.
CausalLM.prototype.generate = function (this: CausalLM, tokenizer: Tokenizer | null, request: GenerationRequest, options?: { signal?: AbortSignal }): Generation {
  return generate(this, tokenizer, request, options);
};
