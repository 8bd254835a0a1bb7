/**
 * GGUF export, checked in the real runtime: node-llama-cpp (llama.cpp's prebuilt CPU binary) loads each
 * exported file, and its tokens and greedy continuations are compared with lorakit's tokenizer and the
 * argmax of lorakit's own forward pass. The encoders (f16, Q8_0) are checked against float64 references.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { exportGguf, quantizeQ8_0, dequantizeQ8_0, toHalf, fromHalf, permuteRows, ggufName } from '../lib/export';
import { quantize as nf4Quantize, dequantize as nf4Dequantize } from '../lib/nf4';
import { loadModel, type CausalLM } from '../lib/models';
import { randomModel } from '../lib/models/random';
import { addAdapter, saveAdapter, loadAdapter } from '../lib/lora-api';
import { loadTokenizer } from '../lib/tokenizer';
import { writeSafetensors } from '../lib/io/safetensors';
import { tensor } from '../lib/tensor/tensor';
import { randn } from '../lib/tensor/random';
import { LorakitError, LorakitTypeError } from '../lib/errors';
import { expectError } from './helpers/errors';

const ROOT = path.resolve(__dirname, '..');
const DEFAULT = path.join(ROOT, 'assets', 'default');
const RUNNER = path.join(ROOT, 'test', 'fixtures', 'export', 'run-llama.mjs');
const N = 32;

const STRINGS = [
  'Hello world',
  'The red key opens the blue door.',
  '  leading, trailing   and   inner   spaces  ',
  'tabs\tand\nnew\n\n\nlines\r\n',
  'héllo wörld, naïve café: 日本語 and emoji 🙂👍🏽',
  '<|endoftext|>text after a special token<|endoftext|>',
  "numbers 1234567 and 3.14, don't we'll I'M",
];

// node-llama-cpp ships a prebuilt CPU binary per platform; elsewhere the runtime checks cannot run.
const binary = path.join(ROOT, 'node_modules', '@node-llama-cpp', `${process.platform}-${process.arch}`);
const runtimeMissing = fs.existsSync(binary) ? '' : `node-llama-cpp has no prebuilt binary for ${process.platform}-${process.arch} (${binary} missing)`;
if (runtimeMissing)
  console.warn(`\n!!! test/export.test.ts: ${runtimeMissing}: exported GGUF files are NOT loaded in llama.cpp here; only the encoders are tested\n`);
const runtime = runtimeMissing ? describe.skip : describe;

let work: string;
beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-export-'));
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

interface LlamaAnswer {
  tokenize: number[][];
  continuations: number[][];
  distributions: [number, number][][][];
  bos: number | null;
  eos: number | null;
  addBos: boolean;
  decodeSeconds: number;
  decodeTokens: number;
  chatTemplate: string | null;
  tensorTypes: Record<string, number>;
}

function runLlama(request: Record<string, unknown>): LlamaAnswer {
  const req = path.join(work, `req-${process.hrtime.bigint()}.json`);
  fs.writeFileSync(req, JSON.stringify(request));
  const r = spawnSync(process.execPath, [RUNNER, req], { encoding: 'utf8', maxBuffer: 1 << 28, timeout: 120_000 });
  if (r.status !== 0) throw new Error(`node-llama-cpp runner failed (${r.status}):\n${r.stderr}`);
  return JSON.parse(r.stdout) as LlamaAnswer;
}

/**
 * lorakit's greedy continuation: the argmax of a full forward pass over the growing sequence, with the
 * gap between the two largest logits at each step (a gap within float error is a tie either runtime may
 * break its own way).
 */
function greedy(model: CausalLM, prompt: number[], n: number): { tokens: number[]; gaps: number[] } {
  const ids = [...prompt];
  const tokens: number[] = [], gaps: number[] = [];
  const V = model.config.vocabSize;
  for (let s = 0; s < n; s++) {
    using input = tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]);
    using logits = model.forward(input, { returnLogits: true }).logits!;
    const all = logits.toFloat32Array();
    const last = all.subarray((ids.length - 1) * V, ids.length * V);
    let best = 0;
    for (let i = 1; i < V; i++) if (last[i]! > last[best]!) best = i;
    let second = -Infinity;
    for (let i = 0; i < V; i++) if (i !== best) second = Math.max(second, last[i]!);
    tokens.push(best);
    gaps.push(last[best]! - second);
    ids.push(best);
  }
  return { tokens, gaps };
}

/** Equal continuations; a first difference is accepted only where lorakit's top two logits tie within 1e-4, and said. */
function expectSameContinuation(label: string, ours: { tokens: number[]; gaps: number[] }, theirs: number[]): void {
  const first = ours.tokens.findIndex((t, i) => t !== theirs[i]);
  if (first >= 0 && ours.gaps[first]! < 1e-4) {
    console.warn(`${label}: continuations part at step ${first}, where lorakit's top two logits tie (gap ${ours.gaps[first]!.toExponential(2)}); the steps before it agree`);
    expect(theirs.slice(0, first)).toEqual(ours.tokens.slice(0, first));
    return;
  }
  expect(theirs).toEqual(ours.tokens);
}

/** Mean over positions of KL(p || q) in nats, from node-llama-cpp's full next-token distributions. */
function meanKL(p: [number, number][][], q: [number, number][][]): number {
  expect(q.length).toBe(p.length);
  let kl = 0;
  p.forEach((pairs, s) => {
    const qmap = new Map(q[s]!);
    for (const [t, pt] of pairs) if (pt > 0) kl += pt * Math.log(pt / Math.max(qmap.get(t) ?? 0, 1e-30));
  });
  return kl / p.length;
}

/**
 * A LoRA adapter on every linear layer of the model in `dir`: its merged export, and the LoRA GGUF applied
 * unmerged by llama.cpp on `baseFile`, both continue `prompt` as lorakit does with the adapter loaded.
 */
