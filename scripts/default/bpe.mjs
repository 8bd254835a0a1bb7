/**
 * A small byte-level BPE trainer for the default assets, and the tokenizer.json it writes (GPT-2's
 * layout: 256 byte tokens mapped to printable characters, merges ranked in the order learned, a
 * ByteLevel pre-tokenizer, post-processor and decoder).
 */

/** GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the rest move to U+0100 on. */
export function byteChars() {
  const printable = (b) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const chars = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCharCode(printable(b) ? b : next++);
  return chars;
}

// The pre-tokenizer's split (GPT-2's pattern, which the ByteLevel pre-tokenizer applies with use_regex).
const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** The pre-tokenized words of `text`, each as its byte characters. */
export function preTokenize(text, chars = byteChars()) {
  const out = [];
  for (const piece of text.match(SPLIT) ?? []) {
    let s = '';
    for (const b of Buffer.from(piece, 'utf8')) s += chars[b];
    out.push(s);
  }
  return out;
}

/**
 * Learns `numMerges` merges from `texts`: at each step the most frequent adjacent pair of symbols
 * inside a word is merged (ties broken by the pair's text, so the result is deterministic). Stops
 * early when no pair occurs twice.
 */
export function trainBpe(texts, numMerges) {
  const chars = byteChars();
  const counts = new Map();
  for (const t of texts) for (const w of preTokenize(t, chars)) counts.set(w, (counts.get(w) ?? 0) + 1);
  // Each distinct word as its current symbols, with its frequency.
  const words = [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([w, n]) => ({ syms: [...w], n }));
  const merges = [];
  while (merges.length < numMerges) {
    const pairs = new Map();
    for (const { syms, n } of words)
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = `${syms[i]} ${syms[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    let best = null, bestN = 1;
    for (const [key, n] of pairs) if (n > bestN || (n === bestN && best !== null && key < best)) [best, bestN] = [key, n];
    if (best === null) break;
    const [a, b] = best.split(' ');
    merges.push([a, b]);
    for (const w of words) {
      const s = w.syms;
      if (s.length < 2) continue;
      const out = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(s[i]);
      }
      w.syms = out;
    }
  }
  return merges;
}

/** tokenizer.json for the merges, with the special tokens numbered after them. */
export function tokenizerJson(merges, specialTokens) {
  const chars = byteChars();
  // GPT-2 numbers the byte tokens by their character's code point: printable bytes first, then the moved ones.
  const order = [...chars.keys()].sort((x, y) => chars[x].codePointAt(0) - chars[y].codePointAt(0));
  const vocab = {};
  order.forEach((b, id) => (vocab[chars[b]] = id));
  for (const [a, b] of merges) {
    if (vocab[a + b] !== undefined) throw new Error(`merge ${a} ${b} makes a token that exists`);
    vocab[a + b] = Object.keys(vocab).length;
  }
  const added = specialTokens.map((content, i) => ({
    id: Object.keys(vocab).length + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  }));
  for (const t of added) vocab[t.content] = t.id;
  const byteLevel = (prefix) => ({ type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel(false),
    post_processor: { ...byteLevel(false), trim_offsets: false },
    decoder: byteLevel(false),
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}
