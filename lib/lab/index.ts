export { ARMS, armScale, trainableParameters, type Arm } from './arms';
export { FULL, LAB_BASE, QUICK, runLab, score, type ArmSummary, type LabOptions, type LabReport, type LabSettings, type RunResult, type Score, type TaskReport } from './lab';
export { formatLab } from './table';
export { COLOURS, OBJECTS, STORAGE_RULE, TASKS, behaviourTask, knowledgeTask, makePeople, makeTask, type Pair, type Person, type TaskName, type TaskSplit } from './world';
