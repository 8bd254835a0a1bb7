/**
 * Export to GGUF for llama.cpp and what is built on it (node-llama-cpp, Ollama): a model (with an adapter
 * merged, or the base alone) with its tokenizer, or an adapter alone as a llama.cpp LoRA file. Names,
 * metadata keys and tensor layouts follow llama.cpp's own converter (convert_hf_to_gguf.py) for the
 * architectures lorakit loads: Llama (and Mistral, SmolLM) as `llama`, Qwen2 as `qwen2`, GPT-2 as `gpt2`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitTypeError } from '../errors';
import { isObject, show } from '../check';
import { readJsonFile, readModelConfig, type ModelConfig } from '../io/config';
import { assertOutputApart, makeDir } from '../io/fs';
import { loadAdapter } from '../adapters/adapter';
import { loadModel, type CausalLM } from '../models';
import { loadTokenizer } from '../tokenizer';
import { trainingRecord } from '../train/record';
import { logitsError } from '../models/compare';
import { tensor, type Tensor } from '../tensor/tensor';
import { dequantizeQ8_0, quantizeQ8_0, fromHalf, toHalf, QK8_0, writeGguf, bool, f32, str, u32, type GgmlType, type GgufTensor, type GgufValue } from './gguf';

export { writeGguf, quantizeQ8_0, dequantizeQ8_0, toHalf, fromHalf, type GgufTensor, type GgufValue } from './gguf';

export type ExportDtype = 'f32' | 'f16' | 'bf16' | 'q8_0';

export interface ExportOptions {
  /** Hugging Face model folder (config.json, safetensors, tokenizer.json). */
  model: string;
  /** PEFT adapter folder: merged into the model, or written alone with format 'lora'. */
  adapter?: string;
  out: string;
  /** Storage of the 2-D weights (default f32); norms and biases stay f32, as llama.cpp's converter keeps them. */
  dtype?: ExportDtype;
  /** 'model' (default): the whole model; 'lora': the adapter alone, as a llama.cpp LoRA adapter. */
  format?: 'model' | 'lora';
  /**
   * The adapter was trained against an NF4 (QLoRA) base: the merge error is measured against that model.
   * Default: what the adapter's lorakit training record (trainer_state.json, or run.json beside last/ or
   * best/) says, as `lorakit eval` decides; false for an adapter without one.
   */
  qlora?: boolean;
  /** Which base the adapter is merged into: the original weights (default) or their NF4 quantization. */
  mergeInto?: 'original' | 'nf4';
}

export interface ExportResult {
  file: string;
  architecture: string;
  tensors: number;
  bytes: number;
  /** Logit error of the merged weights against the model the adapter was trained with (adapter unmerged). */
  mergeError?: { maxAbs: number; relative: number; reference: string; mergedInto: string };
  /** Error of the stored (rounded or quantized) weights against their float32 values, over every 2-D weight. */
  weightError?: { relative: number; maxAbs: number };
  /** Tensors written in another type than asked, and why (Q8_0 rows not a multiple of 32 fall back to f16). */
  notes: string[];
}

const OP = 'export';

