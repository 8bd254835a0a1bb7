export {
  openSafetensors,
  openCheckpoint,
  readSafetensorsHeader,
  writeSafetensors,
  SafetensorsFile,
  Checkpoint,
  MAX_HEADER_BYTES,
  type TensorInfo,
  type TensorSource,
  type SafetensorsHeader,
  type LoadOptions,
} from './safetensors';
export { readModelConfig, MODEL_TYPES, type ModelConfig, type ModelType } from './config';
