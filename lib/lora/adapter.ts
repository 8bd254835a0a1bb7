/**
 * PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
 * (`base_model.model.<module>.lora_A.weight`, `...lora_B.weight`), attached to a model's Linear modules.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { isObject, readJsonFile, show, writeJsonFile } from '../io/config';
import { makeDir } from '../io/fs';
import { openSafetensors, writeSafetensors } from '../io/safetensors';
import { type CausalLM } from '../models/causal-lm';
import { type Linear } from '../models/linear';
import { Tensor, tensor, zeros } from '../tensor/tensor';
import { rand, randn } from '../tensor/random';
import { checkNumber, checkOptions } from '../ops/check';
import { matmul } from '../ops/matmul';
import { addInPlace } from '../ops/nn';
import { loraScale } from './linear';

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
  initLoraWeights: boolean | 'gaussian' | 'pissa';
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
  const dropout = num('lora_dropout', j.lora_dropout, 0);
  if (dropout < 0 || dropout >= 1) throw configError(file, `'lora_dropout' must be in [0, 1), got ${dropout}`);
  const names = (k: string, v: unknown): string[] | string | null => {
    if (v === undefined || v === null) return null;
    if (typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string'))) return v as string[] | string;
    throw configError(file, `'${k}' must be a list of names or a regex string, got ${show(v)}`);
  };
  const init = j.init_lora_weights ?? true;
  if (init !== true && init !== false && init !== 'gaussian' && init !== 'pissa')
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

/** Rank and scale of one module under a config (rank_pattern / alpha_pattern first). */
export function moduleScale(config: LoraConfig, module: string): { r: number; scale: number } {
  const r = patternValue(config.rankPattern, module, 'rank_pattern') ?? config.r;
  const alpha = patternValue(config.alphaPattern, module, 'alpha_pattern') ?? config.loraAlpha;
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
  // After the weights' own check, whose message tells an adapter for another architecture apart.
  checkTargetsExist(model, config.targetModules, `adapter: ${path.join(dir, 'adapter_config.json')}`);
  // Adapter files are read into host memory and moved to the model's device.
  const onModel = (t: Tensor): Tensor => {
    if (t.device === model.device) return t;
    try {
      return t.to(model.device);
    } finally {
      t.dispose();
    }
  };
  for (const p of plan)
    model.linears.get(p.module)!.attach({
      loraA: onModel(src.load(p.A, { dtype: 'float32' })), loraB: onModel(src.load(p.B, { dtype: 'float32' })), scale: p.scale, dropout: config.loraDropout,
    });
  model.adapterConfig = config;
  return config;
}