/** llama.cpp's architecture for each lorakit model type. */
function archOf(config: ModelConfig): 'llama' | 'qwen2' | 'gpt2' {
  switch (config.modelType) {
    case 'llama':
    case 'mistral':
      return 'llama';
    case 'qwen2':
      return 'qwen2';
    case 'gpt2':
      return 'gpt2';
    default:
      throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: model_type ${show(config.modelType)} has no GGUF export; lorakit exports llama, mistral, qwen2 and gpt2`);
  }
}

/**
 * llama.cpp's `llama` architecture rotates adjacent pairs (GPT-J style), Hugging Face's Llama rotates
 * halves: llama.cpp's converter reorders each head's q/k rows from [half 1, half 2] to interleaved pairs.
 */
export function permuteRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const out = new Float32Array(w.length);
  const hd = rows / heads, half = hd / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let s = 0; s < 2; s++) {
        const from = (h * hd + s * half + i) * cols, to = (h * hd + 2 * i + s) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
  return out;
}

function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}

const LLAMA_NAMES: [RegExp, string][] = [
  [/^model\.embed_tokens\.weight$/, 'token_embd.weight'],
  [/^model\.norm\.weight$/, 'output_norm.weight'],
  [/^lm_head\.weight$/, 'output.weight'],
  [/^model\.layers\.(\d+)\.input_layernorm\.weight$/, 'blk.$1.attn_norm.weight'],
  [/^model\.layers\.(\d+)\.post_attention_layernorm\.weight$/, 'blk.$1.ffn_norm.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$/, 'blk.$1.attn_q.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)$/, 'blk.$1.attn_k.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)$/, 'blk.$1.attn_v.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)$/, 'blk.$1.attn_output.$2'],
  [/^model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)$/, 'blk.$1.ffn_gate.$2'],
  [/^model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)$/, 'blk.$1.ffn_up.$2'],
  [/^model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)$/, 'blk.$1.ffn_down.$2'],
];

const GPT2_NAMES: [RegExp, string][] = [
  [/^transformer\.wte\.weight$/, 'token_embd.weight'],
  [/^transformer\.wpe\.weight$/, 'position_embd.weight'],
  [/^transformer\.ln_f\.(weight|bias)$/, 'output_norm.$1'],
  [/^transformer\.h\.(\d+)\.ln_1\.(weight|bias)$/, 'blk.$1.attn_norm.$2'],
  [/^transformer\.h\.(\d+)\.ln_2\.(weight|bias)$/, 'blk.$1.ffn_norm.$2'],
  [/^transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$/, 'blk.$1.attn_qkv.$2'],
  [/^transformer\.h\.(\d+)\.attn\.c_proj\.(weight|bias)$/, 'blk.$1.attn_output.$2'],
  [/^transformer\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)$/, 'blk.$1.ffn_up.$2'],
  [/^transformer\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)$/, 'blk.$1.ffn_down.$2'],
];

/** The GGUF name of a Hugging Face tensor (or module, without the `.weight` suffix given). */
export function ggufName(arch: string, hfName: string): string {
  for (const [re, to] of arch === 'gpt2' ? GPT2_NAMES : LLAMA_NAMES) if (re.test(hfName)) return hfName.replace(re, to);
  throw new LorakitError('ERR_INVALID_ARG', `${OP}: tensor '${hfName}' has no ${arch} GGUF name`);
}

/** q/k rows need llama.cpp's pair order on the `llama` architecture; the head count is the tensor's. */
function permuteHeads(arch: string, config: ModelConfig, ggName: string): number | null {
  if (arch !== 'llama') return null;
  if (/\.attn_q\.(weight|bias)$/.test(ggName)) return config.numHeads;
  if (/\.attn_k\.(weight|bias)$/.test(ggName)) return config.numKvHeads;
  return null;
}

/** Architecture metadata under llama.cpp's keys. */
function modelMetadata(arch: string, config: ModelConfig, name: string): [string, GgufValue][] {
  const m: [string, GgufValue][] = [
    ['general.architecture', str(arch)],
    ['general.type', str('model')],
    ['general.name', str(name)],
    [`${arch}.context_length`, u32(config.maxPositions)],
    [`${arch}.embedding_length`, u32(config.hiddenSize)],
    [`${arch}.block_count`, u32(config.numLayers)],
    [`${arch}.feed_forward_length`, u32(config.intermediateSize)],
    [`${arch}.attention.head_count`, u32(config.numHeads)],
  ];
  if (arch === 'gpt2') {
    if (config.hiddenAct !== 'gelu_new' && config.hiddenAct !== 'gelu_pytorch_tanh')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: GPT-2 activation ${show(config.hiddenAct)} has no llama.cpp equivalent; llama.cpp's gpt2 uses the tanh GELU ('gelu_new')`);
    m.push([`${arch}.attention.layer_norm_epsilon`, f32(config.normEps)]);
    return m;
  }
  if (config.hiddenAct !== 'silu')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: activation ${show(config.hiddenAct)} has no llama.cpp equivalent; llama.cpp's ${arch} uses SiLU`);
  m.push(
    [`${arch}.attention.head_count_kv`, u32(config.numKvHeads)],
    [`${arch}.attention.layer_norm_rms_epsilon`, f32(config.normEps)],
    [`${arch}.rope.freq_base`, f32(config.ropeTheta ?? 10000)],
    [`${arch}.rope.dimension_count`, u32(config.headDim)],
    [`${arch}.vocab_size`, u32(config.vocabSize)],
  );
  // llama.cpp derives the head size from embedding_length / head_count unless told.
  if (config.headDim * config.numHeads !== config.hiddenSize)
    m.push([`${arch}.attention.key_length`, u32(config.headDim)], [`${arch}.attention.value_length`, u32(config.headDim)]);
  return m;
}

