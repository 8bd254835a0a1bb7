import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ByteTokenizer, LorakitError, LorakitRangeError, LorakitTypeError, loadTokenizer, type Tokenizer } from '../lib';
import { BEGIN, ENDOFTEXT, TOOL, byteLevelJson } from './helpers/tokenizers';
import { expectError } from './helpers/errors';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-tokenizer-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let dirCount = 0;
/** A model folder holding `files`: objects are written as JSON, strings as they are. */
function modelDir(files: Record<string, unknown>): string {
  const dir = path.join(tmp, `model-${dirCount++}`);
  fs.mkdirSync(dir);
  for (const [name, content] of Object.entries(files))
    fs.writeFileSync(path.join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  return dir;
}

const ROUND_TRIP_TEXTS = [
  'hello the world!',
  'Crème brûlée, naïve café, Ærøskøbing',
  'emoji 😀👍🏽 and a family 👨‍👩‍👧',
  'tabs\tand  double   spaces\n\nnewlines \r\n trailing   ',
  '日本語のテキスト',
  '',
];

// ---------------------------------------------------------------------------------------------------
// Byte-level BPE, as GPT-2, Llama 3 and Qwen2 save it.

// Llama 3's layout: an Oniguruma split regex before a regex-free ByteLevel, and a bos template.
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
function llama3Json(): Record<string, unknown> {
  return byteLevelJson({
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [BEGIN], tokens: ['<|begin_of_text|>'] } },
        },
      ],
    },
    model: { ...(byteLevelJson().model as object), ignore_merges: true },
  });
}

