/** Sweeps over training configurations with honest statistics, and memory plans for GPUs. */
export * from './stats';
export { parseSpec, readSpec, configurations, type SweepSpec, type Axes, type Configuration } from './spec';
export { runSweep, trainOne, type RunOne, type RunOutcome, type RunRecord, type SweepReport, type ConfigReport } from './runner';
export { plan, activationBytes, assumedLlama, gpuMemory, parseMemory, parseParams, GPUS, BYTES, USABLE_SHARE, type Plan, type MethodPlan } from './plan';
