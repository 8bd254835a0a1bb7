/**
 * Hugging Face config.json, as transformers 4.x and 5.x write it, normalized into one typed object for the
 * decoder-only families lorakit builds. Also the JSON and file-error helpers lib/io shares.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError, type ErrorCode } from '../errors';
import { type DType } from '../tensor/dtype';
import { describe, isObject, show } from '../check';

export type ModelType = 'gpt2' | 'llama' | 'mistral' | 'qwen2';

export const MODEL_TYPES: readonly ModelType[] = ['gpt2', 'llama', 'mistral', 'qwen2'];

export interface ModelConfig {
  readonly modelType: ModelType;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  /** Key/value heads; fewer than numHeads means grouped-query attention. */
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Width of the MLP's hidden layer. */
  readonly intermediateSize: number;
  readonly maxPositions: number;
  /** Epsilon of LayerNorm (GPT-2) or RMSNorm (llama family). */
  readonly normEps: number;
  /** RoPE base; null for GPT-2, which learns its position embeddings. */
  readonly ropeTheta: number | null;
  /** lm_head shares the token embedding's weight (and checkpoints then usually omit it). */
  readonly tieWordEmbeddings: boolean;
  /** The dtype the weights were saved in; null when the config does not say. */
  readonly dtype: DType | null;
  /** Bias on the query, key and value projections. */
  readonly attentionBias: boolean;
  /** Bias on the attention output projection: Qwen2 has q/k/v biases but none here. */
  readonly attentionOutBias: boolean;
  readonly mlpBias: boolean;
  /** transformers' activation name: 'gelu_new' for GPT-2, 'silu' for the llama family. */
  readonly hiddenAct: string;
  /** How many positions back each token attends (Mistral); null for full causal attention. */
  readonly slidingWindow: number | null;
  readonly bosTokenId: number | null;
  /** Every token id that ends generation: configs give one id or a list. */
  readonly eosTokenId: readonly number[];
}

// The same limit as for a safetensors header: JSON beside a checkpoint is never near it, and a file that is
// would be read whole into memory.
const MAX_JSON_BYTES = 100_000_000;

const SAVED_DTYPES: readonly DType[] = ['float32', 'bfloat16', 'float16'];

// transformers' defaults where a config leaves max_position_embeddings out.
const DEFAULT_MAX_POSITIONS: Readonly<Record<Exclude<ModelType, 'gpt2'>, number>> = {
  llama: 2048,
  mistral: 4096 * 32,
  qwen2: 32768,
};

/**
 * @internal Turns Node's file-system errors into LorakitError('ERR_IO') naming the op and the file; anything
 * else passes through. Checked structurally: Node's errors come from another realm inside jest's vm.
 */
export function ioError(op: string, verb: string, file: string, e: unknown): unknown {
  if (!isObject(e) || typeof e.syscall !== 'string' || typeof e.code !== 'string' || typeof e.message !== 'string') return e;
  const reason = /^[A-Z0-9_]+: ([^,]+)/.exec(e.message)?.[1] ?? e.message;
  return new LorakitError('ERR_IO', `${op}: cannot ${verb} '${file}': ${reason} (${e.code})`);
}

