/**
 * What fine-tuning did to a model, measured against its base: intruder dimensions and update spectra
 * (for a LoRA adapter or a fully fine-tuned checkpoint), forgetting on retained text, what NF4
 * quantization of the base costs, and how faithfully an adapter merges into float32, bfloat16 and NF4
 * bases. `lorakit analyze` prints this analysis (the HTML report of `lorakit report` is lib/report/).
 */
import * as path from 'node:path';
import { LorakitError, LorakitTypeError } from '../errors';
import { jsonlRecords } from '../data/jsonl';
import { type Example } from '../data/example';
import { readModelConfig } from '../io/config';
import { loadExamples } from '../data/load';
import { loadAdapter } from '../adapters/adapter';
import { loadModel, type CausalLM } from '../models';
import { NF4Tensor, dequantize, quantize } from '../nf4';
import { loadTokenizer } from '../tokenizer';
import { evaluate } from '../train/evaluate';
import { Tensor, tensor } from '../tensor/tensor';
import { analyzeModel, intruderDimensions, layerKey, updateSpectrum, type ModelAnalysis } from '.';

/** The thresholds of the ε sweep, as in the figures of Shuttleworth et al. */
export const EPSILON_SWEEP: readonly number[] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/** NF4 block size the quantization tax is measured at (QLoRA's). */
export const TAX_BLOCK_SIZE = 64;

export interface AnalyzeRunOptions {
  /** The base model folder. */
  base: string;
  /** A PEFT adapter folder for the base (exactly one of adapter and tuned). */
  adapter?: string;
  /** A fine-tuned checkpoint folder of the base's architecture (exactly one of adapter and tuned). */
  tuned?: string;
  /** Examples (.jsonl or .txt) for the NF4 loss and KL, and whose first example probes the merge error. */
  data?: string;
  /** Examples (.jsonl or .txt) the forgetting is measured on. */
  retain?: string;
  /** Top singular vectors examined per matrix (default 10, capped at min(m, n)). */
  k?: number;
  /** Intruder threshold (default 0.5). */
  epsilon?: number;
  /** The rank whose energy share a full checkpoint's update spectra report (default 16); an adapter's is its LoRA rank. */
  rank?: number;
  /** Told when a data or retain example is longer than the model's context and is read in pieces. */
  onWarning?: (message: string) => void;
}

/** Intruder totals at each threshold of a sweep. */
export type Sweep = { epsilon: number; total: number }[];

/** analyzeModel's result, with the sweep always present. */
export type WeightAnalysis = ModelAnalysis & { intruders: { sweep: Sweep } };

export interface LossShift {
  /** The file the losses were measured on. */
  file: string;
  examples: number;
  tokens: number;
}

export interface Forgetting extends LossShift {
  baseLoss: number;
  tunedLoss: number;
  /** tunedLoss − baseLoss: positive when fine-tuning made the retained text less likely. */
  rise: number;
}

export interface QuantizationError {
  /** ‖W − deq(q(W))‖_F / ‖W‖_F, one float32 absmax per block. */
  relative: number;
  /** The same with the absmax double-quantized (8-bit codes). */
  relativeDoubleQuant: number;
}

export interface QuantizationTax {
  blockSize: number;
  /** Per base linear weight, by checkpoint name. */
  byMatrix: Record<string, QuantizationError>;
  /** Over all of them together: √(Σ‖W − deq(q(W))‖² / Σ‖W‖²). */
  total: QuantizationError;
  /** With data: the float base against the base loaded as NF4 (block 64, double quant). */
  data?: LossShift & {
    floatLoss: number;
    nf4Loss: number;
    /** nf4Loss − floatLoss. */
    rise: number;
    /** Mean over every position of KL(float ‖ NF4) of the next-token distributions, in nats. */
    klMean: number;
    /** Positions the KL is averaged over (every position of every example, labels or not). */
    positions: number;
  };
}

export interface MergeFidelity {
  /** What the logits were compared on. */
  probe: string;
  float32: { maxAbs: number; relative: number };
  bfloat16: { maxAbs: number; relative: number };
  nf4: { maxAbs: number; relative: number };
}