const GPT2_CONFIG = { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>', model_max_length: 1024 };
const LLAMA3_CONFIG = {
  bos_token: '<|begin_of_text|>',
  eos_token: { content: '<|endoftext|>', lstrip: false, normalized: false, rstrip: false, single_word: false, __type: 'AddedToken' },
  chat_template: '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}',
  model_max_length: 1000000000000000019884624838656,
};

describe('byte-level BPE (GPT-2 layout)', () => {
  let tok: Tokenizer;
  beforeAll(() => {
    tok = loadTokenizer(modelDir({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': GPT2_CONFIG }));
  });

  test('base ids follow GPT-2 numbering', () => {
    // Known GPT-2 ids: '!' 0, 'h' 71, 'Ġ' (space) 220.
    expect(tok.tokenToId('!')).toBe(0);
    expect(tok.tokenToId('h')).toBe(71);
    expect(tok.tokenToId('Ġ')).toBe(220);
    expect(tok.tokenToId('Ġworld')).toBe(266);
    expect(tok.tokenToId('<|endoftext|>')).toBe(ENDOFTEXT);
    expect(tok.tokenToId('not a token')).toBeUndefined();
    expect(tok.vocabSize).toBe(272);
  });

  test('encodes by merge rank, worked by hand', () => {
    // 'hello': h e -> he, l l -> ll, he ll -> hell, hell o -> hello. ' the': Ġ t -> Ġt, h e -> he, Ġt he -> Ġthe.
    // ' world': Ġ w, o r, Ġw or, l d, Ġwor ld -> Ġworld. '!' is base id 0.
    expect(tok.encode('hello the world!')).toEqual([260, 261, 266, 0]);
    // h e l l s: he, ll, hell; nothing merges 'hell s'.
    expect(tok.encode('hells')).toEqual([259, 's'.charCodeAt(0) - 33]);
    // e l l: no 'e l' merge, so only 'l l' applies.
    expect(tok.encode('ell')).toEqual([68, 258]);
    // h o l d: only 'l d' applies.
    expect(tok.encode('hold')).toEqual([71, 78, 265]);
    // GPT-2's regex keeps the digits in one piece: 1 2 -> 12, then 3 4 -> 34.
    expect(tok.encode('12345')).toEqual([267, 268, 20]);
  });

  test('non-ASCII text goes through the UTF-8 bytes', () => {
    // é is C3 A9; both are printable bytes: A9 is the 103rd (94 + 169 - 161), C3 the 128th (94 + 12 + 195 - 174).
    expect(tok.encode('é')).toEqual([127, 102]);
    // A whitespace run: the regex splits 'a', ' ', ' b'; 'Ġ b' has no merge.
    expect(tok.encode('a  b')).toEqual([64, 220, 220, 65]);
  });

  test('decode round-trips ASCII, accents, emoji and whitespace runs', () => {
    for (const text of ROUND_TRIP_TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
  });

  test('added tokens are matched before the model', () => {
    expect(tok.encode('hello<|endoftext|> the')).toEqual([260, ENDOFTEXT, 261]);
    expect(tok.encode('<tool>hold')).toEqual([TOOL, 71, 78, 265]);
    const ids = tok.encode('<|endoftext|>hello<tool> world<|endoftext|>');
    expect(ids).toEqual([ENDOFTEXT, 260, TOOL, 266, ENDOFTEXT]);
    expect(tok.decode(ids)).toBe('<|endoftext|>hello<tool> world<|endoftext|>');
    // Only special tokens are skipped; '<tool>' is an added token but not special.
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('hello<tool> world');
  });

  test('special tokens and settings from tokenizer_config.json', () => {
    expect(tok.bosTokenId).toBe(ENDOFTEXT);
    expect(tok.eosTokenId).toBe(ENDOFTEXT);
    expect(tok.padTokenId).toBeNull();
    expect(tok.chatTemplate).toBeNull();
    expect(tok.modelMaxLength).toBe(1024);
    // GPT-2 adds no special tokens of its own.
    expect(tok.encode('hello')).toEqual([260]);
    expect(tok.encode('hello', { addSpecialTokens: false })).toEqual([260]);
  });

  test('decode keeps " ." as written (clean_up_tokenization_spaces is off unless the config turns it on)', () => {
    expect(tok.decode(tok.encode('a . b , c'))).toBe('a . b , c');
    const cleaning = loadTokenizer(modelDir({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { clean_up_tokenization_spaces: true } }));
    expect(cleaning.decode(cleaning.encode('a . b , c'))).toBe('a. b, c');
  });

  test('decode of nothing is the empty string', () => {
    expect(tok.encode('')).toEqual([]);
    expect(tok.decode([])).toBe('');
    expect(tok.decode([ENDOFTEXT], { skipSpecialTokens: true })).toBe('');
  });

  test('works without tokenizer_config.json', () => {
    const bare = loadTokenizer(modelDir({ 'tokenizer.json': byteLevelJson() }));
    expect(bare.encode('hello the world!')).toEqual([260, 261, 266, 0]);
    expect([bare.bosTokenId, bare.eosTokenId, bare.padTokenId, bare.chatTemplate, bare.modelMaxLength]).toEqual([null, null, null, null, null]);
  });
});

describe('byte-level BPE (Llama 3 layout)', () => {
  test('the split regex runs before ByteLevel, and the template adds bos', () => {
    const tok = loadTokenizer(modelDir({ 'tokenizer.json': llama3Json(), 'tokenizer_config.json': LLAMA3_CONFIG }));
    // Llama 3's regex splits digits in threes: '123' -> 12 3, '45' -> 4 5; GPT-2's would give 12 34 5.
    expect(tok.encode('12345', { addSpecialTokens: false })).toEqual([267, 18, 19, 20]);
    expect(tok.encode('hello the world!')).toEqual([BEGIN, 260, 261, 266, 0]);
    expect(tok.encode('hello the world!', { addSpecialTokens: false })).toEqual([260, 261, 266, 0]);
    expect(tok.bosTokenId).toBe(BEGIN);
    expect(tok.eosTokenId).toBe(ENDOFTEXT);
    expect(tok.chatTemplate).toBe(LLAMA3_CONFIG.chat_template);
    // transformers' int(1e30) stands for "no limit".
    expect(tok.modelMaxLength).toBeNull();
    for (const text of ROUND_TRIP_TEXTS) expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
    expect(tok.decode(tok.encode('hello'))).toBe('<|begin_of_text|>hello');
  });

  test('add_bos_token and add_eos_token in tokenizer_config.json override the template', () => {
    const noBos = loadTokenizer(modelDir({ 'tokenizer.json': llama3Json(), 'tokenizer_config.json': { ...LLAMA3_CONFIG, add_bos_token: false } }));
    expect(noBos.encode('hello')).toEqual([260]);
    // add_bos_token left out keeps the template's bos; add_eos_token appends eos.
    const withEos = loadTokenizer(modelDir({ 'tokenizer.json': llama3Json(), 'tokenizer_config.json': { ...LLAMA3_CONFIG, add_eos_token: true } }));
    expect(withEos.encode('hello')).toEqual([BEGIN, 260, ENDOFTEXT]);
    expect(withEos.encode('hello', { addSpecialTokens: false })).toEqual([260]);
  });

  test('chat_template.jinja is read before the config\'s template', () => {
    const jinja = '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}';
    const tok = loadTokenizer(modelDir({ 'tokenizer.json': llama3Json(), 'tokenizer_config.json': LLAMA3_CONFIG, 'chat_template.jinja': jinja }));
    expect(tok.chatTemplate).toBe(jinja);
    const named = loadTokenizer(modelDir({
      'tokenizer.json': llama3Json(),
      'tokenizer_config.json': { chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] },
    }));
    expect(named.chatTemplate).toBe('D');
  });
});

// ---------------------------------------------------------------------------------------------------
// SentencePiece-style BPE, as Llama 2 and Mistral save it: ▁ for spaces, <0xNN> tokens for other bytes.

const UNK = 0;
const BOS = 1;
const EOS = 2;
const byteId = (b: number): number => 3 + b;
const SP_CHARS = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd']; // 259..266
const SP_MERGES: [string, string][] = [
  ['▁', 'h'], // 267
  ['e', 'l'], // 268
  ['▁h', 'el'], // 269
  ['l', 'o'], // 270
  ['▁hel', 'lo'], // 271
  ['▁', 'w'], // 272
  ['o', 'r'], // 273
  ['▁w', 'or'], // 274
  ['l', 'd'], // 275
  ['▁wor', 'ld'], // 276
];
const sp = (token: string): number => 259 + SP_CHARS.indexOf(token);

/** Mistral's newer layout (a Metaspace pre-tokenizer), or with `legacy` Llama 2's (a Prepend/Replace normalizer). */
function sentencePieceJson(legacy = false): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': UNK, '<s>': BOS, '</s>': EOS };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = byteId(b);
  SP_CHARS.forEach((c, i) => (vocab[c] = 259 + i));
  SP_MERGES.forEach(([a, b], i) => (vocab[a + b] = 267 + i));
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    added_tokens: [special(UNK, '<unk>'), special(BOS, '<s>'), special(EOS, '</s>')],
    normalizer: legacy
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] }
      : null,
    pre_tokenizer: legacy ? null : { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [BOS], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: SP_MERGES.map(([a, b]) => [a, b]),
    },
  };
}