// Hugging Face pre-tokenizer regexes and the llama.cpp pre-tokenizer that splits text the same way.
const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * llama.cpp's name (`tokenizer.ggml.pre`) for the way a byte-level BPE tokenizer.json splits text before
 * merging. llama.cpp knows a fixed list of splitters; any other would tokenize differently, so it is refused.
 */
export function preTokenizerName(tok: Record<string, unknown>, file: string): string {
  const pre = tok.pre_tokenizer;
  const byteLevel = (p: unknown, regex: boolean) => isObject(p) && p.type === 'ByteLevel' && (p.use_regex ?? true) === regex && !p.add_prefix_space;
  const seq = isObject(pre) && pre.type === 'Sequence' && Array.isArray(pre.pretokenizers) ? (pre.pretokenizers as unknown[]) : null;
  if (byteLevel(pre, true)) return 'gpt-2';
  if (seq && seq.length === 2) {
    const [a, b] = seq;
    if (isObject(a) && a.type === 'Digits' && a.individual_digits === true && byteLevel(b, true)) return 'smollm';
    if (isObject(a) && a.type === 'Split' && isObject(a.pattern) && a.behavior === 'Isolated' && !a.invert && byteLevel(b, false)) {
      if (a.pattern.Regex === QWEN2_SPLIT) return 'qwen2';
      if (a.pattern.Regex === LLAMA3_SPLIT) return 'llama-bpe';
    }
  }
  throw new LorakitError(
    'ERR_TOKENIZER',
    `${OP}: '${file}': pre_tokenizer ${JSON.stringify(pre)} is not one llama.cpp reproduces; lorakit exports the GPT-2 (ByteLevel), SmolLM (Digits + ByteLevel), Qwen2 and Llama 3 (Split + ByteLevel) splitters`,
  );
}

/**
 * Whether a SentencePiece-style tokenizer.json puts ▁ before the text (llama.cpp's add_space_prefix),
 * from the two forms transformers writes: the legacy normalizer (Prepend ▁, spaces replaced by ▁) and the
 * Metaspace pre-tokenizer. llama.cpp prepends after every special token too, as the legacy normalizer does
 * (Hugging Face normalizes each stretch between added tokens apart); anything else is refused.
 */
function spaceSchemeOf(tok: Record<string, unknown>, file: string, notes: string[]): boolean {
  const refuse = (what: string) =>
    new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': ${what}; llama.cpp's SentencePiece tokenizer (model 'llama') only replaces spaces by \u2581 and puts one before the text, as the legacy normalizer [Prepend \u2581, Replace ' ' -> \u2581] or a Metaspace pre-tokenizer with prepend_scheme 'always' or 'first' does`);
  const norm = tok.normalizer ?? null, pre = tok.pre_tokenizer ?? null;
  const steps = norm === null ? [] : isObject(norm) && norm.type === 'Sequence' && Array.isArray(norm.normalizers) ? (norm.normalizers as unknown[]) : [norm];
  let prepend = false, replace = false;
  for (const n of steps) {
    if (isObject(n) && n.type === 'Prepend' && n.prepend === '\u2581' && !replace) prepend = true;
    else if (isObject(n) && n.type === 'Replace' && isObject(n.pattern) && n.pattern.String === ' ' && n.content === '\u2581') replace = true;
    else throw refuse(`normalizer step ${JSON.stringify(n)} is not reproduced`);
  }
  if (pre === null) {
    if (!replace) throw refuse('no normalizer or pre-tokenizer turns spaces into \u2581');
    return prepend;
  }
  if (steps.length || !isObject(pre) || pre.type !== 'Metaspace' || (pre.replacement ?? '\u2581') !== '\u2581')
    throw refuse(`pre_tokenizer ${JSON.stringify(pre)} (with normalizer ${JSON.stringify(norm)}) is not reproduced`);
  const scheme = pre.prepend_scheme ?? (pre.add_prefix_space === false ? 'never' : 'always');
  if (scheme !== 'always' && scheme !== 'first' && scheme !== 'never') throw refuse(`Metaspace prepend_scheme ${show(scheme)} is not reproduced`);
  if (scheme !== 'never')
    notes.push(
      `${path.basename(file)}'s Metaspace puts \u2581 before text only where it does not already start with a space` +
        (scheme === 'first' ? ', and only before the first stretch of text (prepend_scheme \'first\')' : '') +
        `; llama.cpp puts one before every stretch (after each special token too), so text that starts with a space${scheme === 'first' ? ' or follows a special token' : ''} tokenizes differently`,
    );
  return scheme !== 'never';
}