export interface AnalyzeReport {
  base: string;
  /** What was compared with the base: the adapter or tuned folder. */
  tuned: { kind: 'adapter' | 'checkpoint'; dir: string };
  k: number;
  epsilon: number;
  intruders: WeightAnalysis['intruders'];
  spectra: ModelAnalysis['spectra'];
  forgetting?: Forgetting;
  quantization: QuantizationTax;
  /** Only for an adapter: a full checkpoint has nothing to merge. */
  merge?: MergeFidelity;
}

/** Examples of a file, tokenized with the model folder's tokenizer unless every line is input_ids. */
export function readExamples(file: string, modelDir: string, onWarning?: (message: string) => void): Example[] {
  const idsOnly = path.extname(file).toLowerCase() === '.jsonl' && [...jsonlRecords(file)].every((r) => r.record.kind === 'ids');
  const examples = loadExamples(file, idsOnly ? null : loadTokenizer(modelDir), {
    maxLength: readModelConfig(modelDir).maxPositions,
    onWarning,
  });
  if (examples.length === 0) throw new LorakitError('ERR_INVALID_ARG', `${file}: the file holds no examples`);
  return examples;
}

/** log-softmax of one row of logits, in float64. */
function logSoftmax(logits: Float32Array, offset: number, vocab: number, out: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) max = Math.max(max, logits[offset + i]!);
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[offset + i]! - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < vocab; i++) out[i] = logits[offset + i]! - lse;
}

/**
 * The mean over every position of every example of KL(P_reference ‖ P_model), the divergence of the
 * model's next-token distribution from the reference's, in nats (float64 from float32 logits).
 */
export function meanTokenKL(reference: CausalLM, model: CausalLM, examples: readonly Example[]): { klMean: number; positions: number } {
  const vocab = reference.config.vocabSize;
  if (model.config.vocabSize !== vocab)
    throw new LorakitTypeError('ERR_INVALID_ARG', `analysis.meanTokenKL: vocabularies differ (${vocab} and ${model.config.vocabSize})`);
  const p = new Float64Array(vocab), q = new Float64Array(vocab);
  let sum = 0, positions = 0;
  for (const ex of examples) {
    using ids = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, ex.inputIds.length]);
    using a = reference.forward(ids, { returnLogits: true }).logits!;
    using b = model.forward(ids, { returnLogits: true }).logits!;
    const la = a.toFloat32Array(), lb = b.toFloat32Array();
    for (let t = 0; t < ex.inputIds.length; t++) {
      logSoftmax(la, t * vocab, vocab, p);
      logSoftmax(lb, t * vocab, vocab, q);
      let kl = 0;
      for (let i = 0; i < vocab; i++) kl += Math.exp(p[i]!) * (p[i]! - q[i]!);
      sum += kl;
      positions++;
    }
  }
  return { klMean: positions > 0 ? sum / positions : NaN, positions };
}

function squaredNorm(x: Float32Array): number {
  let s = 0;
  for (const v of x) s += v * v;
  return s;
}

function squaredDistance(x: Float32Array, y: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i]! - y[i]!) ** 2;
  return s;
}

/** A linear weight as float32 values (a checkpoint bitsandbytes saved in NF4 loads as NF4: it is compared dequantized). */
function weightValues(w: Tensor | NF4Tensor): Float32Array {
  if (w instanceof NF4Tensor) {
    using d = dequantize(w, { dtype: 'float32' });
    return d.toFloat32Array();
  }
  return w.toFloat32Array();
}

/** ‖W − deq(q(W))‖² for one weight at TAX_BLOCK_SIZE, without and with double quantization. */
function roundTripError(w: Tensor, values: Float32Array, doubleQuant: boolean): number {
  using q = quantize(w, { blockSize: TAX_BLOCK_SIZE, doubleQuant });
  using back = dequantize(q, { dtype: 'float32' });
  return squaredDistance(values, back.toFloat32Array());
}