function checkAdapterInRuntime(label: string, dir: string, baseFile: string, prompt: number[]): void {
  const adapter = path.join(work, `${label}-adapter`);
  {
    using m = loadModel(dir);
    addAdapter(m, { r: 4, loraAlpha: 8, targetModules: 'all-linear', initLoraWeights: false, seed: 7 });
    saveAdapter(m, adapter);
  }
  const merged = path.join(work, `${label}-merged.gguf`), loraFile = path.join(work, `${label}-lora.gguf`);
  expect(exportGguf({ model: dir, adapter, out: merged }).mergeError!.relative).toBeLessThan(1e-5);
  exportGguf({ model: dir, adapter, out: loraFile, format: 'lora' });
  using model = loadModel(dir);
  loadAdapter(model, adapter);
  const ours = greedy(model, prompt, N);
  using plain = loadModel(dir);
  // The adapter must change the continuation, or the comparisons would not test it.
  expect(ours.tokens).not.toEqual(greedy(plain, prompt, N).tokens);
  expectSameContinuation(`${label} merged`, ours, runLlama({ model: merged, prompts: [prompt], n: N }).continuations[0]!);
  expectSameContinuation(`${label} lora`, ours, runLlama({ model: baseFile, lora: loraFile, prompts: [prompt], n: N }).continuations[0]!);
}

/**
 * The f32 tensors of a GGUF file, read by the format's spec (ggml's gguf.h) apart from lorakit's writer:
 * header, key/value pairs skipped by type, tensor descriptors, aligned data. Shapes come back row-major.
 */
function readGgufF32(file: string): Map<string, { shape: number[]; data: Float32Array }> {
  const b = fs.readFileSync(file);
  let p = 0;
  const u32 = () => ((p += 4), b.readUInt32LE(p - 4));
  const u64 = () => ((p += 8), Number(b.readBigUInt64LE(p - 8)));
  const string = () => {
    const n = u64();
    return ((p += n), b.toString('utf8', p - n, p));
  };
  const size: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  let alignment = 32;
  const skip = (type: number): void => {
    if (type === 8) string();
    else if (type === 9) {
      const of = u32(), n = u64();
      for (let i = 0; i < n; i++) skip(of);
    } else p += size[type]!;
  };
  expect([b.toString('latin1', 0, 4), b.readUInt32LE(4)]).toEqual(['GGUF', 3]);
  p = 8;
  const nTensors = u64(), nKv = u64();
  for (let i = 0; i < nKv; i++) {
    const key = string(), type = u32();
    if (key === 'general.alignment') alignment = u32();
    else skip(type);
  }
  const infos = Array.from({ length: nTensors }, () => {
    const name = string(), dims = Array.from({ length: u32() }, u64).reverse();
    return { name, dims, type: u32(), offset: u64() };
  });
  const start = Math.ceil(p / alignment) * alignment;
  return new Map(infos.map((t) => {
    expect([t.name, t.type]).toEqual([t.name, 0]);
    const n = t.dims.reduce((x, y) => x * y, 1), at = start + t.offset;
    return [t.name, { shape: t.dims, data: new Float32Array(b.buffer.slice(b.byteOffset + at, b.byteOffset + at + 4 * n)) }];
  }));
}

/** llama.cpp's interleaved q/k row order back to Hugging Face's halves: row 2i+s of a head came from row s·half+i. */
function unpermute(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const out = new Float32Array(w.length), hd = rows / heads, half = hd / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let s = 0; s < 2; s++) out.set(w.subarray((h * hd + 2 * i + s) * cols, (h * hd + 2 * i + s + 1) * cols), (h * hd + s * half + i) * cols);
  return out;
}

/** Replaces every weight of a random model by N(0, std²) draws (norm weights 1 + N(0, 0.1²)), and saves it with `tokenizer`. */
function saveRandomModel(dir: string, config: Record<string, unknown>, files: Record<string, unknown>, std: number): void {
  fs.mkdirSync(dir);
  using model = randomModel(config);
  const weights = model.exportWeights('float32');
  const out: Record<string, ReturnType<typeof randn>> = {};
  let seed = 100;
  for (const [name, t] of Object.entries(weights)) {
    const norm = /(norm|ln_\d+|ln_f)\.weight$/.test(name);
    out[name] = randn(t.shape, { seed: seed++, std: norm ? 0.1 : name.endsWith('.bias') ? 0.1 : std, mean: norm ? 1 : 0 });
    t.dispose();
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out, { format: 'pt' });
  for (const t of Object.values(out)) t.dispose();
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const [f, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), JSON.stringify(v));
}

/**
 * A small SentencePiece-style tokenizer.json in the form transformers writes for Llama 2, Mistral and
 * TinyLlama: BPE with byte_fallback over ▁-marked text (legacy normalizer Prepend ▁ + Replace), the 256
 * <0xNN> byte tokens, and merges listed as transformers' SentencePiece conversion lists them (every split of
 * each token into two tokens, in token order). The pieces are learned here by plain BPE on a few sentences;
 * characters outside those sentences (accents, CJK, emoji, tabs, newlines) fall back to bytes.
 */