/** @internal Parses a JSON file; a missing file is ERR_IO, bad JSON is `code`. */
export function readJsonFile(op: string, file: string, code: ErrorCode): unknown {
  let text: string;
  try {
    const size = fs.statSync(file).size;
    if (size > MAX_JSON_BYTES)
      throw new LorakitRangeError(code, `${op}: '${file}' is ${size} bytes; a JSON file of over ${MAX_JSON_BYTES} bytes is refused`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw ioError(op, 'read', file, e);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new LorakitError(code, `${op}: '${file}' is not valid JSON: ${(e as Error).message}`);
  }
}

/** @internal Writes JSON to a temporary name, syncs it and renames it over `file`: never a half file. */
export function writeJsonFile(op: string, file: string, value: unknown): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, `${JSON.stringify(value, null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError(op, 'write', file, e);
  }
}

/** Typed reads of one JSON object's fields; every error names the file and the field's full path. */
class Fields {
  constructor(
    private readonly raw: Record<string, unknown>,
    private readonly where: string,
    private readonly prefix = '',
  ) {}

  /** The field, with null read as absent (transformers writes null for "use the default"). */
  value(key: string): unknown {
    return Object.hasOwn(this.raw, key) && this.raw[key] !== null ? this.raw[key] : undefined;
  }
  isNull(key: string): boolean {
    return Object.hasOwn(this.raw, key) && this.raw[key] === null;
  }
  /** The first of several names for one field that is set, else the first name (for the error). */
  pick(...keys: string[]): string {
    return keys.find((k) => this.value(k) !== undefined) ?? keys[0]!;
  }
  nested(key: string): Fields | undefined {
    const v = this.value(key);
    if (v === undefined) return undefined;
    if (!isObject(v)) throw this.typeError(key, 'an object', v);
    return new Fields(v, this.where, `${this.prefix}${key}.`);
  }

  int(key: string, fallback?: number, min = 1): number {
    const v = this.value(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new LorakitError('ERR_CONFIG', `${this.where}: '${this.prefix}${key}' is missing; expected an integer >= ${min}`);
    }
    if (typeof v !== 'number') throw this.typeError(key, `an integer >= ${min}`, v);
    if (!Number.isSafeInteger(v) || v < min) throw this.rangeError(key, `an integer >= ${min}`, v);
    return v;
  }
  num(key: string, fallback: number): number {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'number') throw this.typeError(key, 'a positive number', v);
    if (!(v > 0) || !Number.isFinite(v)) throw this.rangeError(key, 'a positive number', v);
    return v;
  }
  bool(key: string, fallback: boolean): boolean {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') throw this.typeError(key, 'true or false', v);
    return v;
  }
  str(key: string, fallback?: string): string | undefined {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'string') throw this.typeError(key, 'a string', v);
    return v;
  }
  tokenId(key: string): number | null {
    return this.value(key) === undefined ? null : this.int(key, undefined, 0);
  }
  tokenIds(key: string): number[] {
    const v = this.value(key);
    const ids = v === undefined ? [] : Array.isArray(v) ? v : [v];
    if (!ids.every((id) => typeof id === 'number' && Number.isSafeInteger(id) && id >= 0))
      throw this.typeError(key, 'a token id (an integer >= 0), a list of them, or null', v);
    return ids as number[];
  }

  typeError(key: string, expected: string, got: unknown): LorakitTypeError {
    return new LorakitTypeError('ERR_CONFIG', `${this.where}: '${this.prefix}${key}' must be ${expected}, got ${show(got)}`);
  }
  rangeError(key: string, expected: string, got: unknown): LorakitRangeError {
    return new LorakitRangeError('ERR_CONFIG', `${this.where}: '${this.prefix}${key}' must be ${expected}, got ${show(got)}`);
  }
  fail(message: string): LorakitError {
    return new LorakitError('ERR_CONFIG', `${this.where}: ${message}`);
  }
  rangeFail(message: string): LorakitRangeError {
    return new LorakitRangeError('ERR_CONFIG', `${this.where}: ${message}`);
  }
}

function savedDtype(f: Fields): DType | null {
  // transformers 5 writes `dtype`, 4.x `torch_dtype`.
  const key = f.pick('dtype', 'torch_dtype');
  const d = f.str(key);
  if (d === undefined) return null;
  if (!(SAVED_DTYPES as readonly string[]).includes(d)) throw f.rangeError(key, `one of ${SAVED_DTYPES.join(', ')}`, d);
  return d as DType;
}

/** head_dim when a config derives it from the hidden size, which must then split evenly across heads. */
function splitHeads(f: Fields, hiddenKey: string, hidden: number, headsKey: string, heads: number): number {
  if (hidden % heads !== 0)
    throw f.rangeFail(`'${hiddenKey}' (${hidden}) must be divisible by '${headsKey}' (${heads})`);
  return hidden / heads;
}

function gpt2(f: Fields): ModelConfig {
  const hiddenSize = f.int('n_embd');
  const numHeads = f.int('n_head');
  return {
    modelType: 'gpt2',
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    numLayers: f.int('n_layer'),
    numHeads,
    numKvHeads: numHeads,
    headDim: splitHeads(f, 'n_embd', hiddenSize, 'n_head', numHeads),
    intermediateSize: f.int('n_inner', 4 * hiddenSize),
    // Old GPT-2 configs name the context length n_ctx.
    maxPositions: f.int(f.pick('n_positions', 'n_ctx')),
    normEps: f.num('layer_norm_epsilon', 1e-5),
    ropeTheta: null,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    dtype: savedDtype(f),
    attentionBias: true,
    attentionOutBias: true,
    mlpBias: true,
    hiddenAct: f.str('activation_function', 'gelu_new')!,
    slidingWindow: null,
    bosTokenId: f.tokenId('bos_token_id'),
    eosTokenId: f.tokenIds('eos_token_id'),
  };
}

/** Scaled RoPE variants (llama3, yarn, ...) change the frequencies; computing plain RoPE instead would be silently wrong. */
function checkPlainRope(f: Fields, key: string): void {
  const rope = f.nested(key);
  const type = rope?.str(rope.pick('rope_type', 'type'));
  if (type !== undefined && type !== 'default')
    throw f.fail(`'${key}' asks for RoPE type '${type}'; lorakit implements only the default RoPE`);
}

function ropeTheta(f: Fields): number {
  // transformers 5 moved rope_theta into rope_parameters; 4.x keeps it at the top, beside rope_scaling.
  checkPlainRope(f, 'rope_parameters');
  checkPlainRope(f, 'rope_scaling');
  const theta = f.num('rope_theta', 10000);
  return f.nested('rope_parameters')?.num('rope_theta', theta) ?? theta;
}

function llamaFamily(f: Fields, modelType: Exclude<ModelType, 'gpt2'>): ModelConfig {
  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  const numKvHeads = f.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    throw f.rangeFail(`'num_attention_heads' (${numHeads}) must be divisible by 'num_key_value_heads' (${numKvHeads})`);
  // An explicit head_dim need not multiply back to hidden_size (Mistral Nemo: 5120 hidden, 32 x 128).
  const headDim = f.value('head_dim') !== undefined ? f.int('head_dim') : splitHeads(f, 'hidden_size', hiddenSize, 'num_attention_heads', numHeads);
  // Mistral's null sliding_window turns it off; left out, transformers defaults it to 4096.
  let slidingWindow: number | null = null;
  if (modelType === 'mistral') slidingWindow = f.isNull('sliding_window') ? null : f.int('sliding_window', 4096);
  if (modelType === 'qwen2' && f.bool('use_sliding_window', false))
    throw f.fail(`'use_sliding_window' is true; lorakit does not implement Qwen2's per-layer sliding window`);
  const llamaBias = modelType === 'llama' && f.bool('attention_bias', false);
  return {
    modelType,
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: f.int('intermediate_size'),
    maxPositions: f.int('max_position_embeddings', DEFAULT_MAX_POSITIONS[modelType]),
    normEps: f.num('rms_norm_eps', 1e-6),
    ropeTheta: ropeTheta(f),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    dtype: savedDtype(f),
    attentionBias: modelType === 'qwen2' || llamaBias,
    attentionOutBias: llamaBias,
    mlpBias: modelType === 'llama' && f.bool('mlp_bias', false),
    hiddenAct: f.str('hidden_act', 'silu')!,
    slidingWindow,
    bosTokenId: f.tokenId('bos_token_id'),
    eosTokenId: f.tokenIds('eos_token_id'),
  };
}

