/**
 * Training checkpoints: the trained weights (a PEFT adapter, or the full model), the optimizer's
 * moments, and the trainer's state, written into a temporary folder that is renamed into place once
 * complete, so a crash never leaves a half checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { ioError, readJsonFile, writeJsonFile } from '../io/config';
import { isObject } from '../check';
import { makeDir } from '../io/fs';
import { openSafetensors, writeSafetensors } from '../io/safetensors';
import { saveAdapter } from '../adapters/adapter';
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
  /**
   * Names the run the checkpoint belongs to, across resumes: only this run's checkpoints are pruned.
   * Absent in checkpoints written before lorakit tagged them.
   */
  runId?: string;
  /** Each eval split's loss before training, for the change reported at every eval. */
  baselines?: Record<string, number>;
  /** The resolved options of the run, so a resume continues the same job. */
  options: Record<string, unknown>;
}

export const STATE_FILE = 'trainer_state.json';
const OPTIMIZER_FILE = 'optimizer.safetensors';

// The tokenizer files a model folder may hold: copied beside saved weights and adapters, so that each
// saved folder loads on its own (transformers' AutoTokenizer reads them from an adapter folder too).
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja'];

/** Writes the trained weights only: a PEFT adapter (LoRA, QLoRA) or a loadable full checkpoint. */
export function saveWeights(model: CausalLM, dir: string, method: string, baseModelDir: string): void {
  const op = 'train';
  makeDir(op, dir);
  if (method !== 'full') saveAdapter(model, dir, { baseModelNameOrPath: path.resolve(baseModelDir) });
  else {
    const weights = model.exportWeights('float32');
    try {
      writeSafetensors(path.join(dir, 'model.safetensors'), weights, { format: 'pt' });
    } finally {
      for (const t of Object.values(weights)) t.dispose();
    }
    const config = readJsonFile(op, path.join(baseModelDir, 'config.json'), 'ERR_CONFIG');
    writeJsonFile(op, path.join(dir, 'config.json'), config);
  }
  for (const f of method === 'full' ? [...TOKENIZER_FILES, 'generation_config.json'] : TOKENIZER_FILES) {
    const src = path.join(baseModelDir, f);
    if (!fs.existsSync(src)) continue;
    try {
      fs.copyFileSync(src, path.join(dir, f));
    } catch (e) {
      throw ioError(op, `copy '${src}' to`, path.join(dir, f), e);
    }
  }
}

/** The temporary name a folder is written under before it is renamed into place. */
export const tmpFolderName = (dir: string): string => path.join(path.dirname(dir), `.${path.basename(dir)}.tmp-${process.pid}`);

/**
 * Writes a folder through `write(tmp)` into a temporary sibling, then replaces `dir` with it: a crash
 * leaves the old folder or the new one, never a mix.
 */
export function writeFolderAtomically(dir: string, write: (tmp: string) => void): void {
  const op = 'train';
  makeDir(op, path.dirname(dir));
  const tmp = tmpFolderName(dir);
  try {
    fs.rmSync(tmp, { recursive: true, force: true });
    write(tmp);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
  } catch (e) {
    try {
      fs.rmSync(tmp, { recursive: true, force: true });
    } catch {
      // The first error is the one to report; a leftover temporary folder is removed by the next run.
    }
    throw ioError(op, 'write', dir, e);
  }
}

/** Writes a complete checkpoint to `dir` atomically (temporary folder, then rename). */
export function saveCheckpoint(dir: string, model: CausalLM, optimizer: AdamW, names: string[], state: TrainerState, baseModelDir: string): void {
  writeFolderAtomically(dir, (tmp) => {
    saveWeights(model, tmp, String(state.options.method), baseModelDir);
    const moments: Record<string, Tensor> = {};
    names.forEach((n, i) => {
      const s = optimizer.state(i);
      moments[`${n}.exp_avg`] = s.expAvg;
      moments[`${n}.exp_avg_sq`] = s.expAvgSq;
    });
    writeSafetensors(path.join(tmp, OPTIMIZER_FILE), moments, { step: String(optimizer.stepCount) });
    writeJsonFile('checkpoint', path.join(tmp, STATE_FILE), state);
  });
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