/** PEFT's list matching: a module named exactly so or ending in '.name'. */
function matchesName(name: string, module: string): boolean {
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
function matches(spec: string[] | string, module: string, key: string): boolean {
  if (typeof spec === 'string') return fullMatch(spec, key).test(module);
  return spec.some((n) => matchesName(n, module));
}

/**
 * Refuses target_modules that name modules the model lacks, as PEFT refuses a config that matches none ("Target
 * modules ... not found in the base model"), but per name: a misspelt name in a list would otherwise leave that
 * module untrained in silence. `where` starts the message (the op, or the adapter_config.json read).
 */
function checkTargetsExist(model: CausalLM, targets: string[] | string, where: string): void {
  if (targets === 'all-linear') return;
  const names = [...model.linears.keys()];
  const missing = typeof targets === 'string'
    ? (names.some((m) => matches(targets, m, 'target_modules')) ? [] : [targets])
    : targets.filter((t) => !names.some((m) => matchesName(t, m)));
  if (missing.length === 0) return;
  const kinds = [...new Set(names.map((m) => m.split('.').pop()!))];
  const what = typeof targets === 'string' ? `the target_modules regex ${show(targets)} matches` : `target_modules ${show(missing)} match`;
  throw new LorakitTypeError(
    'ERR_INVALID_ARG',
    `${where}: ${what} no module of this ${model.config.modelType} model (not found in the base model); its linear modules are ${kinds.join(', ')} (full names like '${names[0]}'), or use 'all-linear'`,
  );
}

/** The layer index in a module path (`...layers.3...` or GPT-2's `...h.3...`). */
function layerOf(module: string): number | undefined {
  const m = /\.(?:layers|h)\.(\d+)\./.exec(module);
  return m ? Number(m[1]) : undefined;
}

/** The modules a config adapts in this model (all-linear: every linear; the output head is not one). */
export function targetModules(model: CausalLM, config: LoraConfig): string[] {
  const out: string[] = [];
  for (const name of model.linears.keys()) {
    if (config.targetModules !== 'all-linear' && !matches(config.targetModules, name, 'target_modules')) continue;
    if (config.excludeModules !== null && matches(config.excludeModules, name, 'exclude_modules')) continue;
    if (config.layersToTransform !== null && !config.layersToTransform.includes(layerOf(name) ?? -1)) continue;
    out.push(name);
  }
  return out;
}

function checkLoraOptions(o: LoraOptions): LoraConfig {
  const op = 'addAdapter';
  const c: LoraConfig = { ...LORA_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([k, v]) => v !== undefined && k !== 'seed')) };
  checkNumber(op, 'r', c.r, { integer: true, min: 1 });
  checkNumber(op, 'loraAlpha', c.loraAlpha);
  checkNumber(op, 'loraDropout', c.loraDropout, { min: 0, max: 1, maxExclusive: true });
  if (![true, false, 'gaussian', 'pissa'].includes(c.initLoraWeights))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'initLoraWeights' must be true, false, 'gaussian' or 'pissa', got ${show(c.initLoraWeights)}`);
  for (const [k, v] of Object.entries(c.rankPattern)) checkNumber(op, `rankPattern.${k}`, v, { integer: true, min: 1 });
  for (const [k, v] of Object.entries(c.alphaPattern)) checkNumber(op, `alphaPattern.${k}`, v);
  return c;
}

/**
 * Creates a fresh adapter on the modules `options` target (PEFT's defaults otherwise, with lorakit's
 * r=16, alpha=32 and all-linear) and returns the full config. Throws if nothing matches.
 */
export function addAdapter(model: CausalLM, options: LoraOptions = {}): LoraConfig {
  const op = 'addAdapter';
  const config = checkLoraOptions(checkOptions<LoraOptions>(op, options));
  const seed = options.seed === undefined ? 0 : checkNumber(op, 'seed', options.seed, { integer: true, min: 0 });
  checkTargetsExist(model, config.targetModules, op);
  const modules = targetModules(model, config);
  if (modules.length === 0)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: target_modules ${show(config.targetModules)} match no linear module of this model (names look like ${[...model.linears.keys()][0]})`);
  modules.forEach((name, i) => {
    const lin = model.linears.get(name)!;
    const { r, scale } = moduleScale(config, name);
    const init = initialWeights(lin, r, scale, config.initLoraWeights, seed * 7919 + i * 2);
    lin.attach({ loraA: init.a, loraB: init.b, scale, dropout: config.loraDropout });
  });
  model.adapterConfig = config;
  return config;
}

function initialWeights(lin: Linear, r: number, scale: number, init: LoraConfig['initLoraWeights'], seed: number): { a: Tensor; b: Tensor } {
  const inF = lin.inFeatures, outF = lin.outFeatures;
  const device = lin.weight.device;
  // torch's nn.Linear default, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const kaiming = (shape: number[], fanIn: number, s: number) => rand(shape, { seed: s, low: -1 / Math.sqrt(fanIn), high: 1 / Math.sqrt(fanIn), device });
  switch (init) {
    case true:
      return { a: kaiming([r, inF], inF, seed), b: zeros([outF, r], { device }) };
    case 'gaussian':
      return { a: randn([r, inF], { seed, std: 1 / r, device }), b: zeros([outF, r], { device }) };
    case false:
      return { a: kaiming([r, inF], inF, seed), b: kaiming([outF, r], r, seed + 1) };
    case 'pissa':
      return pissa(lin, r, scale);
  }
}