/** Reads `<dir>/config.json`. Fields a config leaves out take transformers' defaults for its model type. */
export function readModelConfig(dir: string): ModelConfig {
  const op = 'readModelConfig';
  if (typeof dir !== 'string' || dir === '')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: dir must be a non-empty string, got ${describe(dir)}`);
  const file = path.join(dir, 'config.json');
  return parseModelConfig(readJsonFile(op, file, 'ERR_CONFIG'), `${op}: '${file}'`);
}

/** A `config.json` object already parsed; `where` names its origin in errors. */
export function parseModelConfig(raw: unknown, where = 'model config'): ModelConfig {
  if (!isObject(raw)) throw new LorakitError('ERR_CONFIG', `${where} must hold a JSON object, got ${show(raw)}`);
  const f = new Fields(raw, where);
  const type = f.value('model_type');
  if (!(MODEL_TYPES as readonly unknown[]).includes(type))
    throw f.fail(`model_type is ${show(type)}; lorakit supports ${MODEL_TYPES.join(', ')} (SmolLM is llama)`);
  return type === 'gpt2' ? gpt2(f) : llamaFamily(f, type as Exclude<ModelType, 'gpt2'>);
}

/** Parameter counts per part, from the config (exact for the supported architectures). */
export function parameterCounts(c: ModelConfig): { total: number; embedding: number; linear: Map<string, { count: number; out: number; in: number }> } {
  const D = c.hiddenSize, F = c.intermediateSize, V = c.vocabSize;
  const linear = new Map<string, { count: number; out: number; in: number }>();
  let total = 0;
  const add = (name: string, out: number, inF: number, bias: boolean) => {
    const e = linear.get(name) ?? { count: 0, out, in: inF };
    e.count += c.numLayers;
    linear.set(name, e);
    total += c.numLayers * (out * inF + (bias ? out : 0));
  };
  let embedding: number;
  if (c.modelType === 'gpt2') {
    embedding = V * D + c.maxPositions * D;
    total += embedding + 2 * D + c.numLayers * 4 * D;
    add('c_attn', 3 * D, D, true);
    add('attn.c_proj', D, D, true);
    add('c_fc', F, D, true);
    add('mlp.c_proj', D, F, true);
  } else {
    const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
    embedding = V * D * (c.tieWordEmbeddings ? 1 : 2);
    total += embedding + D + c.numLayers * 2 * D;
    add('q_proj', q, D, c.attentionBias);
    add('k_proj', kv, D, c.attentionBias);
    add('v_proj', kv, D, c.attentionBias);
    add('o_proj', D, q, c.attentionOutBias);
    add('gate_proj', F, D, c.mlpBias);
    add('up_proj', F, D, c.mlpBias);
    add('down_proj', D, F, c.mlpBias);
  }
  return { total, embedding, linear };
}
