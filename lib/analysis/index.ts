/**
 * Spectral analysis of fine-tuned weights: singular vectors, intruder dimensions (Shuttleworth et al.,
 * "LoRA vs Full Fine-tuning: An Illusion of Equivalence") and the spectrum of weight updates.
 * Matrices are taken as a module holds them, [out, in], so left singular vectors live in the output space.
 */
import { svdLeft, type LeftSVD } from '../ops/linalg';

// The analysis namespace has offered svdLeft since before it moved down to ops.
export { svdLeft, type LeftSVD };
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { checkTensor, FLOATS, Tensor } from '../tensor/tensor';
import { checkNumber, checkOptions, shapeStr } from '../check';
import { matmul } from '../ops/matmul';
import { addInPlace } from '../ops/nn';
import { NF4Tensor, dequantize } from '../nf4';
import { type CausalLM } from '../models/causal-lm';

export interface IntruderOptions {
  /** How many of W's top singular vectors are examined (default 10). */
  k?: number;
  /** A vector whose largest |cosine| with W0's singular vectors is below this is an intruder (default 0.5). */
  epsilon?: number;
}

export interface IntruderResult {
  count: number;
  /** Per top-k left singular vector of W: its largest |cosine| with any left singular vector of W0. */
  similarities: number[];
}

/** max over W0's vectors of |cos| for each of W's top-k vectors: s_j = max_i |U0[:, i] · U[:, j]|. */
function similarities(u0: LeftSVD, u: LeftSVD, m: number): number[] {
  const k0 = u0.s.length, k = u.s.length;
  const best = new Array<number>(k).fill(0);
  const dots = new Float64Array(k0);
  for (let j = 0; j < k; j++) {
    dots.fill(0);
    for (let r = 0; r < m; r++) {
      const x = u.u[r * k + j]!;
      const row = r * k0;
      for (let i = 0; i < k0; i++) dots[i] = dots[i]! + x * u0.u[row + i]!;
    }
    for (let i = 0; i < k0; i++) best[j] = Math.max(best[j]!, Math.abs(dots[i]!));
  }
  return best;
}

function intruderOptions(op: string, options: unknown): { k: number; epsilon: number } {
  const o = checkOptions<IntruderOptions>(op, options);
  return {
    k: o.k === undefined ? 10 : checkNumber(op, 'k', o.k, { integer: true, min: 1 }),
    epsilon: o.epsilon === undefined ? 0.5 : checkNumber(op, 'epsilon', o.epsilon, { min: 0, max: 1 }),
  };
}