/** The NF4 round-trip error of every linear weight of a float model. */
export function quantizationErrors(model: CausalLM): Pick<QuantizationTax, 'blockSize' | 'byMatrix' | 'total'> {
  const byMatrix: Record<string, QuantizationError> = {};
  let norm = 0, single = 0, double = 0;
  for (const lin of model.linears.values()) {
    if (lin.weight instanceof NF4Tensor)
      throw new LorakitTypeError('ERR_INVALID_ARG', `analysis.quantizationErrors: ${lin.name} is already NF4; load the base in float`);
    const values = lin.weight.toFloat32Array();
    const n = squaredNorm(values);
    const e1 = roundTripError(lin.weight, values, false), e2 = roundTripError(lin.weight, values, true);
    norm += n;
    single += e1;
    double += e2;
    byMatrix[`${lin.name}.weight`] = { relative: Math.sqrt(e1 / (n || 1)), relativeDoubleQuant: Math.sqrt(e2 / (n || 1)) };
  }
  return { blockSize: TAX_BLOCK_SIZE, byMatrix, total: { relative: Math.sqrt(single / (norm || 1)), relativeDoubleQuant: Math.sqrt(double / (norm || 1)) } };
}

/**
 * Intruders and update spectra of a fully fine-tuned model against its base, over the linears whose
 * weight changed at all: W0 from the base, W from the tuned model, ΔW = W − W0 with rank r for
 * topREnergy.
 */
export function analyzeCheckpoint(base: CausalLM, tuned: CausalLM, options: { k: number; epsilon: number; rank: number; epsilons: readonly number[] }): WeightAnalysis {
  const sweep = options.epsilons.map((e) => ({ epsilon: e, total: 0 }));
  const result: WeightAnalysis = { intruders: { total: 0, byMatrix: {}, byLayer: {}, sweep }, spectra: {} };
  for (const [name, lin0] of base.linears) {
    const lin = tuned.linears.get(name);
    if (!lin) throw new LorakitError('ERR_INVALID_ARG', `analysis: the tuned model has no module '${name}' (is it a fine-tune of this base?)`);
    const v0 = weightValues(lin0.weight), v = weightValues(lin.weight);
    if (v0.length !== v.length || lin0.outFeatures !== lin.outFeatures)
      throw new LorakitError('ERR_SHAPE', `analysis: '${name}.weight' is [${lin.weight.shape.join(', ')}] in the tuned model but [${lin0.weight.shape.join(', ')}] in the base`);
    const delta = v.map((x, i) => x - v0[i]!);
    if (delta.every((x) => x === 0)) continue;
    const shape = [lin0.outFeatures, lin0.inFeatures];
    using w0 = tensor(v0, shape);
    using w = tensor(v, shape);
    using d = tensor(delta, shape);
    const { count, similarities } = intruderDimensions(w0, w, { k: Math.min(options.k, ...shape), epsilon: options.epsilon });
    const key = `${name}.weight`;
    result.intruders.total += count;
    result.intruders.byMatrix[key] = count;
    const layer = layerKey(name);
    result.intruders.byLayer[layer] = (result.intruders.byLayer[layer] ?? 0) + count;
    for (const entry of sweep) entry.total += similarities.filter((x) => x < entry.epsilon).length;
    result.spectra[key] = updateSpectrum(d, Math.min(options.rank, ...shape));
  }
  if (Object.keys(result.intruders.byMatrix).length === 0) throw new LorakitError('ERR_INVALID_ARG', 'analysis: the tuned model has the same linear weights as the base');
  return result;
}

/** A fixed, seeded batch of 2 rows (a linear congruential generator, so every run probes the same ids). */
function seededBatch(model: CausalLM): { ids: Tensor; description: string } {
  const seq = Math.min(64, model.config.maxPositions);
  let s = 12345;
  const ids = BigInt64Array.from({ length: 2 * seq }, () => BigInt((s = (s * 1103515245 + 12345) % 2147483648) % model.config.vocabSize));
  return { ids: tensor(ids, [2, seq]), description: `a fixed random batch of 2 x ${seq} tokens` };
}

/** Merged against unmerged logits with the base loaded three ways, on the probe or a seeded batch. */
function mergeFidelity(base: string, adapter: string, probe?: { example: Example; description: string }): MergeFidelity {
  const once = (load: () => CausalLM) => {
    using model = load();
    loadAdapter(model, adapter);
    const p = probe
      ? { ids: tensor(BigInt64Array.from(probe.example.inputIds, BigInt), [1, probe.example.inputIds.length]), description: probe.description }
      : seededBatch(model);
    using ids = p.ids;
    return { error: model.mergeError(ids), description: p.description };
  };
  const f32 = once(() => loadModel(base));
  return {
    probe: f32.description,
    float32: f32.error,
    bfloat16: once(() => loadModel(base, { dtype: 'bfloat16' })).error,
    nf4: once(() => loadModel(base, { quantize: true })).error,
  };
}

