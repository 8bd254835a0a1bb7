/**
 * A sweep specification: the base training job, the axes to vary, the seeds, and where the runs go.
 * Every field is checked up front, so a typo fails before hours of training rather than after.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitTypeError } from '../errors';
import { ioError, readJsonFile } from '../io/config';
import { isObject, show } from '../check';
import { INIT_LORA_WEIGHTS, type LoraInit } from '../lora/config';
import { makeDir, writeTextFile } from '../io/fs';
import { seededPermutation } from '../data';
import { resolveOptions, type TrainOptions } from '../train/trainer';
import { METHODS, type Method } from '../train/options';
import { TRAIN_OPTION_KEYS } from '../train/config';

export interface Axes {
  r?: number[];
  lr?: number[];
  method?: NonNullable<TrainOptions['method']>[];
  rslora?: boolean[];
  target?: NonNullable<TrainOptions['target']>[];
  alpha?: number[];
  dropout?: number[];
  init?: NonNullable<TrainOptions['init']>[];
  /** Training examples to keep: the first N of the data file, written as a copy into the sweep folder. */
  dataSize?: number[];
}

export type AxisName = keyof Axes;
export type AxisValue = NonNullable<Axes[AxisName]>[number];

export interface SweepSpec {
  base: Omit<TrainOptions, 'out' | 'seed'>;
  axes: Axes;
  mode: 'grid' | 'random';
  /** Configurations drawn from the grid in random mode. */
  samples: number | null;
  seeds: number[];
  out: string;
  /** Runs at a time. */
  parallel: number;
}

export interface Configuration {
  /** Stable short hash of the base job and the axis values: the folder name under runs/. */
  id: string;
  /** The axis values, readable: "r=8 lr=0.0001". */
  label: string;
  values: Partial<Record<AxisName, AxisValue>>;
}

const AXES: readonly AxisName[] = ['r', 'lr', 'method', 'rslora', 'target', 'alpha', 'dropout', 'init', 'dataSize'];
const TOP = ['base', 'axes', 'mode', 'samples', 'seeds', 'out', 'parallel'];
// Every TrainOptions key a base job may set, but those the sweep sets for each run (out, seed, resume,
// overwrite): one list of training options (TRAIN_OPTION_KEYS), so a new option is a sweep axis' base too.
const SWEEP_OWNED = ['out', 'seed', 'resume', 'overwrite'];
const BASE_KEYS: readonly string[] = TRAIN_OPTION_KEYS.filter((k) => !SWEEP_OWNED.includes(k));
const PATH_KEYS = ['model', 'data', 'evalData', 'retainData'] as const;

function fail(where: string, msg: string): LorakitTypeError {
  return new LorakitTypeError('ERR_INVALID_ARG', `sweep spec${where ? ` ${where}` : ''}: ${msg}`);
}

