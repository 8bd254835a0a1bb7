/**
 * Combining PEFT LoRA adapters into one (PEFT's add_weighted_adapter). What the combination costs each
 * adapter is measured above, in lib/analysis/interference.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { openSafetensors } from '../io/safetensors';
import { type CausalLM } from '../models/causal-lm';
import { Tensor, tensor, zeros } from '../tensor/tensor';
import { checkNumber, checkOptions, show } from '../check';
import { matmul } from '../ops/matmul';
import { addInPlace } from '../ops/nn';
import { svdLeft } from '../ops/linalg';
import { LORA_DEFAULTS, moduleScale, type LoraConfig } from '../lora/config';
import { loadAdapter, readLoraConfig } from './adapter';

/**
 * - 'cat': exact. A = [A_1; A_2; ...] (ranks stacked), B = [c_1·B_1 | c_2·B_2 | ...] with c_i = w_i·s_i
 *   (weight times the adapter's scaling), so B·A = Σ c_i·B_i·A_i; rank Σ r_i.
 * - 'linear' (PEFT's): every adapter must have the same rank r at a module; A = Σ √c_i·A_i and
 *   B = Σ √c_i·B_i, rank r. B·A = Σ c_i·B_i·A_i + Σ_{i≠j} √(c_i·c_j)·B_i·A_j: the cross terms make it
 *   inexact whenever two adapters with non-zero weight share a module. Needs every c_i >= 0.
 * - 'svd': ΔW = Σ c_i·B_i·A_i formed densely and truncated to its top `rank` singular triplets:
 *   B = U·S, A = Vᵀ with V = ΔWᵀ·U·S⁻¹ (the best rank-`rank` approximation in Frobenius norm).
 * Every combined adapter has scale 1 (lora_alpha = r, no rsLoRA).
 */
export type CombineMethod = 'cat' | 'linear' | 'svd';

export interface WeightedAdapter {
  /** A PEFT adapter folder (adapter_config.json + adapter_model.safetensors). */
  dir: string;
  weight: number;
}

export interface CombineOptions {
  method: CombineMethod;
  /** 'svd' only: the rank kept (default the largest rank of the adapters), at most min(out, in) per module. */
  rank?: number;
}

export const METHODS: readonly CombineMethod[] = ['cat', 'linear', 'svd'];
const KEY = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/;

/** One adapter's contribution to one module: c·B·A with c = weight · scaling. */
interface Term {
  label: string;
  a: Tensor;
  b: Tensor;
  r: number;
  c: number;
}

/** Every adapter's terms per module, in the model's module order; disposing frees the tensors. */
interface Terms extends Disposable {
  modules: Map<string, Term[]>;
  configs: LoraConfig[];
  ranks: number[];
}

/** @internal */
export function checkAdapters(op: string, adapters: unknown): WeightedAdapter[] {
  if (!Array.isArray(adapters) || adapters.length === 0)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: adapters must be a non-empty array of { dir, weight }, got ${show(adapters)}`);
  return adapters.map((x: unknown, i) => {
    if (x === null || typeof x !== 'object') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: adapters[${i}] must be an object { dir, weight }, got ${show(x)}`);
    const a = x as Partial<WeightedAdapter>;
    if (typeof a.dir !== 'string' || a.dir === '') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: adapters[${i}].dir must be a non-empty string, got ${show(a.dir)}`);
    return { dir: a.dir, weight: checkNumber(op, `adapters[${i}].weight`, a.weight) };
  });
}

/**
 * Reads every adapter and checks it against the model before anything is attached, so that a bad
 * adapter leaves the model as it was.
 */
function readTerms(op: string, model: CausalLM, adapters: WeightedAdapter[]): Terms {
  const owned: Tensor[] = [];
  const perModule = new Map<string, Term[]>();
  const configs: LoraConfig[] = [];
  const ranks: number[] = [];
  try {
    adapters.forEach(({ dir, weight }, i) => {
      const label = `adapter ${i + 1} ('${dir}')`;
      if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
        throw new LorakitError('ERR_IO', `${op}: ${label}: no such folder (expected a PEFT adapter folder)`);
      const config = readLoraConfig(path.join(dir, 'adapter_config.json'));
      configs.push(config);
      const file = path.join(dir, 'adapter_model.safetensors');
      using src = openSafetensors(file);
      const pairs = new Map<string, { A?: string; B?: string }>();
      for (const key of src.keys()) {
        const m = KEY.exec(key);
        if (!m) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${label}: '${key}' is not a PEFT LoRA key`);
        const entry = pairs.get(m[1]!) ?? {};
        entry[m[2] as 'A' | 'B'] = key;
        pairs.set(m[1]!, entry);
      }
      if (pairs.size === 0) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${label} holds no LoRA weights`);
      for (const [module, { A, B }] of pairs) {
        if (!A || !B) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${label}: module '${module}' has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}`);
        const lin = model.linears.get(module);
        if (!lin)
          throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${label}: module '${module}' does not exist in this ${model.config.modelType} model: the adapter is for another architecture or size`);
        const { r, scale } = moduleScale(config, module);
        const want = (key: string, got: readonly number[], exp: number[]) => {
          if (got.length !== 2 || got[0] !== exp[0] || got[1] !== exp[1])
            throw new LorakitRangeError('ERR_SHAPE', `${op}: ${label}: module '${module}': '${key}' has shape [${got.join(', ')}], the model's module with r=${r} needs [${exp.join(', ')}]`);
        };
        want(A, src.info(A).shape, [r, lin.inFeatures]);
        want(B, src.info(B).shape, [lin.outFeatures, r]);
        ranks.push(r);
        const a = src.load(A, { dtype: 'float32' });
        owned.push(a);
        const b = src.load(B, { dtype: 'float32' });
        owned.push(b);
        const list = perModule.get(module) ?? [];
        list.push({ label, a, b, r, c: weight * scale });
        perModule.set(module, list);
      }
    });
  } catch (e) {
    for (const t of owned) t.dispose();
    throw e;
  }
  const modules = new Map<string, Term[]>();
  for (const name of model.linears.keys()) {
    const list = perModule.get(name);
    if (list) modules.set(name, list);
  }
  return { modules, configs, ranks, [Symbol.dispose]: () => owned.forEach((t) => t.dispose()) };
}