const LLAMA2_CONFIG = {
  add_bos_token: true,
  add_eos_token: false,
  bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
  eos_token: '</s>',
  unk_token: '<unk>',
  pad_token: null,
  legacy: false,
  clean_up_tokenization_spaces: false,
  model_max_length: 4096,
  chat_template: "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
};

describe('SentencePiece-style BPE (Llama 2 / Mistral)', () => {
  let tok: Tokenizer;
  beforeAll(() => {
    tok = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson(), 'tokenizer_config.json': LLAMA2_CONFIG }));
  });

  test('encodes by merge rank, with ▁ for spaces and bos from add_bos_token', () => {
    // '▁hello▁world': ▁ h, e l, ▁h el, l o, ▁hel lo -> ▁hello; ▁ w, o r, ▁w or, l d, ▁wor ld -> ▁world.
    expect(tok.encode('hello world')).toEqual([BOS, 271, 276]);
    expect(tok.encode('hello world', { addSpecialTokens: false })).toEqual([271, 276]);
    // ▁ ▁ w ...: no '▁ ▁' merge, so the second space stays a lone ▁.
    expect(tok.encode('hello  world', { addSpecialTokens: false })).toEqual([271, sp('▁'), 276]);
    // ▁ h, e l, ▁h el -> ▁hel: 'e l' outranks 'l d' and takes the l first, so d stays alone.
    expect(tok.encode('held', { addSpecialTokens: false })).toEqual([269, sp('d')]);
    expect(tok.bosTokenId).toBe(BOS);
    expect(tok.eosTokenId).toBe(EOS);
    expect(tok.padTokenId).toBeNull();
    expect(tok.modelMaxLength).toBe(4096);
    expect(tok.chatTemplate).toBe(LLAMA2_CONFIG.chat_template);
    expect(tok.vocabSize).toBe(277);
  });

  test('characters outside the vocabulary fall back to <0xNN> byte tokens', () => {
    // é is C3 A9; 😀 is F0 9F 98 80.
    expect(tok.encode('hé', { addSpecialTokens: false })).toEqual([267, byteId(0xc3), byteId(0xa9)]);
    expect(tok.encode('hello 😀', { addSpecialTokens: false })).toEqual([271, sp('▁'), byteId(0xf0), byteId(0x9f), byteId(0x98), byteId(0x80)]);
    expect(tok.tokenToId('<0x0A>')).toBe(byteId(10));
  });

  test('decode round-trips ASCII, accents, emoji and whitespace runs', () => {
    for (const text of ROUND_TRIP_TEXTS) {
      const ids = tok.encode(text);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text);
      expect(tok.decode(ids.slice(1))).toBe(text);
    }
    // As with Hugging Face's tokenizers, the space SentencePiece prepends is stripped again on decode, so one
    // leading space of the text is lost.
    expect(tok.encode(' hello', { addSpecialTokens: false })).toEqual([271]);
  });

  test('special tokens in the text map to their ids; the first section alone gets the ▁ prefix', () => {
    // After '<s>' the text is not at the start, so no ▁ is prepended: h, e l -> el, l o -> lo.
    expect(tok.encode('<s>hello</s>', { addSpecialTokens: false })).toEqual([BOS, sp('h'), 268, 270, EOS]);
    expect(tok.encode('hello</s>')).toEqual([BOS, 271, EOS]);
    expect(tok.decode([BOS, 271, 276, EOS])).toBe('<s> hello world</s>');
    expect(tok.decode([BOS, 271, 276, EOS], { skipSpecialTokens: true })).toBe('hello world');
  });

  test('add_eos_token appends eos', () => {
    const withEos = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson(), 'tokenizer_config.json': { ...LLAMA2_CONFIG, add_eos_token: true } }));
    expect(withEos.encode('hello world')).toEqual([BOS, 271, 276, EOS]);
    const neither = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson(), 'tokenizer_config.json': { ...LLAMA2_CONFIG, add_bos_token: false } }));
    expect(neither.encode('hello world')).toEqual([271, 276]);
  });

  test("Llama 2's legacy layout prepends ▁ after special tokens too", () => {
    const legacy = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson(true), 'tokenizer_config.json': { ...LLAMA2_CONFIG, legacy: true } }));
    expect(legacy.encode('hello world')).toEqual([BOS, 271, 276]);
    expect(legacy.encode('<s>hello', { addSpecialTokens: false })).toEqual([BOS, 271]);
    for (const text of ROUND_TRIP_TEXTS) expect(legacy.decode(legacy.encode(text), { skipSpecialTokens: true })).toBe(text);
  });

  test('without tokenizer_config.json the template in tokenizer.json adds bos', () => {
    const bare = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson() }));
    expect(bare.encode('hello world')).toEqual([BOS, 271, 276]);
    expect(bare.bosTokenId).toBeNull();
  });
});