function spmTokenizerJson(): { json: Record<string, unknown>; size: number } {
  const corpus = [
    'The red key opens the blue door.', 'Where is the red key?', 'In the garden there is a small house.',
    'Hello world, the world is big.', 'numbers 1234567 and 3.14, do not open the door', 'spaces and more spaces',
  ];
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const words = corpus.map((line) => Array.from('\u2581' + line.replace(/ /g, '\u2581')));
  for (const c of [...new Set(words.flat())].sort()) vocab[c] = Object.keys(vocab).length;
  for (let step = 0; step < 120; step++) {
    const counts = new Map<string, number>();
    for (const w of words) for (let i = 0; i + 1 < w.length; i++) counts.set(`${w[i]}\u0000${w[i + 1]}`, (counts.get(`${w[i]}\u0000${w[i + 1]}`) ?? 0) + 1);
    let best = '', n = 0;
    for (const [k, c] of [...counts].sort()) if (c > n) [best, n] = [k, c];
    if (n < 2) break;
    const [a, b] = best.split('\u0000') as [string, string];
    if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
    for (const w of words) for (let i = 0; i + 1 < w.length; i++) if (w[i] === a && w[i + 1] === b) w.splice(i, 2, a + b);
  }
  const merges: [string, string][] = [];
  for (const t of Object.keys(vocab)) {
    const chars = Array.from(t), local: [string, string][] = [];
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join(''), r = chars.slice(i).join('');
      if (vocab[l] !== undefined && vocab[r] !== undefined) local.push([l, r]);
    }
    merges.push(...local.sort((x, y) => vocab[x[0]]! - vocab[y[0]]! || vocab[x[1]]! - vocab[y[1]]!));
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges },
  };
  return { json, size: Object.keys(vocab).length };
}

// A Llama 2-style chat template with quotes, backslashes, a tab and non-ASCII text, to be kept byte for byte.
const SPM_TEMPLATE = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] | trim + ' [/INST]' }}{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}{# «naïve» \\ \t 日本 #}";
const SPM_STRINGS = [
  'Hello world',
  'The red key opens the blue door.',
  '  leading, trailing   and   inner   spaces  ',
  'tabs\tand\nnew\n\n\nlines\r\n',
  'héllo wörld, naïve café: 日本語 and emoji 🙂👍🏽',
  '<s>text after a special token</s> and more</s><s>',
  'numbers 1234567 and 3.14, <unk> unknown',
  // Words where merging by rank and merging leftmost first part ways ('dor': 'or' is ranked before 'do'),
  // which llama.cpp only gets right through the scores.
  'Where there is a garden, the house opens; here the small blue key is in the red door of the world.',
  'ethe rethe hethere wherethe opensthe mallhouse dor idore adorn',
];

/** A tiny random model of `config` with the SentencePiece-style tokenizer. */
function saveSpmModel(dir: string, config: Record<string, unknown>): void {
  const { json, size } = spmTokenizerJson();
  saveRandomModel(dir, { ...config, vocab_size: size, bos_token_id: 1, eos_token_id: 2 }, {
    'tokenizer.json': json,
    'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true, add_eos_token: false, chat_template: SPM_TEMPLATE },
  }, 0.2);
}

describe('encoders against float64 references', () => {
  test('f16: round to nearest even, subnormals, overflow to inf', () => {
    const cases: [number, number][] = [[1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -26, 0x0001], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [0.1, 0x2e66]];
    for (const [x, h] of cases) expect([x, toHalf(x)]).toEqual([x, h]);
    for (let h = 0; h < 0x7c00; h += 37) expect(toHalf(fromHalf(h))).toBe(h);
  });

  test('Q8_0: the block layout, scale and rounding of ggml, and its error bound', () => {
    const x = new Float32Array(96);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 1.7) * (i < 32 ? 1 : i < 64 ? 1e-3 : 0);
    const q = quantizeQ8_0(x);
    expect(q.length).toBe(3 * 34);
    const view = new DataView(q.buffer);
    for (let b = 0; b < 3; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
      const d = amax / 127;
      // The stored scale is d in f16 (within f16's relative precision); codes are round(x/d).
      expect(Math.abs(fromHalf(view.getUint16(b * 34, true)) - d)).toBeLessThanOrEqual(d * 2 ** -11);
      for (let j = 0; j < 32; j++) {
        const want = d ? Math.round(Math.abs(x[b * 32 + j]! / d)) * Math.sign(x[b * 32 + j]!) : 0;
        expect([b, j, view.getInt8(b * 34 + 2 + j)]).toEqual([b, j, want + 0]);
      }
    }
    const back = dequantizeQ8_0(q);
    for (let i = 0; i < 64; i++) {
      const amax = i < 32 ? 1 : 1e-3;
      expect(Math.abs(back[i]! - x[i]!)).toBeLessThanOrEqual((amax / 127) * 0.5 + amax * 2 ** -10);
    }
    expect(Array.from(back.subarray(64))).toEqual(new Array(32).fill(0));
  });

  test('the q/k row permutation takes each head from halves to interleaved pairs', () => {
    // 2 heads of 4 rows, 1 column: head rows [a0 a1 b0 b1] become [a0 b0 a1 b1].
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    expect(Array.from(permuteRows(w, 8, 1, 2))).toEqual([0, 2, 1, 3, 10, 12, 11, 13]);
  });
});

