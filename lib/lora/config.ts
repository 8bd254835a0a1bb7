/**
 * PEFT's LoraConfig and the rules that read it: defaults, validation of adapter_config.json's fields, target
 * matching (with lorakit's presets), and each module's rank and scale. Like PEFT's config.py it imports
 * nothing from layers or models, so every tier above can share it.
 */
import { LorakitError, LorakitTypeError } from '../errors';
import { checkNumber, isObject, show } from '../check';

/** PEFT's init_lora_weights values lorakit supports. */
export type LoraInit = boolean | 'gaussian' | 'pissa';
export const INIT_LORA_WEIGHTS: readonly LoraInit[] = [true, false, 'gaussian', 'pissa'];

/** The LoRA fields of PEFT's LoraConfig, camelCase (files keep PEFT's names). */
export interface LoraConfig {
  r: number;
  loraAlpha: number;
  loraDropout: number;
  /** Module names (matched as name suffixes), one regex (full match), or 'all-linear'. */
  targetModules: string[] | string;
  /** Modules left out, matched the same way. */
  excludeModules: string[] | string | null;
  useRslora: boolean;
  /** true: A Kaiming-uniform, B zero; 'gaussian': A ~ N(0, 1/r), B zero; 'pissa': principal singular vectors; false: both random. */
  initLoraWeights: LoraInit;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  /** Only these layer indices get adapters (null: all). */
  layersToTransform: number[] | null;
}

export type LoraOptions = Partial<LoraConfig> & {
  /** Seed of the initial A (and B) values. */
  seed?: number;
};

export const LORA_DEFAULTS: Readonly<LoraConfig> = {
  r: 16,
  loraAlpha: 32,
  loraDropout: 0.05,
  targetModules: 'all-linear',
  excludeModules: null,
  useRslora: false,
  initLoraWeights: true,
  rankPattern: {},
  alphaPattern: {},
  layersToTransform: null,
};

function configError(file: string, msg: string): LorakitError {
  return new LorakitError('ERR_INVALID_ARG', `adapter: ${file}: ${msg}`);
}

/** Validates the parsed adapter_config.json `j` read from `file` (named in every message). */
export function parseLoraConfig(j: unknown, file: string): LoraConfig {
  if (!isObject(j)) throw configError(file, `expected a JSON object, got ${show(j)}`);
  if (j.peft_type !== undefined && j.peft_type !== 'LORA') throw configError(file, `peft_type must be "LORA", got ${show(j.peft_type)}`);
  const posInt = (k: string, v: unknown) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw configError(file, `'${k}' must be a positive integer, got ${show(v)}`);
    return v;
  };
  const num = (k: string, v: unknown, dflt: number) => {
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw configError(file, `'${k}' must be a number, got ${show(v)}`);
    return v;
  };
  const r = posInt('r', j.r ?? 8);
  const pattern = (k: string, integer: boolean): Record<string, number> => {
    const v = j[k];
    if (v === undefined || v === null) return {};
    if (!isObject(v)) throw configError(file, `'${k}' must be an object of module pattern to number, got ${show(v)}`);
    for (const [p, n] of Object.entries(v)) (integer ? posInt(`${k}.${p}`, n) : num(`${k}.${p}`, n, 0));
    return v as Record<string, number>;
  };
  if (j.bias !== undefined && j.bias !== 'none') throw configError(file, `bias ${show(j.bias)} is not supported (only "none")`);
  const tm = j.target_modules;
  const dropout = num('lora_dropout', j.lora_dropout, 0);
  if (dropout < 0 || dropout >= 1) throw configError(file, `'lora_dropout' must be in [0, 1), got ${dropout}`);
  const names = (k: string, v: unknown): string[] | string | null => {
    if (v === undefined || v === null) return null;
    if (typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string'))) return v as string[] | string;
    throw configError(file, `'${k}' must be a list of names or a regex string, got ${show(v)}`);
  };
  const init = j.init_lora_weights ?? true;
  if (!INIT_LORA_WEIGHTS.includes(init as LoraInit))
    throw configError(file, `'init_lora_weights' ${show(init)} is not supported (true, false, "gaussian" or "pissa")`);
  const layers = j.layers_to_transform;
  if (layers !== undefined && layers !== null && !(Number.isInteger(layers) || (Array.isArray(layers) && layers.every((x) => Number.isInteger(x)))))
    throw configError(file, `'layers_to_transform' must be a layer index or a list of them, got ${show(layers)}`);
  return {
    r,
    loraAlpha: num('lora_alpha', j.lora_alpha, 8),
    loraDropout: dropout,
    targetModules: names('target_modules', tm) ?? [],
    excludeModules: names('exclude_modules', j.exclude_modules),
    useRslora: j.use_rslora === true,
    initLoraWeights: init as LoraConfig['initLoraWeights'],
    rankPattern: pattern('rank_pattern', true),
    alphaPattern: pattern('alpha_pattern', false),
    layersToTransform: layers === undefined || layers === null ? null : typeof layers === 'number' ? [layers] : (layers as number[]),
  };
}