describe('other model types', () => {
  test('a WordPiece tokenizer loads and encodes', () => {
    const vocab = { '[UNK]': 0, '[CLS]': 1, '[SEP]': 2, un: 3, '##aff': 4, '##able': 5, hello: 6 };
    const tok = loadTokenizer(modelDir({
      'tokenizer.json': {
        added_tokens: [],
        normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
        pre_tokenizer: { type: 'BertPreTokenizer' },
        post_processor: null,
        decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
        model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
      },
    }));
    expect(tok.encode('Unaffable hello xyz')).toEqual([3, 4, 5, 6, 0]);
    expect(tok.decode([3, 4, 5, 6])).toBe('unaffable hello');
  });
});

// ---------------------------------------------------------------------------------------------------

describe('ByteTokenizer', () => {
  test('ids are the UTF-8 bytes', () => {
    const tok = new ByteTokenizer();
    expect(tok.encode('hé😀')).toEqual([0x68, 0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80]);
    expect(tok.vocabSize).toBe(256);
    expect([tok.bosTokenId, tok.eosTokenId, tok.padTokenId, tok.chatTemplate, tok.modelMaxLength]).toEqual([null, null, null, null, null]);
    expect(tok.tokenToId('<0x41>')).toBe(65);
    expect(tok.tokenToId('<s>')).toBeUndefined();
    expect(tok.tokenToId('A')).toBeUndefined();
  });

  test('decode is lossless', () => {
    const tok = new ByteTokenizer({ bos: true, eos: true });
    const texts = [...ROUND_TRIP_TEXTS, '<s></s> look like specials but are text', '\u0000\u007f\u00ad\uffff', '\ufeff leading byte-order mark'];
    for (const text of texts) {
      expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
      expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
    }
  });

  test('bos and eos follow the bytes', () => {
    const tok = new ByteTokenizer({ bos: true, eos: true });
    expect([tok.bosTokenId, tok.eosTokenId, tok.vocabSize]).toEqual([256, 257, 258]);
    expect(tok.encode('hi')).toEqual([256, 0x68, 0x69]);
    expect(tok.encode('hi', { addSpecialTokens: false })).toEqual([0x68, 0x69]);
    expect(tok.decode([256, 0x68, 0x69, 257])).toBe('<s>hi</s>');
    expect(tok.decode([256, 0x68, 0x69, 257], { skipSpecialTokens: true })).toBe('hi');
    expect(tok.tokenToId('</s>')).toBe(257);
    const eosOnly = new ByteTokenizer({ eos: true });
    expect([eosOnly.bosTokenId, eosOnly.eosTokenId]).toEqual([null, 256]);
    expect(eosOnly.encode('a')).toEqual([0x61]);
  });

  test('bytes cut mid-character decode to U+FFFD', () => {
    expect(new ByteTokenizer().decode([0x68, 0xc3])).toBe('h\ufffd');
  });

  test('bad arguments', () => {
    const tok = new ByteTokenizer();
    expectError(() => tok.decode([256]), LorakitRangeError, 'ERR_OUT_OF_RANGE', "ByteTokenizer.decode: 'ids[0]' is 256", /vocabulary of 256/);
    expectError(() => tok.decode([1.5]), LorakitTypeError, 'ERR_INVALID_ARG', "'ids[0]' must be an integer token id, got number 1.5");
    expectError(() => tok.encode(42 as unknown as string), LorakitTypeError, 'ERR_INVALID_ARG', "ByteTokenizer.encode: 'text' must be a string, got number 42");
    expectError(() => new ByteTokenizer({ bos: 'yes' as unknown as boolean }), LorakitTypeError, 'ERR_INVALID_ARG', "option 'bos' must be true or false");
  });
});

