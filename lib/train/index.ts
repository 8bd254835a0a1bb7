export { AdamW, gradNorm, type AdamWHyper, type ParamGroup, type StepOptions, type StepResult } from './adamw';
