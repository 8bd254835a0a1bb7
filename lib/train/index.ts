export { AdamW, gradNorm, type AdamWHyper, type ParamGroup, type StepOptions, type StepResult } from './adamw';
export { evaluate, type EvalResult } from './evaluate';
