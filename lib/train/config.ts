/**
 * The names a training option may go by (lorakit's camelCase and kebab-case, and the argument names
 * Hugging Face Trainer, PEFT and axolotl users type), and `--config` files: JSON or YAML read with a
 * parser, never run as code.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { LorakitError } from '../errors';
import { ioError } from '../io/config';
import { isObject } from '../check';
import { kebab, nearestName } from '../suggest';

/** Every key of TrainOptions; an options object with any other key is refused rather than ignored. */
export const TRAIN_OPTION_KEYS = [
  'model', 'data', 'method', 'r', 'alpha', 'target', 'rslora', 'init', 'dropout', 'lr', 'steps', 'epochs', 'batchSize',
  'gradAccum', 'seqLen', 'warmup', 'schedule', 'weightDecay', 'maxGradNorm', 'pack', 'evalSplit', 'evalData', 'retainData',
  'evalEvery', 'saveEvery', 'saveTotalLimit', 'out', 'overwrite', 'seed', 'resume', 'device', 'progress',
] as const;

export type TrainOptionKey = (typeof TRAIN_OPTION_KEYS)[number];

/**
 * Other projects' names for lorakit's options, each meaning the same thing here (Hugging Face
 * TrainingArguments, PEFT LoraConfig, axolotl). `--num_train_epochs` maps onto `epochs`, which lorakit
 * has; `--save_total_limit` onto `saveTotalLimit`.
 */
export const TRAIN_ALIASES: Readonly<Record<string, TrainOptionKey>> = {
  learning_rate: 'lr',
  lora_r: 'r',
  lora_alpha: 'alpha',
  lora_dropout: 'dropout',
  num_train_epochs: 'epochs',
  num_epochs: 'epochs',
  max_steps: 'steps',
  gradient_accumulation_steps: 'gradAccum',
  per_device_train_batch_size: 'batchSize',
  micro_batch_size: 'batchSize',
  max_seq_length: 'seqLen',
  sequence_len: 'seqLen',
  warmup_steps: 'warmup',
  weight_decay: 'weightDecay',
  max_grad_norm: 'maxGradNorm',
  output_dir: 'out',
  save_steps: 'saveEvery',
  eval_steps: 'evalEvery',
  save_total_limit: 'saveTotalLimit',
};


/** The option a key stands for, or null when it names none. */
export function trainOptionKey(key: string): TrainOptionKey | null {
  if ((TRAIN_OPTION_KEYS as readonly string[]).includes(key)) return key as TrainOptionKey;
  const camel = key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
  if ((TRAIN_OPTION_KEYS as readonly string[]).includes(camel)) return camel as TrainOptionKey;
  // The other projects' names also in kebab-case, as a YAML file may spell them (own keys only: a key
  // such as 'constructor' names no option, not Object's).
  const alias = key.replace(/-/g, '_');
  return Object.hasOwn(TRAIN_ALIASES, alias) ? TRAIN_ALIASES[alias]! : null;
}

/** Says which option an unknown key may have meant (as `--kebab-name`), or '' when none is near. */
export function nearestTrainOption(key: string): string {
  const best = nearestName(kebab(key), [...TRAIN_OPTION_KEYS.map(kebab), ...Object.keys(TRAIN_ALIASES)]);
  return best === null ? '' : `; did you mean '${best}'?`;
}

/**
 * Renames an object's keys to TrainOptions keys; `where` says where the keys came from in the error
 * for a key that names no option (or two keys that name the same one).
 */
export function toTrainOptions(obj: Record<string, unknown>, where: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const from: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj)) {
    const key = trainOptionKey(k);
    if (key === null) throw new LorakitError('ERR_CONFIG', `${where}: '${k}' is not a training option${nearestTrainOption(k)} (\`lorakit train --help\` lists them)`);
    if (key in out) throw new LorakitError('ERR_CONFIG', `${where}: '${from[key]}' and '${k}' both set '${key}'; give one`);
    out[key] = v;
    from[key] = k;
  }
  return out;
}

/**
 * Reads a `--config` file: .json, .yaml or .yml, holding an object of training options (any of their
 * names). Relative paths inside it are left as given: they resolve against the working directory, as
 * the same options do on the command line.
 */
export function readTrainConfig(file: string): Record<string, unknown> {
  const op = 'train --config';
  const ext = path.extname(file).toLowerCase();
  if (!['.json', '.yaml', '.yml'].includes(ext))
    throw new LorakitError('ERR_CONFIG', `${op}: '${file}' has extension '${ext || '(none)'}'; a config file is .json, .yaml or .yml`);
  let text: string;
  try {
    if (fs.statSync(file).size > 1_000_000) throw new LorakitError('ERR_CONFIG', `${op}: '${file}' is over 1 MB; a config file is a short list of options`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw ioError(op, 'read', file, e);
  }
  let value: unknown;
  try {
    value = ext === '.json' ? JSON.parse(text) : parseYaml(text, { maxAliasCount: 100 });
  } catch (e) {
    throw new LorakitError('ERR_CONFIG', `${op}: '${file}' is not valid ${ext === '.json' ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!isObject(value))
    throw new LorakitError('ERR_CONFIG', `${op}: '${file}' must hold an object of options (key: value), found ${value === null ? 'null' : Array.isArray(value) ? 'a list' : typeof value}`);
  return toTrainOptions(value, `${op} '${file}'`);
}