describe('export errors', () => {
  test('an output that is an input, an unknown dtype, a q8_0 adapter and a missing adapter are refused', () => {
    expectError(() => exportGguf({ model: DEFAULT, out: path.join(DEFAULT, 'model.gguf') }), LorakitError, 'ERR_IO', /overlaps --model/);
    expectError(() => exportGguf({ model: DEFAULT, out: path.join(work, 'x.gguf'), dtype: 'q4' as never }), LorakitTypeError, 'ERR_INVALID_ARG', /f32, f16, bf16 or q8_0, got "q4"/);
    expectError(() => exportGguf({ model: DEFAULT, out: path.join(work, 'x.gguf'), format: 'lora' }), LorakitTypeError, 'ERR_INVALID_ARG', /no 'adapter' was given/);
    expectError(() => exportGguf({ model: DEFAULT, adapter: DEFAULT, out: path.join(work, 'x.gguf'), format: 'lora', dtype: 'q8_0' }), LorakitTypeError, 'ERR_INVALID_ARG', /got dtype 'q8_0'/);
    expectError(() => exportGguf({ model: DEFAULT, out: work }), LorakitError, 'ERR_IO', /is a folder/);
    expect(fs.readdirSync(work).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  test('a tokenizer whose splitter llama.cpp does not reproduce is refused, naming it', () => {
    const dir = path.join(work, 'odd-tokenizer');
    fs.mkdirSync(dir);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer_config.json']) fs.copyFileSync(path.join(DEFAULT, f), path.join(dir, f));
    const tok = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'tokenizer.json'), 'utf8'));
    tok.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Isolated', invert: false }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }] };
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
    expectError(() => exportGguf({ model: dir, out: path.join(work, 'odd.gguf') }), LorakitError, 'ERR_TOKENIZER', /pre_tokenizer .*Split.* is not one llama.cpp reproduces/);
    expect(fs.existsSync(path.join(work, 'odd.gguf'))).toBe(false);
  });
});

test('a SentencePiece-style vocabulary llama.cpp would tokenize differently is refused, naming why', () => {
  const dir = path.join(work, 'spm-bad');
  saveSpmModel(dir, {
    model_type: 'llama', hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
    max_position_embeddings: 64, tie_word_embeddings: true, hidden_act: 'silu',
  });
  const file = path.join(dir, 'tokenizer.json');
  const good = fs.readFileSync(file, 'utf8');
  const out = path.join(work, 'spm-bad.gguf');
  const edit = (f: (t: { model: { vocab: Record<string, number>; merges: string[][] }; normalizer: unknown }) => void) => {
    const t = JSON.parse(good);
    f(t);
    fs.writeFileSync(file, JSON.stringify(t));
  };
  // A merge dropped: llama.cpp would still join the two tokens.
  edit((t) => t.model.merges.splice(t.model.merges.findIndex(([a, b]) => a === 'o' && b === 'r'), 1));
  expectError(() => exportGguf({ model: dir, out }), LorakitError, 'ERR_TOKENIZER', /token "or" splits into tokens "o" and "r", which no merge joins/);
  // A byte token missing: llama.cpp has no way to write that byte.
  edit((t) => {
    const id = t.model.vocab['<0x41>']!;
    delete t.model.vocab['<0x41>'];
    t.model.vocab['<extra>'] = id;
  });
  expectError(() => exportGguf({ model: dir, out }), LorakitError, 'ERR_TOKENIZER', /needs the 256 tokens <0x00>..<0xFF>, and 1 are missing \(<0x41>/);
  // A normalizer step llama.cpp does not apply.
  edit((t) => (t.normalizer = { type: 'Sequence', normalizers: [{ type: 'Lowercase' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] }));
  expectError(() => exportGguf({ model: dir, out }), LorakitError, 'ERR_TOKENIZER', /normalizer step \{"type":"Lowercase"\} is not reproduced/);
  expect(fs.existsSync(out)).toBe(false);
});

test('QLoRA merged into the NF4 base (qlora read from the training record): the file holds dequantized NF4 + s·B·A requantized, and the merge error reported is that file\'s', () => {
  const adapter = path.join(work, 'qlora-adapter');
  {
    using m = loadModel(DEFAULT, { quantize: true });
    addAdapter(m, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false, seed: 11 });
    saveAdapter(m, adapter);
  }
  // The record a lorakit qlora run leaves in a checkpoint: export reads the method from it, as eval does.
  fs.writeFileSync(path.join(adapter, 'trainer_state.json'), JSON.stringify({ options: { method: 'qlora' } }));
  const out = path.join(work, 'qlora-nf4.gguf');
  const r = exportGguf({ model: DEFAULT, adapter, out, mergeInto: 'nf4' });
  expect(r.mergeError!.reference).toBe('the NF4 base with the adapter unmerged');
  const file = readGgufF32(out);
  using base = loadModel(DEFAULT);
  using adapted = loadModel(DEFAULT);
  loadAdapter(adapted, adapter);
  const c = base.config, scale = 8 / 4;
  const hf: Record<string, ReturnType<typeof tensor>> = {};
  const weights = base.exportWeights('float32');
  let adaptedSeen = 0;
  for (const [name, t] of Object.entries(weights)) {
    const gg = file.get(ggufName('llama', name))!;
    // Back to Hugging Face's row order on q and k.
    const heads = /q_proj/.test(name) ? c.numHeads : /k_proj/.test(name) ? c.numKvHeads : 0;
    const got = heads ? unpermute(gg.data, gg.shape[0]!, gg.shape[1]!, heads) : gg.data;
    hf[name] = tensor(got, gg.shape);
    if (!name.endsWith('_proj.weight')) {
      expect([name, Array.from(got)]).toEqual([name, Array.from(t.toFloat32Array())]);
      t.dispose();
      continue;
    }
    // The NF4 base lorakit's qlora trains against (block 64, double quantization), in float64 from here on.
    using q = nf4Quantize(t, { blockSize: 64, doubleQuant: true });
    using dq = nf4Dequantize(q, { dtype: 'float32' });
    t.dispose();
    const w0 = Float64Array.from(dq.toFloat32Array());
    const lin = adapted.linears.get(name.slice(0, -'.weight'.length))!;
    if (!lin.adapter) {
      expect([name, Array.from(got)]).toEqual([name, Array.from(dq.toFloat32Array())]);
      continue;
    }
    adaptedSeen++;
    const [rank, inF] = lin.adapter.loraA.shape as [number, number];
    const A = lin.adapter.loraA.toFloat32Array(), B = lin.adapter.loraB.toFloat32Array(), outF = B.length / rank;
    const ref = new Float64Array(w0.length);
    for (let o = 0; o < outF; o++)
      for (let i = 0; i < inF; i++) {
        let acc = 0;
        for (let k = 0; k < rank; k++) acc += B[o * rank + k]! * A[k * inF + i]!;
        ref[o * inF + i] = w0[o * inF + i]! + scale * acc;
      }
    // What was written is that sum quantized to NF4 again: within each block's code spacing of it, and not the sum itself.
    using again = nf4Quantize(tensor(Float32Array.from(ref), [outF, inF]), { blockSize: 64, doubleQuant: true });
    using back = nf4Dequantize(again, { dtype: 'float32' });
    const rel = (x: ArrayLike<number>, y: ArrayLike<number>) => {
      let n = 0, d = 0;
      for (let i = 0; i < x.length; i++) (n += (x[i]! - y[i]!) ** 2), (d += y[i]! ** 2);
      return Math.sqrt(n / d);
    };
    expect([name, rel(got, back.toFloat32Array()) < 1e-4]).toEqual([name, true]);
    const lossy = rel(got, ref);
    expect([name, lossy > 1e-3 && lossy < 0.2]).toEqual([name, true]);
  }
  expect(adaptedSeen).toBe(2 * c.numLayers);
  // The logits of the written weights against the NF4 model with the adapter unmerged, on the batch lorakit
  // merge uses without --data (its fixed generator, restated here).
  const dir = path.join(work, 'qlora-written');
  fs.mkdirSync(dir);
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(DEFAULT, f), path.join(dir, f));
  writeSafetensors(path.join(dir, 'model.safetensors'), hf, { format: 'pt' });
  for (const t of Object.values(hf)) t.dispose();
  const seq = Math.min(64, c.maxPositions);
  let st = 12345;
  using probe = tensor(BigInt64Array.from({ length: 2 * seq }, () => BigInt((st = (st * 1103515245 + 12345) % 2147483648) % c.vocabSize)), [2, seq]);
  using nf4 = loadModel(DEFAULT, { quantize: true });
  loadAdapter(nf4, adapter);
  using written = loadModel(dir);
  using l0 = nf4.forward(probe, { returnLogits: true }).logits!;
  using l1 = written.forward(probe, { returnLogits: true }).logits!;
  const x = l0.toFloat32Array(), y = l1.toFloat32Array();
  let n = 0, d = 0;
  for (let i = 0; i < x.length; i++) (n += (x[i]! - y[i]!) ** 2), (d += x[i]! ** 2);
  const ours = Math.sqrt(n / d);
  console.log(`QLoRA merged into NF4: reported relative logit error ${r.mergeError!.relative.toExponential(4)}, recomputed from the file ${ours.toExponential(4)}`);
  expect(Math.abs(ours - r.mergeError!.relative)).toBeLessThan(1e-3 * ours + 1e-7);
  expect(ours).toBeGreaterThan(1e-4);
}, 120_000);