/** PEFT's pattern lookup: a key matches a module whose name ends with it (as a regex) after a dot. */
function patternValue(patterns: Record<string, number>, module: string, name: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) if (compile(`^(.*\\.)?(${key})$`, name, key).test(module)) return value;
  return undefined;
}

/** PEFT's scaling: lora_alpha / r, or lora_alpha / √r with use_rslora. */
export function loraScale(loraAlpha: number, r: number, useRslora = false): number {
  checkNumber('loraScale', 'r', r, { integer: true, min: 1 });
  checkNumber('loraScale', 'loraAlpha', loraAlpha);
  return useRslora ? loraAlpha / Math.sqrt(r) : loraAlpha / r;
}

/** Rank and scale of one module under a config (rank_pattern / alpha_pattern first). */
export function moduleScale(config: LoraConfig, module: string): { r: number; scale: number } {
  const r = patternValue(config.rankPattern, module, 'rank_pattern') ?? config.r;
  const alpha = patternValue(config.alphaPattern, module, 'alpha_pattern') ?? config.loraAlpha;
  return { r, scale: loraScale(alpha, r, config.useRslora) };
}

/** PEFT's list matching: a module named exactly so or ending in '.name'. */
export function matchesName(name: string, module: string): boolean {
  return module === name || module.endsWith(`.${name}`);
}

/** `source`, made from the config value `pattern` of `key`; a pattern JavaScript cannot compile is the config's error. */
function compile(source: string, key: string, pattern: string): RegExp {
  try {
    return new RegExp(source);
  } catch (e) {
    throw new LorakitTypeError('ERR_INVALID_ARG', `adapter: '${key}' ${show(pattern)} is not a valid regular expression: ${(e as Error).message}`);
  }
}

/** A regex form of target_modules or exclude_modules, which PEFT full-matches against module names. */
function fullMatch(pattern: string, key: string): RegExp {
  return compile(`^(?:${pattern})$`, key, pattern);
}

/** PEFT's module matching: a list matches a module named exactly so or ending in '.name'; a string is a regex that must match the whole name. */
export function matches(spec: string[] | string, module: string, key: string): boolean {
  if (typeof spec === 'string') return fullMatch(spec, key).test(module);
  return spec.some((n) => matchesName(n, module));
}

/** The layer index in a module path (`...layers.3...` or GPT-2's `...h.3...`). */
function layerOf(module: string): number | undefined {
  const m = /\.(?:layers|h)\.(\d+)\./.exec(module);
  return m ? Number(m[1]) : undefined;
}

/** The modules of `modules` (a model's linear names) a config adapts (all-linear: every linear; the output head is not one). */
export function matchTargets(modules: Iterable<string>, config: LoraConfig): string[] {
  const out: string[] = [];
  for (const name of modules) {
    if (config.targetModules !== 'all-linear' && !matches(config.targetModules, name, 'target_modules')) continue;
    if (config.excludeModules !== null && matches(config.excludeModules, name, 'exclude_modules')) continue;
    if (config.layersToTransform !== null && !config.layersToTransform.includes(layerOf(name) ?? -1)) continue;
    out.push(name);
  }
  return out;
}

/**
 * lorakit's target presets. attention and mlp name both families' modules (GPT-2's and the Llama family's);
 * `resolveTarget` keeps those a model has.
 */
export const TARGET_PRESETS: Readonly<Record<string, readonly string[] | 'all-linear'>> = {
  'all-linear': 'all-linear',
  attention: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'c_attn', 'attn.c_proj'],
  mlp: ['gate_proj', 'up_proj', 'down_proj', 'c_fc', 'mlp.c_proj'],
};

/** A target a user writes, a preset name or module names, is one of these or a regex. */
export function isTargetSpec(t: string): boolean {
  return Object.hasOwn(TARGET_PRESETS, t) || /^[\w.,|\\()*+?-]+$/.test(t);
}

/**
 * A user's target as PEFT's target_modules for a model whose linear modules are `modules`: a preset (the
 * names the model has, since a name matching nothing is refused), a comma-separated list of module names,
 * or (with regex characters) PEFT's regex form; a list passes through.
 */
export function resolveTarget(target: string | readonly string[], modules: Iterable<string>): string[] | string {
  if (typeof target !== 'string') return [...target];
  const preset = Object.hasOwn(TARGET_PRESETS, target) ? TARGET_PRESETS[target] : undefined;
  if (preset === 'all-linear') return preset;
  const names = [...modules];
  if (preset) return preset.filter((n) => names.some((m) => matchesName(n, m)));
  return /^[\w.,]+$/.test(target) ? target.split(',').filter(Boolean) : target;
}