/** Σ c_i·B_i·A_i of one module, dense [out, in] float32 (the caller disposes it). */
function exactDelta(terms: Term[], out: number, inF: number): Tensor {
  const sum = zeros([out, inF]);
  for (const t of terms) {
    using d = matmul(t.b, t.a, { alpha: t.c });
    addInPlace(sum, d);
  }
  return sum;
}

function cat(terms: Term[], out: number, inF: number): { a: Float32Array; b: Float32Array; r: number } {
  const r = terms.reduce((s, t) => s + t.r, 0);
  const a = new Float32Array(r * inF), b = new Float32Array(out * r);
  let off = 0;
  for (const t of terms) {
    a.set(t.a.toFloat32Array(), off * inF);
    const bt = t.b.toFloat32Array();
    for (let o = 0; o < out; o++) for (let k = 0; k < t.r; k++) b[o * r + off + k] = t.c * bt[o * t.r + k]!;
    off += t.r;
  }
  return { a, b, r };
}

function linear(op: string, module: string, terms: Term[], out: number, inF: number): { a: Float32Array; b: Float32Array; r: number } {
  const r = terms[0]!.r;
  const odd = terms.find((t) => t.r !== r);
  if (odd)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'linear' needs equal ranks, but at module '${module}' ${terms[0]!.label} has r=${r} and ${odd.label} has r=${odd.r} (use 'cat' or 'svd')`);
  const a = new Float64Array(r * inF), b = new Float64Array(out * r);
  for (const t of terms) {
    const root = Math.sqrt(t.c);
    const at = t.a.toFloat32Array(), bt = t.b.toFloat32Array();
    for (let i = 0; i < a.length; i++) a[i] = a[i]! + root * at[i]!;
    for (let i = 0; i < b.length; i++) b[i] = b[i]! + root * bt[i]!;
  }
  return { a: Float32Array.from(a), b: Float32Array.from(b), r };
}

function svd(terms: Term[], out: number, inF: number, rank: number): { a: Float32Array; b: Float32Array; r: number } {
  const r = Math.min(rank, out, inF);
  using delta = exactDelta(terms, out, inF);
  const { u, s } = svdLeft(delta, r);
  const d = delta.toFloat32Array();
  const a = new Float32Array(r * inF), b = new Float32Array(out * r);
  // A zero singular value has an arbitrary u and contributes nothing: its row and column stay zero.
  const live = Array.from(s, (x) => x > 0);
  const v = new Float64Array(inF * r);
  for (let i = 0; i < out; i++)
    for (let j = 0; j < inF; j++) {
      const x = d[i * inF + j]!;
      if (x === 0) continue;
      for (let k = 0; k < r; k++) v[j * r + k] = v[j * r + k]! + x * u[i * r + k]!;
    }
  for (let k = 0; k < r; k++) {
    if (!live[k]) continue;
    for (let j = 0; j < inF; j++) a[k * inF + j] = v[j * r + k]! / s[k]!;
    for (let i = 0; i < out; i++) b[i * r + k] = u[i * r + k]! * s[k]!;
  }
  return { a, b, r };
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The config of the combined adapter: scale 1 everywhere (alpha = r); the most common rank is `r` and
 * the other modules get rank_pattern / alpha_pattern entries, so saveAdapter and loadAdapter round-trip it.
 */
function combinedConfig(ranks: Map<string, number>, dropout: number): LoraConfig {
  const counts = new Map<number, number>();
  for (const r of ranks.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
  let r = 0, best = 0;
  for (const [rank, n] of counts) if (n > best || (n === best && rank > r)) [r, best] = [rank, n];
  const rankPattern: Record<string, number> = {}, alphaPattern: Record<string, number> = {};
  for (const [module, rank] of ranks)
    if (rank !== r) rankPattern[escapeRegex(module)] = alphaPattern[escapeRegex(module)] = rank;
  return {
    ...LORA_DEFAULTS,
    r,
    loraAlpha: r,
    loraDropout: dropout,
    targetModules: [...ranks.keys()],
    useRslora: false,
    rankPattern,
    alphaPattern,
  };
}

/** Detaching a merged adapter would leave its update in the base weight, under the combination. */
/** @internal */
export function checkUnmerged(op: string, model: CausalLM): void {
  for (const l of model.linears.values())
    if (l.merged) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${l.name}' has an adapter merged into its base weight; unmerge it first`);
}