// ---------------------------------------------------------------------------------------------------

describe('loadTokenizer errors', () => {
  test('a folder without tokenizer.json points at ByteTokenizer', () => {
    const dir = modelDir({ 'config.json': {} });
    expectError(() => loadTokenizer(dir), LorakitError, 'ERR_IO', `'${dir}' has no tokenizer.json`, /ByteTokenizer/);
    const slow = modelDir({ 'vocab.json': {}, 'merges.txt': '' });
    expectError(() => loadTokenizer(slow), LorakitError, 'ERR_IO', /it has vocab\.json and merges\.txt, which lorakit does not read/, /save_pretrained/);
  });

  test('a missing folder, or a file for a folder', () => {
    const missing = path.join(tmp, 'no-such-model');
    expectError(() => loadTokenizer(missing), LorakitError, 'ERR_IO', `loadTokenizer: cannot read '${missing}'`, /ENOENT/);
    const dir = modelDir({ 'tokenizer.json': byteLevelJson() });
    const file = path.join(dir, 'tokenizer.json');
    expectError(() => loadTokenizer(file), LorakitError, 'ERR_IO', `'${file}' is not a folder`);
    expectError(() => loadTokenizer('' as string), LorakitTypeError, 'ERR_INVALID_ARG', 'dir must be a non-empty string');
  });

  test('malformed JSON names the file', () => {
    const dir = modelDir({ 'tokenizer.json': '{"model": ' });
    expectError(() => loadTokenizer(dir), LorakitError, 'ERR_TOKENIZER', `'${path.join(dir, 'tokenizer.json')}' is not valid JSON`);
    const badConfig = modelDir({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': '[1,' });
    expectError(() => loadTokenizer(badConfig), LorakitError, 'ERR_TOKENIZER', `'${path.join(badConfig, 'tokenizer_config.json')}' is not valid JSON`);
    const array = modelDir({ 'tokenizer.json': [] });
    expectError(() => loadTokenizer(array), LorakitError, 'ERR_TOKENIZER', 'tokenizer.json', 'expected a JSON object, got []');
  });

  test('unsupported or broken models name the file and what was found', () => {
    const file = (dir: string) => path.join(dir, 'tokenizer.json');
    const wordLevel = modelDir({ 'tokenizer.json': byteLevelJson({ model: { type: 'WordLevel', vocab: {}, unk_token: '[UNK]' } }) });
    expectError(() => loadTokenizer(wordLevel), LorakitError, 'ERR_TOKENIZER', `'${file(wordLevel)}': model.type is "WordLevel"`, /BPE, WordPiece, Unigram/);
    const noMerges = modelDir({ 'tokenizer.json': byteLevelJson({ model: { type: 'BPE', vocab: {} } }) });
    expectError(() => loadTokenizer(noMerges), LorakitTypeError, 'ERR_TOKENIZER', "'model.merges' must be an array, got nothing");
    const noModel = modelDir({ 'tokenizer.json': { added_tokens: [] } });
    expectError(() => loadTokenizer(noModel), LorakitTypeError, 'ERR_TOKENIZER', "'model' must be an object, got nothing");
    const badAdded = modelDir({ 'tokenizer.json': byteLevelJson({ added_tokens: [{ id: -1, content: 'x' }] }) });
    expectError(() => loadTokenizer(badAdded), LorakitTypeError, 'ERR_TOKENIZER', "'added_tokens[0]' must be an object with a string 'content'");
    // Settings the library would read differently from Hugging Face's Rust tokenizers are refused.
    const merged = modelDir({ 'tokenizer.json': byteLevelJson({
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithNext', invert: false }] },
    }) });
    expectError(() => loadTokenizer(merged), LorakitError, 'ERR_TOKENIZER', `'${file(merged)}': pre_tokenizer.pretokenizers[0] is a Split with behavior "MergedWithNext"`);
    const splitting = sentencePieceJson();
    (splitting.pre_tokenizer as Record<string, unknown>).split = true;
    // No token spans a ▁, so splitting at them changes nothing.
    expect(loadTokenizer(modelDir({ 'tokenizer.json': splitting })).encode('hello world')).toEqual([BOS, 271, 276]);
    (splitting.model as { vocab: Record<string, number> }).vocab['o▁'] = 277;
    const spanning = modelDir({ 'tokenizer.json': splitting });
    expectError(() => loadTokenizer(spanning), LorakitError, 'ERR_TOKENIZER', /pre_tokenizer is a Metaspace that splits words at "▁"/, /"o▁"/);
    const unknownStep = modelDir({ 'tokenizer.json': byteLevelJson({ pre_tokenizer: { type: 'Telepathy' } }) });
    expectError(() => loadTokenizer(unknownStep), LorakitError, 'ERR_TOKENIZER', `'${file(unknownStep)}': cannot be loaded`, /Telepathy/);
  });

  test('inconsistent tokenizer_config.json names the file and the key', () => {
    const config = (dir: string) => path.join(dir, 'tokenizer_config.json');
    const json = sentencePieceJson();
    const unknownBos = modelDir({ 'tokenizer.json': json, 'tokenizer_config.json': { bos_token: '<bos>' } });
    expectError(() => loadTokenizer(unknownBos), LorakitError, 'ERR_TOKENIZER', `'${config(unknownBos)}': bos_token "<bos>" is not a token of`);
    const noBos = modelDir({ 'tokenizer.json': json, 'tokenizer_config.json': { add_bos_token: true } });
    expectError(() => loadTokenizer(noBos), LorakitError, 'ERR_TOKENIZER', "'add_bos_token' is true but no 'bos_token' is set");
    const badFlag = modelDir({ 'tokenizer.json': json, 'tokenizer_config.json': { add_eos_token: 'yes' } });
    expectError(() => loadTokenizer(badFlag), LorakitTypeError, 'ERR_TOKENIZER', `'${config(badFlag)}': 'add_eos_token' must be true or false, got "yes"`);
    const badToken = modelDir({ 'tokenizer.json': json, 'tokenizer_config.json': { eos_token: 7 } });
    expectError(() => loadTokenizer(badToken), LorakitTypeError, 'ERR_TOKENIZER', "'eos_token' must be a string, an object with a string 'content', or null, got 7");
    const badLength = modelDir({ 'tokenizer.json': json, 'tokenizer_config.json': { model_max_length: -3 } });
    expectError(() => loadTokenizer(badLength), LorakitRangeError, 'ERR_TOKENIZER', "'model_max_length' must be an integer >= 1, got -3");
  });

  test('a token missing from the vocabulary is an error, not an undefined id', () => {
    const json = sentencePieceJson();
    Object.assign(json.model as object, { byte_fallback: false, unk_token: '<missing>' });
    const tok = loadTokenizer(modelDir({ 'tokenizer.json': json }));
    expect(tok.encode('hello')).toEqual([BOS, 271]);
    expectError(() => tok.encode('hello!'), LorakitError, 'ERR_TOKENIZER', /Tokenizer\.encode: the tokenizer of '.*tokenizer\.json' made a token that is not in its vocabulary/);
  });

  test('encode and decode check their arguments', () => {
    const tok = loadTokenizer(modelDir({ 'tokenizer.json': sentencePieceJson() }));
    expectError(() => tok.decode([277]), LorakitRangeError, 'ERR_OUT_OF_RANGE', "Tokenizer.decode: 'ids[0]' is 277, which is not a token id of this tokenizer (vocabulary of 277)");
    expectError(() => tok.decode([1, -1]), LorakitRangeError, 'ERR_OUT_OF_RANGE', "'ids[1]' is -1");
    expectError(() => tok.decode('1 2' as unknown as number[]), LorakitTypeError, 'ERR_INVALID_ARG', "'ids' must be an array of token ids, got '1 2'");
    expectError(() => tok.encode(null as unknown as string), LorakitTypeError, 'ERR_INVALID_ARG', "Tokenizer.encode: 'text' must be a string, got null");
    expectError(() => tok.encode('a', { addSpecialTokens: 1 as unknown as boolean }), LorakitTypeError, 'ERR_INVALID_ARG', "option 'addSpecialTokens' must be true or false, got number 1");
    expectError(() => tok.decode([1], 'skip' as unknown as object), LorakitTypeError, 'ERR_INVALID_ARG', 'options must be an object');
  });
});