const isInt = (v: unknown, min: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min;

const AXIS_CHECKS: Record<AxisName, [(v: unknown) => boolean, string]> = {
  r: [(v) => isInt(v, 1), 'an integer >= 1'],
  lr: [(v) => typeof v === 'number' && Number.isFinite(v) && v > 0, 'a number > 0'],
  method: [(v) => METHODS.includes(v as Method), 'lora, qlora or full'],
  rslora: [(v) => typeof v === 'boolean', 'true or false'],
  target: [(v) => (typeof v === 'string' && v !== '') || (Array.isArray(v) && v.length > 0 && v.every((m) => typeof m === 'string' && m !== '')), 'a preset or module name(s)'],
  alpha: [(v) => typeof v === 'number' && Number.isFinite(v) && v >= 0, 'a number >= 0'],
  dropout: [(v) => typeof v === 'number' && v >= 0 && v <= 0.99, 'a number in [0, 0.99]'],
  init: [(v) => INIT_LORA_WEIGHTS.includes(v as LoraInit), 'true, false, gaussian or pissa'],
  dataSize: [(v) => isInt(v, 1), 'an integer >= 1'],
};

/**
 * Checks a parsed spec. Relative paths (out and the base job's files) are taken from `dir`, the spec file's
 * folder, so a spec means the same wherever the command is run.
 */
export function parseSpec(raw: unknown, dir = '.'): SweepSpec {
  if (!isObject(raw)) throw fail('', `must be a JSON object, got ${show(raw)}`);
  for (const k of Object.keys(raw)) if (!TOP.includes(k)) throw fail(`'${k}'`, `is not a sweep field (${TOP.join(', ')})`);

  const base = raw.base;
  if (!isObject(base)) throw fail(`'base'`, `must be an object of training options, got ${show(base)}`);
  for (const k of Object.keys(base)) {
    if (SWEEP_OWNED.includes(k)) throw fail(`'base.${k}'`, k === 'seed' || k === 'out' ? `is set by the sweep (use the spec's '${k === 'seed' ? 'seeds' : 'out'}')` : 'is set by the sweep for each run');
    if (!BASE_KEYS.includes(k)) throw fail(`'base.${k}'`, 'is not a training option');
  }
  for (const k of ['model', 'data'] as const) if (typeof base[k] !== 'string' || base[k] === '') throw fail(`'base.${k}'`, `must be a path, got ${show(base[k])}`);
  const job = { ...base } as Omit<TrainOptions, 'out' | 'seed'>;
  for (const k of PATH_KEYS) {
    const v = job[k];
    if (v !== undefined && typeof v !== 'string') throw fail(`'base.${k}'`, `must be a path, got ${show(v)}`);
    if (typeof v === 'string') job[k] = path.resolve(dir, v);
  }

  const axesRaw = raw.axes ?? {};
  if (!isObject(axesRaw)) throw fail(`'axes'`, `must be an object of value lists, got ${show(axesRaw)}`);
  const axes: Axes = {};
  for (const [k, list] of Object.entries(axesRaw)) {
    if (!(AXES as readonly string[]).includes(k)) throw fail(`'axes.${k}'`, `is not an axis (${AXES.join(', ')})`);
    const name = k as AxisName;
    if (!Array.isArray(list) || list.length === 0) throw fail(`'axes.${k}'`, `must be a non-empty list, got ${show(list)}`);
    const [ok, what] = AXIS_CHECKS[name];
    list.forEach((v: unknown, i) => {
      if (!ok(v)) throw fail(`'axes.${k}[${i}]'`, `must be ${what}, got ${show(v)}`);
    });
    const keys = list.map((v: unknown) => JSON.stringify(v));
    if (new Set(keys).size !== keys.length) throw fail(`'axes.${k}'`, 'lists a value twice');
    (axes as Record<string, unknown[]>)[name] = list;
  }

  const mode = raw.mode ?? 'grid';
  if (mode !== 'grid' && mode !== 'random') throw fail(`'mode'`, `must be "grid" or "random", got ${show(mode)}`);
  let samples: number | null = null;
  if (mode === 'random') {
    if (!isInt(raw.samples, 1)) throw fail(`'samples'`, `must be an integer >= 1 in random mode, got ${show(raw.samples)}`);
    samples = raw.samples;
  } else if (raw.samples !== undefined) throw fail(`'samples'`, 'applies only to mode "random"');

  const seeds = raw.seeds;
  if (!Array.isArray(seeds) || seeds.length === 0) throw fail(`'seeds'`, `must be a non-empty list of integers, got ${show(seeds)}`);
  seeds.forEach((s: unknown, i) => {
    if (!isInt(s, 0)) throw fail(`'seeds[${i}]'`, `must be an integer >= 0, got ${show(s)}`);
  });
  if (new Set(seeds).size !== seeds.length) throw fail(`'seeds'`, 'lists a seed twice');
  if (typeof raw.out !== 'string' || raw.out === '') throw fail(`'out'`, `must be a folder path, got ${show(raw.out)}`);
  const parallel = raw.parallel ?? 1;
  if (!isInt(parallel, 1)) throw fail(`'parallel'`, `must be an integer >= 1, got ${show(parallel)}`);

  const spec: SweepSpec = { base: job, axes, mode, samples, seeds: seeds as number[], out: path.resolve(dir, raw.out), parallel };
  // Every configuration must be a valid training job: check them all now, naming the one that is not.
  for (const c of configurations(spec)) {
    try {
      resolveOptions({ ...jobFor(spec, c, path.join(spec.out, 'runs', c.id)), seed: spec.seeds[0] });
    } catch (e) {
      throw fail(`configuration ${c.label || '(base)'}`, e instanceof Error ? e.message.replace(/^train: /, '') : String(e));
    }
  }
  return spec;
}

export function readSpec(file: string): SweepSpec {
  return parseSpec(readJsonFile('sweep', file, 'ERR_INVALID_ARG'), path.dirname(path.resolve(file)));
}

function shortNumber(v: AxisValue): string {
  return Array.isArray(v) ? v.join(',') : String(v);
}

/** The configurations a spec runs: the full grid, or in random mode a fixed random subset of it. */
export function configurations(spec: SweepSpec): Configuration[] {
  const names = AXES.filter((a) => spec.axes[a] !== undefined);
  let grid: Partial<Record<AxisName, AxisValue>>[] = [{}];
  for (const a of names) grid = grid.flatMap((g) => spec.axes[a]!.map((v) => ({ ...g, [a]: v })));
  if (spec.mode === 'random' && spec.samples! < grid.length) {
    // A fixed stream, so a resumed sweep draws the same configurations again.
    const pick = seededPermutation(grid.length, 0x5eed, 0).subarray(0, spec.samples!);
    grid = [...pick].sort((x, y) => x - y).map((i) => grid[i]!);
  }
  return grid.map((values) => {
    const key = JSON.stringify({ base: spec.base, values: names.map((a) => [a, values[a]]) });
    return {
      id: createHash('sha256').update(key).digest('hex').slice(0, 10),
      label: names.map((a) => `${a}=${shortNumber(values[a]!)}`).join(' '),
      values,
    };
  });
}

/** The training options of one configuration; `data` is the truncated copy when the configuration sets dataSize. */
export function jobFor(spec: SweepSpec, c: Configuration, out: string, data = spec.base.data): TrainOptions {
  const { dataSize: _dataSize, ...values } = c.values;
  return { ...spec.base, ...(values as Partial<TrainOptions>), data, out, progress: spec.base.progress ?? 'none' };
}

/**
 * The first n examples of a .jsonl (non-blank lines) or .txt (blank-line separated documents) file, written
 * once into `dir`; asking for more examples than the file holds is an error, not a silent smaller run.
 */
export function truncatedData(file: string, n: number, dir: string): string {
  const ext = path.extname(file).toLowerCase();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw ioError('sweep', 'read', file, e);
  }
  const parts = ext === '.txt' ? text.split(/\r?\n(?:[ \t]*\r?\n)+/).filter((d) => d.trim() !== '') : text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (parts.length < n) throw fail(`'axes.dataSize'`, `${n} examples asked for, but ${file} holds ${parts.length}`);
  const target = path.join(dir, `${path.basename(file, path.extname(file))}-${n}${ext}`);
  if (!fs.existsSync(target)) {
    makeDir('sweep', dir);
    writeTextFile('sweep', target, `${parts.slice(0, n).join(ext === '.txt' ? '\n\n' : '\n')}\n`);
  }
  return target;
}
