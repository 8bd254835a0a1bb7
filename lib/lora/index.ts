export { linearForward, linearBackward, type LoraLinearParams, type LoraDropout, type LoraForwardResult, type LoraBackwardOptions, type LoraBackwardResult } from './linear';
export { addAdapter, loadAdapter, saveAdapter, readLoraConfig, targetModules } from './adapter';
export { loraScale, moduleScale, LORA_DEFAULTS, type LoraConfig, type LoraOptions } from './config';
export { combineAdapters, deltaError, type CombineMethod, type WeightedAdapter, type CombineOptions, type DeltaError } from './combine';
export { interference, type InterferenceAdapter, type InterferenceOptions, type AdapterInterference, type MethodInterference } from '../analysis/interference';