function lossShift(file: string, examples: readonly Example[], a: CausalLM, b: CausalLM): LossShift & { lossA: number; lossB: number } {
  const ra = evaluate(a, examples), rb = evaluate(b, examples);
  return { file, examples: examples.length, tokens: ra.tokens, lossA: ra.loss, lossB: rb.loss };
}

/** Every measurement `lorakit analyze` reports (see AnalyzeReport); models are loaded in float32 unless stated. */
export function analyzeRun(options: AnalyzeRunOptions): AnalyzeReport {
  const { base, adapter, tuned: tunedDir } = options;
  if ((adapter === undefined) === (tunedDir === undefined))
    throw new LorakitError('ERR_INVALID_ARG', "analyzeRun: give exactly one of 'adapter' and 'tuned'");
  const k = options.k ?? 10, epsilon = options.epsilon ?? 0.5;
  using baseModel = loadModel(base);
  // An adapter goes on a second copy of the base, unmerged, so that baseModel stays the reference.
  using tuned = loadModel(tunedDir ?? base);
  let analysis: WeightAnalysis;
  if (adapter !== undefined) {
    loadAdapter(tuned, adapter);
    const r = analyzeModel(tuned, { k, epsilon, epsilons: [...EPSILON_SWEEP] });
    analysis = { ...r, intruders: { ...r.intruders, sweep: r.intruders.sweep ?? [] } };
  } else {
    analysis = analyzeCheckpoint(baseModel, tuned, { k, epsilon, rank: options.rank ?? 16, epsilons: EPSILON_SWEEP });
  }
  const report: AnalyzeReport = {
    base,
    tuned: adapter !== undefined ? { kind: 'adapter', dir: adapter } : { kind: 'checkpoint', dir: tunedDir! },
    k,
    epsilon,
    intruders: analysis.intruders,
    spectra: analysis.spectra,
    quantization: quantizationErrors(baseModel),
  };
  if (options.retain !== undefined) {
    const s = lossShift(options.retain, readExamples(options.retain, base, options.onWarning), baseModel, tuned);
    report.forgetting = { file: s.file, examples: s.examples, tokens: s.tokens, baseLoss: s.lossA, tunedLoss: s.lossB, rise: s.lossB - s.lossA };
  }
  if (options.data !== undefined) {
    const examples = readExamples(options.data, base, options.onWarning);
    using nf4 = loadModel(base, { quantize: true });
    const s = lossShift(options.data, examples, baseModel, nf4);
    report.quantization.data = { file: s.file, examples: s.examples, tokens: s.tokens, floatLoss: s.lossA, nf4Loss: s.lossB, rise: s.lossB - s.lossA, ...meanTokenKL(baseModel, nf4, examples) };
    if (adapter !== undefined)
      report.merge = mergeFidelity(base, adapter, { example: examples[0]!, description: `the first example of ${path.basename(options.data)} (${examples[0]!.inputIds.length} tokens)` });
  } else if (adapter !== undefined) {
    report.merge = mergeFidelity(base, adapter);
  }
  return report;
}

/**
 * Total intruder dimensions (k = 10, ε = 0.5) of a trained run against its base model folder: the
 * adapter in `weightsDir` over the base (NF4 for QLoRA), or the full checkpoint in `weightsDir`.
 */
export function runIntruders(baseDir: string, method: 'lora' | 'qlora' | 'full', weightsDir: string): number {
  if (method === 'full') {
    using tuned = loadModel(weightsDir);
    using reference = loadModel(baseDir);
    return analyzeCheckpoint(reference, tuned, { k: 10, epsilon: 0.5, rank: 16, epsilons: [] }).intruders.total;
  }
  using tuned = loadModel(baseDir, { quantize: method === 'qlora' });
  loadAdapter(tuned, weightsDir);
  return analyzeModel(tuned, { k: 10, epsilon: 0.5 }).intruders.total;
}