test('the CLI: a QLoRA adapter merged into the NF4 base reports that choice\'s merge error; an input is never overwritten', () => {
  const adapter = path.join(work, 'cli-adapter');
  {
    using m = loadModel(DEFAULT);
    addAdapter(m, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false, seed: 5 });
    saveAdapter(m, adapter);
  }
  const cli = path.join(ROOT, 'dist', 'cli', 'index.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'export', ...args], { encoding: 'utf8' });
  const out = path.join(work, 'cli.gguf');
  const errs = (['original', 'nf4'] as const).map((into) => {
    const r = run('--model', DEFAULT, '--adapter', adapter, '--out', out, '--qlora', '--merge-into', into, '--dtype', 'q8_0');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/q8_0 weight error against float32, over every 2-D weight: relative \d/);
    return Number(/relative ([\d.e+-]+)\n/.exec(r.stdout.split('\n').find((l) => l.startsWith('merge error'))! + '\n')![1]);
  });
  // Merging into the NF4 base requantizes every adapted weight, so it cannot match the unmerged NF4 model exactly.
  expect(errs[1]).toBeGreaterThan(1e-4);
  const head = fs.readFileSync(out).subarray(0, 8);
  expect([head.toString('latin1', 0, 4), head.readUInt32LE(4)]).toEqual(['GGUF', 3]);
  const before = fs.readFileSync(path.join(adapter, 'adapter_model.safetensors'));
  const r = run('--model', DEFAULT, '--adapter', adapter, '--out', path.join(adapter, 'adapter_model.safetensors'), '--format', 'lora');
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/overlaps --adapter/);
  expect(fs.readFileSync(path.join(adapter, 'adapter_model.safetensors')).equals(before)).toBe(true);
}, 120_000);