/**
 * PiSSA (Meng et al. 2024): A and B from the top-r singular triplets of W, scaled so that s·B·A is
 * W's principal part, and the base keeps the residual W - s·B·A.
 */
function pissa(lin: Linear, r: number, scale: number): { a: Tensor; b: Tensor } {
  if (!(lin.weight instanceof Tensor)) throw new LorakitTypeError('ERR_INVALID_ARG', `addAdapter: PiSSA needs a float base weight; '${lin.name}' is NF4`);
  const { u, s, vt } = topSingular(lin.weight, r);
  const [m, n] = [lin.outFeatures, lin.inFeatures];
  const a = new Float32Array(r * n), b = new Float32Array(m * r);
  for (let k = 0; k < r; k++) {
    const root = Math.sqrt(s[k]! / scale);
    for (let j = 0; j < n; j++) a[k * n + j] = root * vt[k * n + j]!;
    for (let i = 0; i < m; i++) b[i * r + k] = root * u[i * r + k]!;
  }
  const A = tensor(a, [r, n], { device: lin.weight.device }), B = tensor(b, [m, r], { device: lin.weight.device });
  using delta = matmul(B, A, { alpha: -scale });
  using w = lin.weight.to('float32');
  addInPlace(w, delta);
  const residual = w.to(lin.weight.dtype);
  lin.weight.dispose();
  lin.weight = residual;
  return { a: A, b: B };
}

/**
 * Top-r singular triplets of W [m, n]: subspace iteration on WᵀW with 16 extra vectors (our GEMM,
 * float64 Gram-Schmidt), then Rayleigh-Ritz on the small k x k problem (float64 Jacobi). The extra
 * vectors make convergence depend on σ(r+17)/σ(r), not on the often tiny gap after σ(r).
 */
function topSingular(w: Tensor, r: number): { u: Float64Array; s: Float64Array; vt: Float64Array } {
  const [m, n] = w.shape as [number, number];
  const k = Math.min(r + 16, m, n);
  let v: Float64Array;
  {
    using start = randn([n, k], { seed: 12345 });
    v = orthonormalColumns(start.toFloat32Array(), n, k);
  }
  using wf = w.to('float32');
  for (let it = 0; it < 40; it++) {
    using V = tensor(Float32Array.from(v), [n, k], { device: w.device });
    using WV = matmul(wf, V); // [m, k]
    using WtWV = matmul(wf, WV, { transposeA: true }); // [n, k]
    v = orthonormalColumns(WtWV.toFloat32Array(), n, k);
  }
  using V = tensor(Float32Array.from(v), [n, k], { device: w.device });
  using WV = matmul(wf, V);
  const wv = Float64Array.from(WV.toFloat32Array());
  // Rayleigh-Ritz: (WV)ᵀ(WV) = E Λ Eᵀ gives the singular values (√λ) and the rotation E of V.
  const g = new Float64Array(k * k);
  for (let i = 0; i < m; i++) for (let a = 0; a < k; a++) for (let b = 0; b < k; b++) g[a * k + b] = g[a * k + b]! + wv[i * k + a]! * wv[i * k + b]!;
  const { values, vectors } = symmetricEigen(g, k);
  const order = [...values.keys()].sort((x, y) => values[y]! - values[x]!).slice(0, Math.min(r, k));
  const u = new Float64Array(m * r), s = new Float64Array(r), vt = new Float64Array(r * n);
  order.forEach((e, c) => {
    const sigma = Math.sqrt(Math.max(values[e]!, 0));
    s[c] = sigma;
    for (let i = 0; i < n; i++) {
      let x = 0;
      for (let j = 0; j < k; j++) x += v[i * k + j]! * vectors[j * k + e]!;
      vt[c * n + i] = x;
    }
    for (let i = 0; i < m; i++) {
      let x = 0;
      for (let j = 0; j < k; j++) x += wv[i * k + j]! * vectors[j * k + e]!;
      u[i * r + c] = sigma > 0 ? x / sigma : 0;
    }
  });
  return { u, s, vt };
}

/** Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations (float64); vectors in columns. */
function symmetricEigen(a0: Float64Array, n: number): { values: number[]; vectors: Float64Array } {
  const a = Float64Array.from(a0);
  const q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0, diag = 0;
    for (let p = 0; p < n; p++) {
      diag += a[p * n + p]! ** 2;
      for (let j = p + 1; j < n; j++) off += a[p * n + j]! ** 2;
    }
    if (off <= 1e-30 * diag) break;
    for (let p = 0; p < n; p++)
      for (let j = p + 1; j < n; j++) {
        const apq = a[p * n + j]!;
        if (apq === 0) continue;
        const theta = (a[j * n + j]! - a[p * n + p]!) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), sn = t * c;
        for (let i = 0; i < n; i++) {
          const aip = a[i * n + p]!, aiq = a[i * n + j]!;
          a[i * n + p] = c * aip - sn * aiq;
          a[i * n + j] = sn * aip + c * aiq;
        }
        for (let i = 0; i < n; i++) {
          const api = a[p * n + i]!, aqi = a[j * n + i]!;
          a[p * n + i] = c * api - sn * aqi;
          a[j * n + i] = sn * api + c * aqi;
        }
        for (let i = 0; i < n; i++) {
          const qip = q[i * n + p]!, qiq = q[i * n + j]!;
          q[i * n + p] = c * qip - sn * qiq;
          q[i * n + j] = sn * qip + c * qiq;
        }
      }
  }
  return { values: Array.from({ length: n }, (_, i) => a[i * n + i]!), vectors: q };
}

/** Modified Gram-Schmidt on the columns of a row-major [rows, cols] matrix, in float64. */
function orthonormalColumns(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const q = Float64Array.from(x);
  for (let j = 0; j < cols; j++) {
    for (let p = 0; p < j; p++) {
      let d = 0;
      for (let i = 0; i < rows; i++) d += q[i * cols + p]! * q[i * cols + j]!;
      for (let i = 0; i < rows; i++) q[i * cols + j] = q[i * cols + j]! - d * q[i * cols + p]!;
    }
    let nrm = 0;
    for (let i = 0; i < rows; i++) nrm += q[i * cols + j]! ** 2;
    nrm = Math.sqrt(nrm) || 1;
    for (let i = 0; i < rows; i++) q[i * cols + j] = q[i * cols + j]! / nrm;
  }
  return q;
}

/**
 * Writes the model's adapter as PEFT does: adapter_config.json and adapter_model.safetensors, each
 * written to a temporary name and renamed.
 */
export function saveAdapter(model: CausalLM, dir: string, options: { baseModelNameOrPath?: string } = {}): void {
  const op = 'saveAdapter';
  const config = model.adapterConfig;
  if (!config) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: the model has no adapter (use addAdapter or loadAdapter first)`);
  const tensors: Record<string, Tensor> = {};
  const modules: string[] = [];
  for (const [name, lin] of model.linears) {
    if (!lin.adapter) continue;
    if (lin.merged) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${name}' is merged into its base weight; unmerge before saving the adapter`);
    tensors[`base_model.model.${name}.lora_A.weight`] = lin.adapter.loraA;
    tensors[`base_model.model.${name}.lora_B.weight`] = lin.adapter.loraB;
    modules.push(name.split('.').pop()!);
  }
  makeDir(op, dir);
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  const targets = config.targetModules === 'all-linear' ? [...new Set(modules)].sort() : config.targetModules;
  writeJsonFile(op, path.join(dir, 'adapter_config.json'), {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: options.baseModelNameOrPath ?? null,
    r: config.r,
    lora_alpha: config.loraAlpha,
    lora_dropout: config.loraDropout,
    target_modules: targets,
    exclude_modules: config.excludeModules,
    use_rslora: config.useRslora,
    init_lora_weights: config.initLoraWeights,
    rank_pattern: config.rankPattern,
    alpha_pattern: config.alphaPattern,
    layers_to_transform: config.layersToTransform,
    bias: 'none',
    fan_in_fan_out: model.config.modelType === 'gpt2',
    modules_to_save: null,
    use_dora: false,
    inference_mode: true,
  });
}