/**
 * llama.cpp's SentencePiece tokenizer merges, at each step, the adjacent pair whose joined text is a token
 * of the highest score; Hugging Face's BPE merges the pair of the lowest merge rank. They agree when each
 * token's score falls as the rank of the first merge that makes it grows, when the merges list every split
 * of a token into two tokens (as transformers' SentencePiece conversion writes them), and when every
 * character of a merged token is itself a token. The scores are derived so; a vocabulary that breaks the
 * other two conditions would tokenize differently in llama.cpp, and is refused naming the token.
 */
function spmScores(model: Record<string, unknown>, vocabSize: number, file: string): Float32Array {
  const vocab = model.vocab as Record<string, number>;
  if (!Array.isArray(model.merges)) throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': model.merges must be an array, got ${show(model.merges)}`);
  if (model.merges.length > 1 << 24) throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': ${model.merges.length} merges are more than float32 scores order exactly`);
  const merges = (model.merges as unknown[]).map((m) => (Array.isArray(m) ? (m as string[]) : String(m).split(' ')));
  const firstRank = new Map<string, number>();
  const isMerge = new Set<string>();
  merges.forEach(([a, b], rank) => {
    const t = a! + b!;
    isMerge.add(`${a} ${b}`);
    const seen = firstRank.get(t);
    if (seen === undefined) firstRank.set(t, rank);
    // A token made again by a later merge after others came between: llama.cpp ranks it by its first merge.
    else if (merges[rank - 1]![0]! + merges[rank - 1]![1]! !== t)
      throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': token ${show(t)} is made by merges ${seen} and ${rank} with other tokens' merges between; llama.cpp ranks a merge by its token's score, so it would merge in another order`);
  });
  const scores = new Float32Array(vocabSize);
  for (const [t, id] of Object.entries(vocab)) {
    const chars = Array.from(t);
    if (chars.length < 2 || /^<0x[0-9A-F]{2}>$/.test(t)) continue;
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join(''), r = chars.slice(i).join('');
      if (vocab[l] !== undefined && vocab[r] !== undefined && !isMerge.has(`${l} ${r}`))
        throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': token ${show(t)} splits into tokens ${show(l)} and ${show(r)}, which no merge joins; llama.cpp joins any two tokens that make a token, so it would tokenize differently`);
    }
    const rank = firstRank.get(t);
    if (rank === undefined) continue;
    const missing = chars.find((c) => vocab[c] === undefined);
    if (missing !== undefined)
      throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': token ${show(t)} holds ${show(missing)}, which is not a token; Hugging Face writes such a character as bytes and never merges it, llama.cpp would`);
    // Rank 0 scores highest; the scale only has to keep the order exact in float32.
    scores[id] = -rank;
  }
  return scores;
}

