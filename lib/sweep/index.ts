/** Sweeps over training configurations with honest statistics, and memory plans for GPUs. */
export * from './stats';
export { parseSpec, readSpec, configurations, type SweepSpec, type Axes, type Configuration } from './spec';
export { runSweep, runIndex, listRuns, gatherReport, summarizeRuns, readResults, trainOne, type SweepRun, type RunOne, type RunOutcome, type RunRecord, type SweepReport, type ConfigReport } from './runner';
export { plan, activationBytes, assumedLlama, gpuMemory, parseMemory, parseParams, GPUS, BYTES, USABLE_SHARE, type Plan, type MethodPlan } from './plan';
export { submitSlurm, slurmScript, sweepStatus, indexRanges, jobName, type SlurmOptions, type Submission, type RunStatus } from './slurm';
export { indexedJob, applyJob, writeManifest, kubeconfigFound, type K8sOptions } from './k8s';
