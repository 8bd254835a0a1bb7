/** The public `lora` namespace: LoRA's pieces from every tier (the layer, the config, adapters on a model, their combination and its interference), gathered at the top so that no lower module imports this. */
export { linearForward, linearBackward, type LoraLinearParams, type LoraDropout, type LoraForwardResult, type LoraBackwardOptions, type LoraBackwardResult } from './lora/linear';
export { addAdapter, loadAdapter, saveAdapter, readLoraConfig, targetModules } from './adapters/adapter';
export { loraScale, moduleScale, LORA_DEFAULTS, type LoraConfig, type LoraOptions } from './lora/config';
export { combineAdapters, deltaError, type CombineMethod, type WeightedAdapter, type CombineOptions, type DeltaError } from './adapters/combine';
export { interference, type InterferenceAdapter, type InterferenceOptions, type AdapterInterference, type MethodInterference } from './analysis/interference';
