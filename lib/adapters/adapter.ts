/**
 * PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
 * (`base_model.model.<module>.lora_A.weight`, `...lora_B.weight`), attached to a model's Linear modules.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { checkNumber, checkOptions, isObject, show } from '../check';
import { readJsonFile, writeJsonFile } from '../io/config';
import { makeDir } from '../io/fs';
import { openSafetensors, writeSafetensors } from '../io/safetensors';
import { type CausalLM } from '../models/causal-lm';
import { type Linear, type LoraAdapterWeights } from '../models/linear';
import { Tensor, tensor, zeros } from '../tensor/tensor';
import { rand, randn } from '../tensor/random';
import { matmul } from '../ops/matmul';
import { svdLeft } from '../ops/linalg';
import { addInPlace } from '../ops/nn';
import { INIT_LORA_WEIGHTS, LORA_DEFAULTS, matches, matchesName, moduleScale, parseLoraConfig, matchTargets, type LoraConfig, type LoraOptions } from '../lora/config';

const KEY = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/;

/** Reads and validates adapter_config.json. */
export function readLoraConfig(file: string): LoraConfig {
  return parseLoraConfig(readJsonFile('adapter', file, 'ERR_INVALID_ARG'), file);
}

/**
 * Loads a PEFT adapter folder into the model's Linear modules (replacing any adapter they had).
 * Every tensor must name a module of this model with matching shapes.
 */
export function loadAdapter(model: CausalLM, dir: string): LoraConfig {
  const { config, modules } = readAdapter(model, dir);
  for (const [name, weights] of modules) model.linears.get(name)!.attach(weights);
  model.adapterConfig = config;
  return config;
}

/**
 * Reads and validates a PEFT adapter folder for `model` without attaching it: each adapted module's
 * A, B (float32, on the model's device; the caller owns them), scale and dropout. A generation engine
 * holds many of these beside one base model.
 */
export function readAdapter(model: CausalLM, dir: string): { config: LoraConfig; modules: Map<string, LoraAdapterWeights> } {
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
  const modules = new Map<string, LoraAdapterWeights>();
  try {
    for (const p of plan)
      modules.set(p.module, {
        loraA: onModel(src.load(p.A, { dtype: 'float32' })), loraB: onModel(src.load(p.B, { dtype: 'float32' })), scale: p.scale, dropout: config.loraDropout,
      });
  } catch (e) {
    for (const w of modules.values()) {
      w.loraA.dispose();
      w.loraB.dispose();
    }
    throw e;
  }
  return { config, modules };
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

/** The modules a config adapts in this model (all-linear: every linear; the output head is not one). */
export function targetModules(model: CausalLM, config: LoraConfig): string[] {
  return matchTargets(model.linears.keys(), config);
}

function checkLoraOptions(o: LoraOptions): LoraConfig {
  const op = 'addAdapter';
  const c: LoraConfig = { ...LORA_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([k, v]) => v !== undefined && k !== 'seed')) };
  checkNumber(op, 'r', c.r, { integer: true, min: 1 });
  checkNumber(op, 'loraAlpha', c.loraAlpha);
  checkNumber(op, 'loraDropout', c.loraDropout, { min: 0, max: 1, maxExclusive: true });
  if (!INIT_LORA_WEIGHTS.includes(c.initLoraWeights))
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
  const [m, n] = [lin.outFeatures, lin.inFeatures];
  // r may exceed the matrix's rank bound; the triplets beyond min(m, n) are zero.
  const k = Math.min(r, m, n);
  const { u, s } = svdLeft(lin.weight, k);
  // svdLeft gives U and Σ; each right vector is v_j = Wᵀ u_j / σ_j, taken in float64 from W itself.
  const w = Float64Array.from(lin.weight.toFloat32Array());
  const a = new Float32Array(r * n), b = new Float32Array(m * r);
  for (let j = 0; j < k; j++) {
    const sigma = s[j]!;
    if (!(sigma > 0)) continue;
    const root = Math.sqrt(sigma / scale);
    for (let i = 0; i < m; i++) b[i * r + j] = root * u[i * k + j]!;
    const v = new Float64Array(n);
    for (let i = 0; i < m; i++) {
      const ui = u[i * k + j]!;
      if (ui !== 0) for (let c = 0; c < n; c++) v[c] = v[c]! + w[i * n + c]! * ui;
    }
    for (let c = 0; c < n; c++) a[j * n + c] = (root * v[c]!) / sigma;
  }
  const A = tensor(a, [r, n], { device: lin.weight.device }), B = tensor(b, [m, r], { device: lin.weight.device });
  using delta = matmul(B, A, { alpha: -scale });
  using wf = lin.weight.to('float32');
  addInPlace(wf, delta);
  const residual = wf.to(lin.weight.dtype);
  lin.weight.dispose();
  lin.weight = residual;
  return { a: A, b: B };
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
