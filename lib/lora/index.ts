export {
  linearForward,
  linearBackward,
  loraScale,
  type LoraLinearParams,
  type LoraDropout,
  type LoraForwardResult,
  type LoraBackwardOptions,
  type LoraBackwardResult,
} from './linear';
export { addAdapter, loadAdapter, saveAdapter, readLoraConfig, targetModules, moduleScale, LORA_DEFAULTS, type LoraConfig, type LoraOptions } from './adapter';
export {
  combineAdapters,
  deltaError,
  interference,
  type CombineMethod,
  type WeightedAdapter,
  type CombineOptions,
  type DeltaError,
  type InterferenceAdapter,
  type InterferenceOptions,
  type AdapterInterference,
  type MethodInterference,
} from './combine';
