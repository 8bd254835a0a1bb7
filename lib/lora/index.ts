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
