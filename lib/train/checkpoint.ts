/**
 * Training checkpoints: the trained weights (a PEFT adapter, or the full model), the optimizer's
 * moments, and the trainer's state, written into a temporary folder that is renamed into place once
 * complete, so a crash never leaves a half checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { isObject, readJsonFile, writeJsonFile } from '../io/config';
import { openSafetensors, writeSafetensors } from '../io/safetensors';
import { saveAdapter } from '../lora/adapter';
import { type CausalLM } from '../models/causal-lm';
import { Tensor } from '../tensor/tensor';
import { type AdamW } from './adamw';

export interface TrainerState {
  version: 1;
  /** Optimizer steps completed. */
  step: number;
  totalSteps: number;
  /** Micro-batches consumed (the data position). */
  microBatches: number;
  bestEvalLoss: number | null;
  /** Each eval split's loss before training, for the change reported at every eval. */
  baselines?: Record<string, number>;
  /** The resolved options of the run, so a resume continues the same job. */
  options: Record<string, unknown>;
}

export const STATE_FILE = 'trainer_state.json';
const OPTIMIZER_FILE = 'optimizer.safetensors';

/** Writes the trained weights only: a PEFT adapter (LoRA, QLoRA) or a loadable full checkpoint. */
export function saveWeights(model: CausalLM, dir: string, method: string, baseModelDir: string): void {
  if (method !== 'full') return saveAdapter(model, dir, { baseModelNameOrPath: path.resolve(baseModelDir) });
  fs.mkdirSync(dir, { recursive: true });
  const weights = model.exportWeights('float32');
  try {
    writeSafetensors(path.join(dir, 'model.safetensors'), weights, { format: 'pt' });
  } finally {
    for (const t of Object.values(weights)) t.dispose();
  }
  const config = readJsonFile('checkpoint', path.join(baseModelDir, 'config.json'), 'ERR_CONFIG');
  writeJsonFile('checkpoint', path.join(dir, 'config.json'), config);
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'])
    if (fs.existsSync(path.join(baseModelDir, f))) fs.copyFileSync(path.join(baseModelDir, f), path.join(dir, f));
}

/** Writes a complete checkpoint to `dir` atomically (temporary folder, then rename). */
export function saveCheckpoint(dir: string, model: CausalLM, optimizer: AdamW, names: string[], state: TrainerState, baseModelDir: string): void {
  const parent = path.dirname(dir);
  fs.mkdirSync(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(dir)}.tmp-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    saveWeights(model, tmp, String(state.options.method), baseModelDir);
    const moments: Record<string, Tensor> = {};
    names.forEach((n, i) => {
      const s = optimizer.state(i);
      moments[`${n}.exp_avg`] = s.expAvg;
      moments[`${n}.exp_avg_sq`] = s.expAvgSq;
    });
    writeSafetensors(path.join(tmp, OPTIMIZER_FILE), moments, { step: String(optimizer.stepCount) });
    writeJsonFile('checkpoint', path.join(tmp, STATE_FILE), state);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Reads a checkpoint's trainer state, checking it is one. */
export function readState(dir: string): TrainerState {
  const file = path.join(dir, STATE_FILE);
  if (!fs.existsSync(file)) throw new LorakitError('ERR_INVALID_ARG', `resume: '${dir}' is not a lorakit checkpoint (it has no ${STATE_FILE})`);
  const s = readJsonFile('resume', file, 'ERR_INVALID_ARG');
  if (!isObject(s) || s.version !== 1 || typeof s.step !== 'number' || typeof s.microBatches !== 'number' || !isObject(s.options))
    throw new LorakitError('ERR_INVALID_ARG', `resume: '${file}' is not a version-1 trainer state`);
  return s as unknown as TrainerState;
}

/** Restores the optimizer's moments and step count from a checkpoint. */
export function loadOptimizer(dir: string, optimizer: AdamW, names: string[]): void {
  using src = openSafetensors(path.join(dir, OPTIMIZER_FILE));
  const step = Number(src.metadata.step);
  if (!Number.isInteger(step) || step < 0) throw new LorakitError('ERR_INVALID_ARG', `resume: '${dir}/${OPTIMIZER_FILE}' has no valid step in its metadata`);
  const loaded: { expAvg: Tensor; expAvgSq: Tensor }[] = [];
  try {
    for (const n of names) {
      if (!src.has(`${n}.exp_avg`)) throw new LorakitError('ERR_INVALID_ARG', `resume: '${dir}/${OPTIMIZER_FILE}' has no moments for '${n}': the checkpoint is for other trainable parameters`);
      loaded.push({ expAvg: src.load(`${n}.exp_avg`), expAvgSq: src.load(`${n}.exp_avg_sq`) });
    }
    optimizer.loadState(step, loaded);
  } finally {
    for (const m of loaded) {
      m.expAvg.dispose();
      m.expAvgSq.dispose();
    }
  }
}
