/**
 * PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
 * (`base_model.model.<module>.lora_A.weight`, `...lora_B.weight`), attached to a model's Linear modules.
 */
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { isObject, readJsonFile, show } from '../io/config';
import { openSafetensors } from '../io/safetensors';
import { type CausalLM } from '../models/causal-lm';
import { loraScale } from './linear';

/** The LoRA fields of PEFT's LoraConfig, camelCase (files keep PEFT's names). */
export interface LoraConfig {
  r: number;
  loraAlpha: number;
  loraDropout: number;
  /** Module name suffixes, one regex, or 'all-linear'. */
  targetModules: string[] | string;
  useRslora: boolean;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
}

const KEY = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/;

function configError(file: string, msg: string): LorakitError {
  return new LorakitError('ERR_INVALID_ARG', `adapter: ${file}: ${msg}`);
}

/** Reads and validates adapter_config.json. */
export function readLoraConfig(file: string): LoraConfig {
  const j = readJsonFile('adapter', file, 'ERR_INVALID_ARG');
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
  if (tm !== undefined && tm !== null && typeof tm !== 'string' && !(Array.isArray(tm) && tm.every((x) => typeof x === 'string')))
    throw configError(file, `'target_modules' must be a list of names, a regex string or "all-linear", got ${show(tm)}`);
  const dropout = num('lora_dropout', j.lora_dropout, 0);
  if (dropout < 0 || dropout >= 1) throw configError(file, `'lora_dropout' must be in [0, 1), got ${dropout}`);
  return {
    r,
    loraAlpha: num('lora_alpha', j.lora_alpha, 8),
    loraDropout: dropout,
    targetModules: (tm as string[] | string | undefined) ?? [],
    useRslora: j.use_rslora === true,
    rankPattern: pattern('rank_pattern', true),
    alphaPattern: pattern('alpha_pattern', false),
  };
}

/** PEFT's pattern lookup: a key matches a module whose name ends with it (as a regex) after a dot. */
function patternValue(patterns: Record<string, number>, module: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) if (new RegExp(`^(.*\\.)?(${key})$`).test(module)) return value;
  return undefined;
}

/** Rank and scale of one module under a config (rank_pattern / alpha_pattern first). */
export function moduleScale(config: LoraConfig, module: string): { r: number; scale: number } {
  const r = patternValue(config.rankPattern, module) ?? config.r;
  const alpha = patternValue(config.alphaPattern, module) ?? config.loraAlpha;
  return { r, scale: loraScale(alpha, r, config.useRslora) };
}

/**
 * Loads a PEFT adapter folder into the model's Linear modules (replacing any adapter they had).
 * Every tensor must name a module of this model with matching shapes.
 */
export function loadAdapter(model: CausalLM, dir: string): LoraConfig {
  const config = readLoraConfig(path.join(dir, 'adapter_config.json'));
  const file = path.join(dir, 'adapter_model.safetensors');
  using src = openSafetensors(file);
  const pairs = new Map<string, { A?: string; B?: string }>();
  for (const key of src.keys()) {
    const m = KEY.exec(key);
    if (!m) throw new LorakitTypeError('ERR_INVALID_ARG', `adapter: ${file}: '${key}' is not a PEFT LoRA key (base_model.model.<module>.lora_A|lora_B.weight)`);
    const entry = pairs.get(m[1]!) ?? {};
    entry[m[2] as 'A' | 'B'] = key;
    pairs.set(m[1]!, entry);
  }
  // Validate everything before attaching anything, so a bad adapter leaves the model untouched.
  const plan: { module: string; A: string; B: string; r: number; scale: number }[] = [];
  for (const [module, { A, B }] of pairs) {
    if (!A || !B) throw new LorakitTypeError('ERR_INVALID_ARG', `adapter: ${file}: '${module}' has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}`);
    const lin = model.linears.get(module);
    if (!lin) {
      const known = [...model.linears.keys()].slice(0, 3).join(', ');
      throw new LorakitTypeError('ERR_INVALID_ARG', `adapter: ${file}: module '${module}' does not exist in this ${model.config.modelType} model (its linear modules are named like ${known}, ...): the adapter is for another architecture or size`);
    }
    const { r, scale } = moduleScale(config, module);
    const a = src.info(A), b = src.info(B);
    const want = (name: string, got: readonly number[], exp: number[]) => {
      if (got.length !== 2 || got[0] !== exp[0] || got[1] !== exp[1])
        throw new LorakitRangeError('ERR_SHAPE', `adapter: ${file}: '${name}' has shape [${got.join(', ')}], module '${module}' with r=${r} needs [${exp.join(', ')}]`);
    };
    want(A, a.shape, [r, lin.inFeatures]);
    want(B, b.shape, [lin.outFeatures, r]);
    plan.push({ module, A, B, r, scale });
  }
  if (plan.length === 0) throw new LorakitTypeError('ERR_INVALID_ARG', `adapter: ${file} holds no LoRA weights`);
  for (const p of plan)
    model.linears.get(p.module)!.attach({ loraA: src.load(p.A, { dtype: 'float32' }), loraB: src.load(p.B, { dtype: 'float32' }), scale: p.scale, dropout: config.loraDropout });
  return config;
}
