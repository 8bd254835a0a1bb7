/** tokenizer.json builders shared by the tests: GPT-2's byte-level BPE layout with a few hand-ranked merges. */

/** GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the rest move to U+0100 on. */
export function byteAlphabet(): string[] {
  const printable = (b: number): boolean => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const chars = new Array<string>(256);
  let next = 256;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCharCode(printable(b) ? b : next++);
  return chars;
}
export const BYTE_CHARS = byteAlphabet();

/** Base ids as GPT-2 numbers them: the printable bytes in byte order, then the moved ones. */
export function byteLevelBase(): Record<string, number> {
  const order = [...BYTE_CHARS.keys()].sort((a, b) => BYTE_CHARS[a]!.codePointAt(0)! - BYTE_CHARS[b]!.codePointAt(0)!);
  return Object.fromEntries(order.map((b, id) => [BYTE_CHARS[b]!, id]));
}

// Ranked as listed; each merge's token takes the next id from 256.
export const BYTE_MERGES: [string, string][] = [
  ['Ġ', 't'], // 256
  ['h', 'e'], // 257
  ['l', 'l'], // 258
  ['he', 'll'], // 259
  ['hell', 'o'], // 260
  ['Ġt', 'he'], // 261
  ['Ġ', 'w'], // 262
  ['o', 'r'], // 263
  ['Ġw', 'or'], // 264
  ['l', 'd'], // 265
  ['Ġwor', 'ld'], // 266
  ['1', '2'], // 267
  ['3', '4'], // 268
];
export const ENDOFTEXT = 269;
export const BEGIN = 270;
export const TOOL = 271; // added, but not special

export function byteLevelJson(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const vocab = byteLevelBase();
  BYTE_MERGES.forEach(([a, b], i) => (vocab[a + b] = 256 + i));
  const added = (id: number, content: string, special: boolean) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [added(ENDOFTEXT, '<|endoftext|>', true), added(BEGIN, '<|begin_of_text|>', true), added(TOOL, '<tool>', false)],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: BYTE_MERGES.map(([a, b]) => `${a} ${b}`),
    },
    ...overrides,
  };
}