/** @internal */
export function clearAdapters(model: CausalLM): void {
  for (const l of model.linears.values()) l.detach();
  model.adapterConfig = undefined;
}

/**
 * Combines PEFT adapters, each scaled by its weight, into one adapter attached to the model in place of
 * any it had (see CombineMethod for the definitions). A module adapted by only some adapters takes the
 * terms it has. Returns the combined adapter's config (saveAdapter writes it as PEFT would).
 */
export function combineAdapters(model: CausalLM, adapters: WeightedAdapter[], options: CombineOptions): LoraConfig {
  const op = 'combineAdapters';
  const list = checkAdapters(op, adapters);
  const o = checkOptions<CombineOptions>(op, options);
  if (!METHODS.includes(o.method as CombineMethod))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'method' must be one of ${METHODS.map((m) => `'${m}'`).join(', ')}, got ${show(o.method)}`);
  const method = o.method as CombineMethod;
  if (o.rank !== undefined && method !== 'svd') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'rank' applies to 'svd' only, not '${method}'`);
  const rankOpt = o.rank === undefined ? undefined : checkNumber(op, 'rank', o.rank, { integer: true, min: 1 });
  checkUnmerged(op, model);
  using terms = readTerms(op, model, list);
  if (method === 'linear')
    for (const [module, ts] of terms.modules)
      for (const t of ts)
        if (t.c < 0)
          throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'linear' scales A and B by √(weight·scaling), which ${t.label} has negative (${t.c}) at module '${module}' (use 'cat' or 'svd')`);
  const rank = rankOpt ?? Math.max(...terms.ranks);
  const built = new Map<string, { a: Float32Array; b: Float32Array; r: number }>();
  for (const [module, ts] of terms.modules) {
    const lin = model.linears.get(module)!;
    const [out, inF] = [lin.outFeatures, lin.inFeatures];
    built.set(module, method === 'cat' ? cat(ts, out, inF) : method === 'linear' ? linear(op, module, ts, out, inF) : svd(ts, out, inF, rank));
  }
  const config = combinedConfig(new Map([...built].map(([m, x]) => [m, x.r])), terms.configs[0]!.loraDropout);
  clearAdapters(model);
  for (const [module, x] of built) {
    const lin = model.linears.get(module)!;
    lin.attach({ loraA: tensor(x.a, [x.r, lin.inFeatures]), loraB: tensor(x.b, [lin.outFeatures, x.r]), scale: 1, dropout: config.loraDropout });
  }
  model.adapterConfig = config;
  return config;
}

export interface DeltaError {
  /** ‖Σ c_i·B_i·A_i - s·B·A‖ / ‖Σ c_i·B_i·A_i‖, Frobenius norms summed over every module. */
  relative: number;
  /** The same ratio per module. */
  modules: Record<string, number>;
}

/**
 * How far the adapter attached to the model is from the exact weighted sum of the adapters' updates
 * (float32 products): 0 for 'cat', the singular-value tail for 'svd', the cross terms for 'linear'.
 */
export function deltaError(model: CausalLM, adapters: WeightedAdapter[]): DeltaError {
  const op = 'deltaError';
  using terms = readTerms(op, model, checkAdapters(op, adapters));
  let num = 0, den = 0;
  const modules: Record<string, number> = {};
  for (const [name, lin] of model.linears) {
    const ts = terms.modules.get(name);
    if (!ts && !lin.adapter) continue;
    const [out, inF] = [lin.outFeatures, lin.inFeatures];
    using exact = exactDelta(ts ?? [], out, inF);
    using got = lin.adapter ? matmul(lin.adapter.loraB, lin.adapter.loraA, { alpha: lin.adapter.scale }) : zeros([out, inF]);
    const e = exact.toFloat32Array(), g = got.toFloat32Array();
    let n = 0, d = 0;
    for (let i = 0; i < e.length; i++) {
      n += (e[i]! - g[i]!) ** 2;
      d += e[i]! ** 2;
    }
    modules[name] = Math.sqrt(n / (d || 1));
    num += n;
    den += d;
  }
  return { relative: Math.sqrt(num / (den || 1)), modules };
}
