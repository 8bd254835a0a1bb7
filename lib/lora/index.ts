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