function intrudersChecked(op: string, w0: Tensor, w: Tensor, k: number, epsilon: number): IntruderResult {
  checkTensor(op, 'w0', w0, { dtypes: FLOATS, ndim: 2 });
  checkTensor(op, 'w', w, { dtypes: FLOATS, shape: w0.shape });
  const [m, n] = [w0.shape[0]!, w0.shape[1]!];
  if (k > Math.min(m, n)) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'k' must be <= min(m, n) = ${Math.min(m, n)} for shape ${shapeStr(w0.shape)}, got ${k}`);
  const sims = similarities(svdLeft(w0), svdLeft(w, k), m);
  return { count: sims.filter((x) => x < epsilon).length, similarities: sims };
}

/**
 * Intruder dimensions of a fine-tuned W relative to its base W0 (same shape [m, n]): the top-k left
 * singular vectors of W whose largest |cosine| with every left singular vector of W0 (all min(m, n) of
 * them) is below epsilon.
 */
export function intruderDimensions(w0: Tensor, w: Tensor, options?: IntruderOptions): IntruderResult {
  const op = 'analysis.intruderDimensions';
  const { k, epsilon } = intruderOptions(op, options);
  return intrudersChecked(op, w0, w, k, epsilon);
}

export interface Spectrum {
  /** All min(m, n) singular values, descending. */
  singularValues: number[];
  /** exp of the Shannon entropy of σ / Σσ (Roy & Vetterli, 2007): 1 for rank one, min(m, n) for a flat spectrum. */
  effectiveRank: number;
  /** Σ of the top r squared singular values over the total (the update's energy in rank r). */
  topREnergy: number;
}

function spectrumOf(s: Float64Array, r: number): Spectrum {
  let sum = 0, energy = 0, top = 0;
  s.forEach((x, i) => {
    sum += x;
    energy += x * x;
    if (i < r) top += x * x;
  });
  let entropy = 0;
  for (const x of s) {
    const p = x / sum;
    if (p > 0) entropy -= p * Math.log(p);
  }
  return { singularValues: Array.from(s), effectiveRank: sum > 0 ? Math.exp(entropy) : 0, topREnergy: energy > 0 ? top / energy : 0 };
}

/**
 * The singular value spectrum of an update ΔW (for example W - W0). r (default 8, a common LoRA rank;
 * at most min(m, n)) is the rank topREnergy measures. A zero update has effective rank 0 and energy 0.
 */
export function updateSpectrum(delta: Tensor, r?: number): Spectrum {
  const op = 'analysis.updateSpectrum';
  checkTensor(op, 'delta', delta, { dtypes: FLOATS, ndim: 2 });
  const full = Math.min(delta.shape[0]!, delta.shape[1]!);
  const rr = r === undefined ? Math.min(8, full) : checkNumber(op, 'r', r, { integer: true, min: 1 });
  return spectrumOf(svdLeft(delta).s, rr);
}

export interface AnalyzeOptions extends IntruderOptions {
  /** Also count intruders at each of these thresholds (the sweep of the paper's figures). */
  epsilons?: number[];
}

export interface ModelAnalysis {
  intruders: {
    total: number;
    /** By the weight's checkpoint name, `<module>.weight`. */
    byMatrix: Record<string, number>;
    /** By layer index ('other' for modules outside the layer stack). */
    byLayer: Record<string, number>;
    sweep?: { epsilon: number; total: number }[];
  };
  /** The adapter update s·B·A of each matrix, with r its LoRA rank; keyed like byMatrix. */
  spectra: Record<string, Spectrum>;
}

/** The layer index in a module path ('other' for modules outside the layer stack). */
export function layerKey(module: string): string {
  const m = /\.(?:layers|h)\.(\d+)\./.exec(module);
  return m ? m[1]! : 'other';
}

/** The base weight as float32 (a fresh tensor the caller disposes). */
function baseWeight(w: Tensor | NF4Tensor): Tensor {
  if (w instanceof NF4Tensor) return dequantize(w, { dtype: 'float32' });
  return w.dtype === 'float32' ? w.clone() : w.to('float32');
}

/**
 * Intruder dimensions and update spectra of every adapted matrix of a model: W0 is the base weight
 * (dequantized when NF4) and W = W0 + s·B·A (W0 = W - s·B·A when the adapter is merged). k is capped
 * per matrix at min(m, n).
 */
export function analyzeModel(model: CausalLM, options?: AnalyzeOptions): ModelAnalysis {
  const op = 'analysis.analyzeModel';
  const { k, epsilon } = intruderOptions(op, options);
  const epsilons = checkOptions<AnalyzeOptions>(op, options).epsilons;
  if (epsilons !== undefined && !Array.isArray(epsilons))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'epsilons' must be an array of numbers`);
  epsilons?.forEach((e, i) => checkNumber(op, `epsilons[${i}]`, e, { min: 0, max: 1 }));
  const adapted = [...model.linears.values()].filter((l) => l.adapter);
  if (adapted.length === 0) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: the model has no adapter attached`);
  const result: ModelAnalysis = { intruders: { total: 0, byMatrix: {}, byLayer: {} }, spectra: {} };
  const sweep = epsilons?.map((e) => ({ epsilon: e, total: 0 }));
  for (const lin of adapted) {
    const { loraA, loraB, scale } = lin.adapter!;
    const name = `${lin.name}.weight`;
    using delta = matmul(loraB, loraA, { alpha: scale, outDtype: 'float32' });
    using held = baseWeight(lin.weight);
    using other = held.clone();
    addInPlace(other, delta, lin.merged ? -1 : 1);
    const [w0, w] = lin.merged ? [other, held] : [held, other];
    const kk = Math.min(k, ...w0.shape);
    const { count, similarities: sims } = intrudersChecked(op, w0, w, kk, epsilon);
    result.intruders.total += count;
    result.intruders.byMatrix[name] = count;
    const layer = layerKey(lin.name);
    result.intruders.byLayer[layer] = (result.intruders.byLayer[layer] ?? 0) + count;
    sweep?.forEach((entry) => (entry.total += sims.filter((x) => x < entry.epsilon).length));
    result.spectra[name] = updateSpectrum(delta, Math.min(loraA.shape[0]!, ...delta.shape));
  }
  if (sweep) result.intruders.sweep = sweep;
  return result;
}