/** The tokenizer metadata llama.cpp reads: vocabulary, types, merges or scores, special ids, template. */
function tokenizerMetadata(dir: string, vocabSize: number, notes: string[]): [string, GgufValue][] {
  const file = path.join(dir, 'tokenizer.json');
  // lorakit's own tokenizer decides which ends are added and the special ids, so llama.cpp matches it.
  const tokenizer = loadTokenizer(dir);
  const tok = readJsonFile(OP, file, 'ERR_TOKENIZER');
  if (!isObject(tok) || !isObject(tok.model)) throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}' has no 'model' object`);
  const model = tok.model;
  if (model.type !== 'BPE' || !isObject(model.vocab))
    throw new LorakitError(
      'ERR_TOKENIZER',
      `${OP}: '${file}': model.type is ${show(model.type)}; lorakit exports BPE vocabularies, byte-level (GPT-2, Llama 3, Qwen2, SmolLM) or SentencePiece-style with byte_fallback (Llama 2, Mistral, TinyLlama)`,
    );
  const spm = model.byte_fallback === true;
  let addSpacePrefix = false;
  let pre = '';
  if (spm) addSpacePrefix = spaceSchemeOf(tok, file, notes);
  else {
    pre = preTokenizerName(tok, file);
    if (tok.normalizer !== null && tok.normalizer !== undefined) {
      if (!(isObject(tok.normalizer) && tok.normalizer.type === 'NFC'))
        throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': normalizer ${JSON.stringify(tok.normalizer)} is not applied by llama.cpp`);
      notes.push(`${path.basename(file)} normalizes text to NFC, llama.cpp does not: text that is not already NFC tokenizes differently`);
    }
  }
  const tokens: (string | undefined)[] = new Array(vocabSize);
  const types = new Int32Array(vocabSize).fill(1); // NORMAL
  for (const [t, id] of Object.entries(model.vocab)) {
    if (typeof id !== 'number' || id >= vocabSize)
      throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': token ${show(t)} has id ${show(id)}, outside the model's vocabulary of ${vocabSize}`);
    tokens[id] = t;
    // llama.cpp writes a character missing from the vocabulary as these <0xNN> tokens, as byte_fallback does.
    if (spm && /^<0x[0-9A-F]{2}>$/.test(t)) types[id] = 6; // BYTE
    else if (t === model.unk_token) types[id] = 2; // UNKNOWN
  }
  if (spm) {
    const missing = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`).filter((t) => (model.vocab as Record<string, unknown>)[t] === undefined);
    if (missing.length)
      throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': byte_fallback needs the 256 tokens <0x00>..<0xFF>, and ${missing.length} are missing (${missing.slice(0, 3).join(', ')}...); llama.cpp has no other way to write a character outside the vocabulary`);
  }
  for (const a of Array.isArray(tok.added_tokens) ? tok.added_tokens : []) {
    if (!isObject(a) || typeof a.id !== 'number' || typeof a.content !== 'string') continue;
    if (a.id >= vocabSize)
      throw new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': added token ${show(a.content)} has id ${a.id}, outside the model's vocabulary of ${vocabSize}`);
    tokens[a.id] = a.content;
    types[a.id] = a.content === model.unk_token ? 2 : a.special ? 3 : 4; // UNKNOWN : CONTROL : USER_DEFINED
  }
  let padded = 0;
  for (let i = 0; i < vocabSize; i++)
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = 5; // UNUSED
      padded++;
    }
  if (padded) notes.push(`${padded} embedding rows have no token in tokenizer.json; they are written as unused [PAD<id>] tokens`);
  const m: [string, GgufValue][] = [];
  if (spm) {
    const unk = typeof model.unk_token === 'string' ? (model.vocab as Record<string, number>)[model.unk_token] : undefined;
    m.push(
      ['tokenizer.ggml.model', str('llama')],
      ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens as string[] }],
      ['tokenizer.ggml.scores', { type: 'array', of: 'f32', value: spmScores(model, vocabSize, file) }],
      ['tokenizer.ggml.token_type', { type: 'array', of: 'i32', value: types }],
      ['tokenizer.ggml.add_space_prefix', bool(addSpacePrefix)],
    );
    if (unk !== undefined) m.push(['tokenizer.ggml.unknown_token_id', u32(unk)]);
  } else {
    const merges = (Array.isArray(model.merges) ? model.merges : []).map((mg: unknown) => (Array.isArray(mg) ? mg.join(' ') : String(mg)));
    m.push(
      ['tokenizer.ggml.model', str('gpt2')],
      ['tokenizer.ggml.pre', str(pre)],
      ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens as string[] }],
      ['tokenizer.ggml.token_type', { type: 'array', of: 'i32', value: types }],
      ['tokenizer.ggml.merges', { type: 'array', of: 'string', value: merges }],
    );
  }
  // Which ends lorakit adds, read from what it does to a probe string.
  const plain = tokenizer.encode('a', { addSpecialTokens: false });
  const full = tokenizer.encode('a');
  const addBos = tokenizer.bosTokenId !== null && full.length > plain.length && full[0] === tokenizer.bosTokenId;
  const addEos = tokenizer.eosTokenId !== null && full.length > plain.length && full[full.length - 1] === tokenizer.eosTokenId;
  if (tokenizer.bosTokenId !== null) m.push(['tokenizer.ggml.bos_token_id', u32(tokenizer.bosTokenId)]);
  if (tokenizer.eosTokenId !== null) m.push(['tokenizer.ggml.eos_token_id', u32(tokenizer.eosTokenId)]);
  if (tokenizer.padTokenId !== null) m.push(['tokenizer.ggml.padding_token_id', u32(tokenizer.padTokenId)]);
  m.push(['tokenizer.ggml.add_bos_token', bool(addBos)], ['tokenizer.ggml.add_eos_token', bool(addEos)]);
  if (tokenizer.chatTemplate !== null) m.push(['tokenizer.chat_template', str(tokenizer.chatTemplate)]);
  return m;
}

/** A fixed batch of token ids for the merge error, as `lorakit merge` uses without --data. */
function probeIds(config: ModelConfig): Tensor {
  const seq = Math.min(64, config.maxPositions);
  let s = 12345;
  const ids = BigInt64Array.from({ length: 2 * seq }, () => BigInt((s = (s * 1103515245 + 12345) % 2147483648) % config.vocabSize));
  return tensor(ids, [2, seq]);
}

function logits(model: CausalLM, probe: Tensor): Float32Array {
  using l = model.forward(probe, { returnLogits: true }).logits!;
  return l.toFloat32Array();
}


function checkOptions(o: ExportOptions): Required<Omit<ExportOptions, 'adapter'>> & { adapter?: string } {
  if (!isObject(o)) throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: options must be an object, got ${show(o)}`);
  for (const k of ['model', 'out'] as const)
    if (typeof o[k] !== 'string' || o[k] === '') throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: '${k}' must be a path, got ${show(o[k])}`);
  const dtype = o.dtype ?? 'f32';
  if (!['f32', 'f16', 'bf16', 'q8_0'].includes(dtype)) throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'dtype' must be f32, f16, bf16 or q8_0, got ${show(dtype)}`);
  const format = o.format ?? 'model';
  if (format !== 'model' && format !== 'lora') throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'format' must be 'model' or 'lora', got ${show(format)}`);
  const mergeInto = o.mergeInto ?? 'original';
  if (mergeInto !== 'original' && mergeInto !== 'nf4') throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'mergeInto' must be 'original' or 'nf4', got ${show(mergeInto)}`);
  if (format === 'lora' && !o.adapter) throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: format 'lora' writes an adapter, and no 'adapter' was given`);
  if (format === 'lora' && dtype === 'q8_0')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: a LoRA adapter is written as f32, f16 or bf16 (its small A and B matrices gain little from q8_0), got dtype 'q8_0'`);
  if ((o.mergeInto !== undefined || o.qlora) && !o.adapter)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'mergeInto' and 'qlora' choose how an adapter is merged, and no 'adapter' was given`);
  if (format === 'lora' && o.mergeInto !== undefined)
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: format 'lora' writes the adapter unmerged, so 'mergeInto' does not apply`);
  if (o.qlora !== undefined && typeof o.qlora !== 'boolean') throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'qlora' must be a boolean, got ${show(o.qlora)}`);
  const qlora = o.qlora ?? (o.adapter !== undefined && format === 'model' && trainingRecord(o.adapter)?.method === 'qlora');
  return { model: o.model, adapter: o.adapter, out: o.out, dtype, format, qlora, mergeInto };
}

/** The type a 2-D weight is stored in, or why it falls back. */
function storedType(dtype: ExportDtype, ggName: string, shape: readonly number[], notes: string[]): GgmlType {
  if (shape.length < 2) return 'f32';
  // llama.cpp's converter keeps learned position embeddings in f32.
  if (ggName === 'position_embd.weight') return 'f32';
  if (dtype === 'q8_0' && shape[shape.length - 1]! % QK8_0 !== 0) {
    notes.push(`${ggName}: rows of ${shape[shape.length - 1]} values are not a multiple of ${QK8_0}, written as f16`);
    return 'f16';
  }
  return dtype;
}

/** Adds the error of storing `data` as `type` to running sums. */
function accumulateError(acc: { num: number; den: number; maxAbs: number }, data: Float32Array, type: GgmlType): void {
  if (type === 'f32') return;
  let back: Float32Array;
  if (type === 'q8_0') back = dequantizeQ8_0(quantizeQ8_0(data));
  else {
    const h = new Uint16Array(data.length);
    back = new Float32Array(data.length);
    const fromBits = new Uint32Array(back.buffer);
    if (type === 'bf16') {
      const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
      for (let i = 0; i < data.length; i++) fromBits[i] = (((bits[i]! + 0x7fff + ((bits[i]! >>> 16) & 1)) >>> 16) << 16) >>> 0;
    } else {
      for (let i = 0; i < data.length; i++) h[i] = toHalf(data[i]!);
      for (let i = 0; i < data.length; i++) back[i] = fromHalf(h[i]!);
    }
  }
  for (let i = 0; i < data.length; i++) {
    const d = back[i]! - data[i]!;
    acc.num += d * d;
    acc.den += data[i]! * data[i]!;
    acc.maxAbs = Math.max(acc.maxAbs, Math.abs(d));
  }
}

function assertApart(o: { model: string; adapter?: string; out: string }): void {
  assertOutputApart(OP, o.out, { '--model': o.model, '--adapter': o.adapter });
  if (fs.statSync(o.out, { throwIfNoEntry: false })?.isDirectory())
    throw new LorakitError('ERR_IO', `${OP}: --out '${o.out}' is a folder; give the path of the .gguf file to write`);
  makeDir(OP, path.dirname(path.resolve(o.out)));
}

/** Writes the model (with the adapter merged when one is given) as a GGUF file llama.cpp loads. */
export function exportGguf(options: ExportOptions): ExportResult {
  const o = checkOptions(options);
  assertApart(o);
  if (o.format === 'lora') return exportLora(o);
  const notes: string[] = [];
  const config = readModelConfig(o.model);
  const arch = archOf(config);
  const tokMeta = tokenizerMetadata(o.model, config.vocabSize, notes);
  let mergeError: ExportResult['mergeError'];
  let model: CausalLM;
  if (o.adapter) {
    // The reference: the model the adapter was trained with, adapter unmerged, in float32. loadModel's
    // `quantize: true` is the NF4 lorakit's qlora trains against (block 64, double quantization): the trainer
    // uses no other, so its records do not name one.
    using probe = probeIds(config);
    const reference = loadModel(o.model, { quantize: o.qlora });
    let exact: Float32Array;
    try {
      loadAdapter(reference, o.adapter);
      exact = logits(reference, probe);
    } catch (e) {
      reference.dispose();
      throw e;
    }
    if (o.qlora === (o.mergeInto === 'nf4')) model = reference;
    else {
      reference.dispose();
      model = loadModel(o.model, { quantize: o.mergeInto === 'nf4' });
      loadAdapter(model, o.adapter);
    }
    try {
      model.mergeAdapters();
      mergeError = {
        ...logitsError(exact, logits(model, probe)),
        reference: `${o.qlora ? 'the NF4' : 'the original'} base with the adapter unmerged`,
        mergedInto: o.mergeInto === 'nf4' ? 'the NF4 base (block 64, double quantization; dequantized)' : 'the original weights',
      };
    } catch (e) {
      model.dispose();
      throw e;
    }
  } else model = loadModel(o.model);
  const acc = { num: 0, den: 0, maxAbs: 0 };
  const tensors: GgufTensor[] = [];
  try {
    const weights = model.exportWeights('float32');
    try {
      for (const [hf, t] of Object.entries(weights)) {
        const name = ggufName(arch, hf);
        let data = t.toFloat32Array();
        let shape = [...t.shape];
        // GPT-2's Conv1D weights are saved [in, out]; GGUF wants [out, in] like every other linear.
        if (arch === 'gpt2' && /\.(c_attn|c_proj|c_fc)\.weight$/.test(hf)) {
          data = transpose(data, shape[0]!, shape[1]!);
          shape = [shape[1]!, shape[0]!];
        }
        const heads = permuteHeads(arch, config, name);
        if (heads !== null) data = permuteRows(data, shape[0]!, shape.length > 1 ? shape[1]! : 1, heads);
        const type = storedType(o.dtype, name, shape, notes);
        accumulateError(acc, data, type);
        tensors.push({ name, shape, data, type });
      }
      // llama.cpp's gpt2 graph reads output.weight; a tied head is written out as its own copy.
      if (arch === 'gpt2' && !tensors.some((t) => t.name === 'output.weight')) {
        const emb = tensors.find((t) => t.name === 'token_embd.weight')!;
        tensors.push({ ...emb, name: 'output.weight' });
      }
    } finally {
      for (const t of Object.values(weights)) t.dispose();
    }
  } finally {
    model.dispose();
  }
  const fileType = { f32: 0, f16: 1, q8_0: 7, bf16: 32 }[o.dtype];
  const meta = new Map<string, GgufValue>([...modelMetadata(arch, config, path.basename(path.resolve(o.model))), ['general.file_type', u32(fileType)], ...tokMeta]);
  writeGguf(OP, o.out, meta, tensors);
  return {
    file: o.out,
    architecture: arch,
    tensors: tensors.length,
    bytes: fs.statSync(o.out).size,
    mergeError,
    weightError: o.dtype === 'f32' ? undefined : { relative: Math.sqrt(acc.num / (acc.den || 1)), maxAbs: acc.maxAbs },
    notes,
  };
}

/**
 * The adapter alone as a llama.cpp LoRA adapter (`--lora`, node-llama-cpp's `lora` context option).
 * llama.cpp scales each pair by adapter.lora.alpha / r with r read from the tensor; lorakit's scale
 * (alpha/r, alpha/√r under rsLoRA, per-module alpha and rank patterns) is kept exactly by writing
 * alpha once and folding each module's remaining factor into B.
 */
function exportLora(o: ReturnType<typeof checkOptions>): ExportResult {
  const config = readModelConfig(o.model);
  const arch = archOf(config);
  using model = loadModel(o.model);
  const lc = loadAdapter(model, o.adapter!);
  const alpha = lc.loraAlpha;
  if (!(alpha > 0)) throw new LorakitError('ERR_CONFIG', `${OP}: lora_alpha must be positive to express the adapter's scale in GGUF, got ${alpha}`);
  const tensors: GgufTensor[] = [];
  for (const [name, l] of model.linears) {
    if (!l.adapter) continue;
    const base = ggufName(arch, `${name}.weight`);
    const a = l.adapter.loraA.toFloat32Array();
    let b = l.adapter.loraB.toFloat32Array();
    const [r, inF] = l.adapter.loraA.shape as [number, number];
    const outF = l.adapter.loraB.shape[0]!;
    const fold = (l.adapter.scale * r) / alpha;
    if (fold !== 1) b = b.map((v) => v * fold);
    const heads = permuteHeads(arch, config, base);
    if (heads !== null) b = permuteRows(b, outF, r, heads);
    const type = o.dtype as GgmlType;
    tensors.push({ name: `${base}.lora_a`, shape: [r, inF], data: a, type }, { name: `${base}.lora_b`, shape: [outF, r], data: b, type });
  }
  if (tensors.length === 0) throw new LorakitError('ERR_CONFIG', `${OP}: adapter '${o.adapter}' adapts no module of '${o.model}'`);
  const meta = new Map<string, GgufValue>([
    ['general.architecture', str(arch)],
    ['general.type', str('adapter')],
    ['general.name', str(path.basename(path.resolve(o.adapter!)))],
    ['adapter.type', str('lora')],
    ['adapter.lora.alpha', f32(alpha)],
  ]);
  writeGguf(OP, o.out, meta, tensors);
  return { file: o.out, architecture: arch, tensors: tensors.length, bytes: fs.statSync(o.out).size, notes: [] };
}
