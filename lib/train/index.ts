export { AdamW, gradNorm, type AdamWHyper, type ParamGroup, type StepOptions, type StepResult, type StepOutcome } from './adamw';
export { evaluate, type EvalResult } from './evaluate';
export { train, resolveOptions, type TrainOptions, type TrainHandle, type TrainResult, type EvalRecord, type Method } from './trainer';
