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