runtime('in node-llama-cpp', () => {
  test('the shipped model: tokens, special ids and the greedy continuation equal lorakit\'s; q8_0 KL recorded', () => {
    const f32 = path.join(work, 'default-f32.gguf'), q8 = path.join(work, 'default-q8_0.gguf');
    exportGguf({ model: DEFAULT, out: f32 });
    const q = exportGguf({ model: DEFAULT, out: q8, dtype: 'q8_0' });
    expect(q.weightError!.relative).toBeLessThan(0.01);
    const tok = loadTokenizer(DEFAULT);
    const prompts = ['The red key', 'In the garden there is', 'Where is the'].map((s) => tok.encode(s));
    using model = loadModel(DEFAULT);
    const ours = prompts.map((p) => greedy(model, p, N));
    // Q8_0 against f32, both in llama.cpp, along lorakit's continuation of the first prompt.
    const seq = [...prompts[0]!, ...ours[0]!.tokens];
    const a = runLlama({ model: f32, tokenize: STRINGS, prompts, n: N, distributions: [seq] });
    expect(a.tokenize).toEqual(STRINGS.map((s) => tok.encode(s, { addSpecialTokens: false })));
    expect([a.bos, a.eos, a.addBos]).toEqual([tok.bosTokenId, tok.eosTokenId, true]);
    prompts.forEach((_, i) => expectSameContinuation(`default f32 prompt ${i}`, ours[i]!, a.continuations[i]!));
    const ref = a.distributions[0]!;
    const b = runLlama({ model: q8, prompts, n: N, distributions: [seq] });
    const kl = meanKL(ref, b.distributions[0]!);
    const same = b.continuations.map((c, i) => c.findIndex((t, j) => t !== a.continuations[i]![j]));
    console.log(`default model q8_0: weight error ${q.weightError!.relative.toExponential(3)} (relative), mean KL to f32 ${kl.toExponential(3)} nats over ${ref.length} positions, first differing continuation token per prompt ${JSON.stringify(same)} (-1: none)`);
    expect(kl).toBeLessThan(1e-2);
  }, 300_000);

  test('an rsLoRA adapter: merged export and the LoRA GGUF on the base give lorakit\'s continuation', () => {
    const adapter = path.join(work, 'adapter');
    {
      using m = loadModel(DEFAULT);
      addAdapter(m, { r: 8, loraAlpha: 16, useRslora: true, targetModules: 'all-linear', initLoraWeights: false, seed: 3 });
      saveAdapter(m, adapter);
    }
    const merged = path.join(work, 'merged.gguf'), base = path.join(work, 'base.gguf'), loraFile = path.join(work, 'adapter.gguf');
    const r = exportGguf({ model: DEFAULT, adapter, out: merged });
    expect(r.mergeError!.relative).toBeLessThan(1e-5);
    exportGguf({ model: DEFAULT, out: base });
    exportGguf({ model: DEFAULT, adapter, out: loraFile, format: 'lora' });
    const tok = loadTokenizer(DEFAULT);
    const prompts = ['The red key', 'Where is the'].map((s) => tok.encode(s));
    using model = loadModel(DEFAULT);
    loadAdapter(model, adapter);
    const ours = prompts.map((p) => greedy(model, p, N));
    using plain = loadModel(DEFAULT);
    const baseOnly = greedy(plain, prompts[0]!, N);
    // The adapter must matter, or the comparisons below would not test it.
    expect(ours[0]!.tokens).not.toEqual(baseOnly.tokens);
    const m = runLlama({ model: merged, prompts, n: N });
    const l = runLlama({ model: base, lora: loraFile, prompts, n: N });
    prompts.forEach((_, i) => {
      expectSameContinuation(`merged prompt ${i}`, ours[i]!, m.continuations[i]!);
      expectSameContinuation(`lora prompt ${i}`, ours[i]!, l.continuations[i]!);
    });
  }, 300_000);

  test('a Qwen2 fixture (q/k/v biases, Qwen2 splitter, chat special tokens, padded vocabulary), with a LoRA adapter merged and unmerged', () => {
    const dir = path.join(work, 'qwen2');
    const tok = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'tokenizer.json'), 'utf8'));
    tok.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    };
    tok.post_processor = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
    tok.added_tokens.push(
      { id: 1024, content: '<|im_start|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1025, content: '<|im_end|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    );
    const template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    const config = {
      model_type: 'qwen2', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
      vocab_size: 1030, max_position_embeddings: 256, tie_word_embeddings: false, rope_theta: 1000000, rms_norm_eps: 1e-6, hidden_act: 'silu',
      eos_token_id: 1025,
    };
    saveRandomModel(dir, config, {
      'tokenizer.json': tok,
      'tokenizer_config.json': { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', add_bos_token: false, chat_template: template },
    }, 0.2);
    const out = path.join(work, 'qwen2.gguf');
    const r = exportGguf({ model: dir, out });
    expect(r.architecture).toBe('qwen2');
    expect(r.notes.join()).toMatch(/4 embedding rows have no token/);
    const lk = loadTokenizer(dir);
    const strings = [...STRINGS, '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n'];
    const prompts = ['The red key', '<|im_start|>user\nWhere is the door?<|im_end|>\n<|im_start|>assistant\n'].map((s) => lk.encode(s));
    using model = loadModel(dir);
    const ours = prompts.map((p) => greedy(model, p, N));
    const a = runLlama({ model: out, tokenize: strings, prompts, n: N });
    expect(a.tokenize).toEqual(strings.map((s) => lk.encode(s, { addSpecialTokens: false })));
    expect([a.eos, a.addBos]).toEqual([1025, false]);
    prompts.forEach((_, i) => expectSameContinuation(`qwen2 prompt ${i}`, ours[i]!, a.continuations[i]!));
    checkAdapterInRuntime('qwen2', dir, out, prompts[1]!);
  }, 300_000);

  test('the SmolLM (digits apart) and Llama 3 (Split) splitters tokenize in llama.cpp as lorakit does', () => {
    const splitters: Record<string, unknown> = {
      smollm: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] },
      'llama-bpe': {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
        ],
      },
    };
    const strings = [...STRINGS, 'years 1999-2024: 3.14159 and 1,000,000 (x2)'];
    for (const [name, pre] of Object.entries(splitters)) {
      const dir = path.join(work, `pre-${name}`);
      fs.mkdirSync(dir);
      for (const f of ['config.json', 'model.safetensors', 'tokenizer_config.json']) fs.copyFileSync(path.join(DEFAULT, f), path.join(dir, f));
      const tok = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'tokenizer.json'), 'utf8'));
      tok.pre_tokenizer = pre;
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
      const out = path.join(work, `pre-${name}.gguf`);
      exportGguf({ model: dir, out });
      const lk = loadTokenizer(dir);
      const a = runLlama({ model: out, tokenize: strings });
      expect([name, a.tokenize]).toEqual([name, strings.map((s) => lk.encode(s, { addSpecialTokens: false }))]);
    }
  }, 120_000);

  test('a GPT-2 fixture (learned positions, Conv1D weights, tied head), with a LoRA adapter merged and unmerged', () => {
    const dir = path.join(work, 'gpt2');
    const tok = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'tokenizer.json'), 'utf8'));
    tok.post_processor = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: true };
    saveRandomModel(dir, { model_type: 'gpt2', n_layer: 2, n_embd: 64, n_head: 4, vocab_size: 1024, n_positions: 128, bos_token_id: 1023, eos_token_id: 1023 }, {
      'tokenizer.json': tok,
      'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: false },
    }, 0.2);
    const f16 = path.join(work, 'gpt2-f16.gguf'), bf16 = path.join(work, 'gpt2-bf16.gguf');
    expect(exportGguf({ model: dir, out: f16, dtype: 'f16' }).architecture).toBe('gpt2');
    exportGguf({ model: dir, out: bf16, dtype: 'bf16' });
    const f32 = path.join(work, 'gpt2-f32.gguf');
    exportGguf({ model: dir, out: f32 });
    const lk = loadTokenizer(dir);
    const prompts = ['The red key', 'Hello world, 123'].map((s) => lk.encode(s));
    using model = loadModel(dir);
    const ours = prompts.map((p) => greedy(model, p, N));
    const seq = [...prompts[0]!, ...ours[0]!.tokens];
    const a = runLlama({ model: f32, tokenize: STRINGS, prompts, n: N, distributions: [seq] });
    expect(a.tokenize).toEqual(STRINGS.map((s) => lk.encode(s, { addSpecialTokens: false })));
    prompts.forEach((_, i) => expectSameContinuation(`gpt2 prompt ${i}`, ours[i]!, a.continuations[i]!));
    // f16 and bf16 files: their distributions stay close to f32's (a wrongly encoded weight would not).
    const klHalf = meanKL(a.distributions[0]!, runLlama({ model: f16, distributions: [seq] }).distributions[0]!);
    const klBf16 = meanKL(a.distributions[0]!, runLlama({ model: bf16, distributions: [seq] }).distributions[0]!);
    console.log(`gpt2 fixture: mean KL to the f32 file, f16 ${klHalf.toExponential(3)}, bf16 ${klBf16.toExponential(3)} nats over ${seq.length} positions`);
    expect(klHalf).toBeLessThan(1e-3);
    expect(klBf16).toBeLessThan(1e-3);
    checkAdapterInRuntime('gpt2', dir, f32, prompts[0]!);
  }, 300_000);
  test('SentencePiece-style vocabulary (Llama 2 form): tokens with byte fallback, scores, types, chat template, continuation', () => {
    const dir = path.join(work, 'spm-llama');
    saveSpmModel(dir, {
      model_type: 'llama', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
      max_position_embeddings: 256, tie_word_embeddings: false, rope_theta: 10000, rms_norm_eps: 1e-5, hidden_act: 'silu',
    });
    const out = path.join(work, 'spm-llama.gguf');
    expect(exportGguf({ model: dir, out }).notes).toEqual([]);
    const lk = loadTokenizer(dir);
    const ids = SPM_STRINGS.map((s) => lk.encode(s, { addSpecialTokens: false }));
    // The strings reach the byte tokens, the unknown-free merges and the special tokens, or the test would not test them.
    expect(ids.flat().filter((t) => t >= 3 && t < 259).length).toBeGreaterThan(20);
    expect(ids[5]!.filter((t) => t === 1 || t === 2).length).toBe(4);
    const prompts = ['The red key', 'Where is the', 'naïve 日本'].map((s) => lk.encode(s));
    expect(prompts.every((p) => p[0] === 1)).toBe(true);
    using model = loadModel(dir);
    const ours = prompts.map((p) => greedy(model, p, N));
    const a = runLlama({ model: out, tokenize: SPM_STRINGS, prompts, n: N });
    expect(a.tokenize).toEqual(ids);
    expect([a.bos, a.eos, a.addBos]).toEqual([1, 2, true]);
    // The template as node-llama-cpp's own GGUF reader returns it, against tokenizer_config.json's.
    const template = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')).chat_template;
    expect(Buffer.from(a.chatTemplate!, 'utf8').equals(Buffer.from(template, 'utf8'))).toBe(true);
    prompts.forEach((_, i) => expectSameContinuation(`spm llama prompt ${i}`, ours[i]!, a.continuations[i]!));
    // The newer form transformers writes: no normalizer, a Metaspace pre-tokenizer, which adds no ▁ before
    // text that starts with a space ('first': nor after a special token) where llama.cpp always adds one.
    // The export says so; the rest agrees, and the said difference is real.
    for (const scheme of ['always', 'first'] as const) {
      const meta = path.join(work, `spm-metaspace-${scheme}`);
      fs.cpSync(dir, meta, { recursive: true });
      const t = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
      t.normalizer = null;
      t.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split: false };
      fs.writeFileSync(path.join(meta, 'tokenizer.json'), JSON.stringify(t));
      const metaOut = path.join(work, `spm-metaspace-${scheme}.gguf`);
      const notes = exportGguf({ model: meta, out: metaOut }).notes;
      expect(notes).toEqual([expect.stringMatching(scheme === 'first' ? /text that starts with a space or follows a special token tokenizes differently/ : /text that starts with a space tokenizes differently/)]);
      const mk = loadTokenizer(meta);
      const differs = scheme === 'first' ? /^\s|<\/?s>|<unk>/ : /^\s|(<\/?s>|<unk>)\s/;
      const strings = [...SPM_STRINGS, ' one leading space', 'a <s> b'];
      const got = runLlama({ model: metaOut, tokenize: strings }).tokenize;
      strings.forEach((x, i) => {
        const want = mk.encode(x, { addSpecialTokens: false });
        if (differs.test(x)) expect([scheme, x, got[i]]).not.toEqual([scheme, x, want]);
        else expect([scheme, x, got[i]]).toEqual([scheme, x, want]);
      });
    }
  }, 300_000);

  test('a Mistral config (SentencePiece vocabulary, one KV head, sliding window no shorter than the context) runs as lorakit\'s forward does', () => {
    const dir = path.join(work, 'mistral');
    saveSpmModel(dir, {
      model_type: 'mistral', hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 1,
      max_position_embeddings: 256, sliding_window: 4096, tie_word_embeddings: false, rope_theta: 1000000, rms_norm_eps: 1e-5, hidden_act: 'silu',
    });
    const out = path.join(work, 'mistral.gguf');
    expect(exportGguf({ model: dir, out }).architecture).toBe('llama');
    const lk = loadTokenizer(dir);
    const prompts = ['The red key', 'Hello world, 123'].map((s) => lk.encode(s));
    using model = loadModel(dir);
    const ours = prompts.map((p) => greedy(model, p, N));
    const a = runLlama({ model: out, prompts, n: N });
    prompts.forEach((_, i) => expectSameContinuation(`mistral prompt ${i}`, ours[i]!, a.continuations[i]!));
  }, 300_000);

  test('a SmolLM-shaped model (tied head, digit splitter) in f32 and q8_0, with the f16 fallback for rows not a multiple of 32', () => {
    const dir = path.join(work, 'smollm');
    const tok = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'tokenizer.json'), 'utf8'));
    tok.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] };
    // SmolLM-135M's proportions scaled down: 9 heads of 64/9 would not divide, so 3 heads of 32, 1 KV head, a
    // feed-forward width of 80 (not a multiple of Q8_0's 32: ffn_down falls back to f16), tied embeddings.
    saveRandomModel(dir, {
      model_type: 'llama', hidden_size: 96, intermediate_size: 80, num_hidden_layers: 3, num_attention_heads: 3, num_key_value_heads: 1,
      vocab_size: 1024, max_position_embeddings: 256, tie_word_embeddings: true, rope_theta: 10000, rms_norm_eps: 1e-5, hidden_act: 'silu', bos_token_id: 1023, eos_token_id: 1023,
    }, { 'tokenizer.json': tok, 'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: false } }, 0.2);
    const f32 = path.join(work, 'smollm-f32.gguf'), q8 = path.join(work, 'smollm-q8_0.gguf');
    exportGguf({ model: dir, out: f32 });
    const q = exportGguf({ model: dir, out: q8, dtype: 'q8_0' });
    expect(q.notes).toEqual([0, 1, 2].map((i) => `blk.${i}.ffn_down.weight: rows of 80 values are not a multiple of 32, written as f16`));
    const lk = loadTokenizer(dir);
    const prompts = ['The red key', 'years 1999-2024'].map((s) => lk.encode(s));
    using model = loadModel(dir);
    const ours = prompts.map((p) => greedy(model, p, N));
    const seq = [...prompts[0]!, ...ours[0]!.tokens];
    const a = runLlama({ model: f32, prompts, n: N, distributions: [seq] });
    prompts.forEach((_, i) => expectSameContinuation(`smollm prompt ${i}`, ours[i]!, a.continuations[i]!));
    const b = runLlama({ model: q8, distributions: [seq] });
    // ggml types as llama.cpp's reader sees them: Q8_0 (8) but f16 (1) for ffn_down; norms f32 (0).
    const types = b.tensorTypes;
    expect([types['blk.0.ffn_down.weight'], types['blk.0.ffn_up.weight'], types['blk.0.attn_q.weight'], types['token_embd.weight'], types['blk.0.attn_norm.weight']]).toEqual([1, 8, 8, 8, 0]);
    expect(types['output.weight']).toBeUndefined();
    // The reference: the same model with every 2-D weight replaced, in lorakit, by what its stored type decodes
    // to (Q8_0 round trip, or f16 for rows of 80), exported as f32.
    const refDir = path.join(work, 'smollm-decoded');
    fs.mkdirSync(refDir);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(dir, f), path.join(refDir, f));
    const weights = model.exportWeights('float32');
    const decoded = Object.fromEntries(Object.entries(weights).map(([name, t]) => {
      const x = t.toFloat32Array();
      const back = t.shape.length < 2 ? x : t.shape[1]! % 32 === 0 ? dequantizeQ8_0(quantizeQ8_0(x)) : x.map((v) => fromHalf(toHalf(v)));
      t.dispose();
      return [name, tensor(back, [...t.shape])];
    }));
    writeSafetensors(path.join(refDir, 'model.safetensors'), decoded, { format: 'pt' });
    for (const t of Object.values(decoded)) t.dispose();
    const refFile = path.join(work, 'smollm-decoded.gguf');
    exportGguf({ model: refDir, out: refFile });
    const c = runLlama({ model: refFile, distributions: [seq] });
    const kl = meanKL(a.distributions[0]!, b.distributions[0]!), klRef = meanKL(c.distributions[0]!, b.distributions[0]!);
    console.log(`smollm-shaped fixture q8_0 (ffn_down f16): weight error ${q.weightError!.relative.toExponential(3)}, mean KL to f32 ${kl.toExponential(3)}, to the decoded-weights f32 file ${klRef.toExponential(3)} nats over ${seq.length} positions`);
    // The file behaves as its decoded weights do (what is left is llama.cpp quantizing activations to Q8_0 in
    // its matmuls), much closer than to the f32 weights; a tensor encoded or typed wrongly would not.
    expect(klRef).toBeLessThan(kl / 2);
    expect(kl).toBeLessThan(5e-2);
  }, 300_000);
});
