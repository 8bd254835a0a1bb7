/**
 * Generated tokens to text, as it streams: each token yields the text that has become final, holding back
 * what a later token could still change (an unfinished UTF-8 character, a space that
 * clean_up_tokenization_spaces may yet remove) and what could be the start of a stop string. The text
 * ends right before the first stop string, which is not part of it (OpenAI's semantics).
 *
 * The text is always the tokenizer's decode of the generated ids (after the prompt's, when given), cut at
 * the first stop string; it is computed from a window of recent ids rather than all of them, so a long
 * generation does not decode its whole output once per token. Decoding a window and appending is exact where
 * the window starts at a clean boundary: after a complete character and with earlier ids as context (for
 * decoders that treat the first token differently, as SentencePiece's strips its leading space). That holds
 * for the decoders Hugging Face tokenizers use (byte-level, Metaspace, byte fallback, WordPiece, BPE suffixes,
 * and clean_up_tokenization_spaces, whose rewrites are held back until they cannot happen).
 */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { checkOptions, describe } from '../check';
import { type Tokenizer } from '../tokenizer/tokenizer';

export interface TextStreamOptions {
  /** Strings that end the text (none by default); the text stops right before the first to appear. */
  stop?: readonly string[];
  /** Leave special tokens (end of sequence, chat markers) out of the text; default true. */
  skipSpecialTokens?: boolean;
  /**
   * The ids before the first generated one. The text is then what the generated ids add to the prompt's
   * decoded text, which differs from decoding them alone where a decoder treats the first token differently
   * (SentencePiece's leading space). Only the last few ids are used.
   */
  prompt?: readonly number[];
}

/** Prompt ids kept as decoding context: enough for any decoder's look-back (a character's bytes, a leading space). */
const PROMPT_CONTEXT = 8;
/** Ids decoded past the window's base before the window moves up; bounds a token's decoding work. */
const WINDOW = 16;

/**
 * What clean_up_tokenization_spaces rewrites (transformers' and @huggingface/tokenizers' clean_up_tokenization:
 * ` .` to `.`, ` n't` to `n't`, and so on, applied one after another), with the longer texts that become one of
 * them after an earlier rewrite (` n ' t` turns into ` n't` once ` ' ` becomes `'`). A text ending in the start
 * of one of these may still lose a space, so that end is held back; with the cleanup off it only waits a token.
 */
const CLEANUP_PATTERNS = [' .', ' ?', ' !', ' ,', " ' ", " n't", " 'm", " 's", " 've", " 're", " n ' t", "  ' m", "  ' s", "  ' ve", "  ' re"];

/** The proper prefixes of a set of strings, for finding the longest end of a text that one of them could continue. */
class Prefixes {
  private readonly set = new Set<string>();
  private readonly longest: number;

  constructor(strings: readonly string[]) {
    let longest = 0;
    for (const s of strings) {
      for (let n = 1; n < s.length; n++) this.set.add(s.slice(0, n));
      longest = Math.max(longest, s.length - 1);
    }
    this.longest = longest;
  }

  /** The length of the longest suffix of text[from..end) that is a proper prefix of one of the strings (0 if none). */
  heldAt(text: string, from: number, end: number): number {
    for (let n = Math.min(this.longest, end - from); n > 0; n--) if (this.set.has(text.slice(end - n, end))) return n;
    return 0;
  }
}

const CLEANUP = new Prefixes(CLEANUP_PATTERNS);

/** One generation's tokens to text: push each generated id, then finish. */
export class TextStream {
  private readonly tokenizer: Tokenizer;
  private readonly stops: readonly string[];
  private readonly stopPrefixes: Prefixes;
  private readonly skipSpecialTokens: boolean;
  /** The ids from the window's context on (at first the prompt's last ids as context). */
  private readonly ids: number[];
  /** ids[pre..base) are the window's context; ids[base..] the ids whose text is still open. */
  private pre: number;
  private base: number;
  /** decode(ids[pre..base)): the window's decoded text starts with it. */
  private preText: string;
  /** The text of the generated ids before `base` (all of it final). */
  private baseText = '';
  private emitted = '';
  private stoppedAt = false;
  private finished = false;

  constructor(tokenizer: Tokenizer, options: TextStreamOptions = {}) {
    const op = 'TextStream';
    if (tokenizer === null || typeof tokenizer !== 'object' || typeof tokenizer.decode !== 'function')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'tokenizer' must be a Tokenizer, got ${describe(tokenizer)}`);
    const o = checkOptions<TextStreamOptions>(op, options) as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!['stop', 'skipSpecialTokens', 'prompt'].includes(k) && o[k] !== undefined)
        throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${k}' is not an option (stop, skipSpecialTokens, prompt)`);
    this.tokenizer = tokenizer;
    this.stops = checkStops(op, o.stop);
    this.stopPrefixes = new Prefixes(this.stops);
    if (o.skipSpecialTokens !== undefined && typeof o.skipSpecialTokens !== 'boolean')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'skipSpecialTokens' must be true or false, got ${describe(o.skipSpecialTokens)}`);
    this.skipSpecialTokens = o.skipSpecialTokens ?? true;
    const prompt = o.prompt === undefined ? [] : checkPrompt(op, o.prompt, tokenizer.vocabSize);
    this.ids = prompt.slice(-PROMPT_CONTEXT);
    this.pre = 0;
    this.base = this.ids.length;
    this.preText = this.decode(0, this.base);
  }

  /** The text so far: every delta returned, ending before the stop string when one was hit. */
  get text(): string {
    return this.emitted;
  }

  /** Whether a stop string was hit (by push, or by finish in the text it flushed). */
  get stopped(): boolean {
    return this.stoppedAt;
  }

  /**
   * Adds one generated token; returns the text that became final with it (possibly ''), and whether a stop
   * string was hit, after which the text is complete and further tokens are ignored.
   */
  push(id: number): { delta: string; stopped: boolean } {
    const op = 'TextStream.push';
    if (this.finished) throw new LorakitError('ERR_INVALID_ARG', `${op}: the stream was finished; a finished stream takes no more tokens`);
    if (this.stoppedAt) return { delta: '', stopped: true };
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= this.tokenizer.vocabSize)
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'id' must be a token id in [0, ${this.tokenizer.vocabSize}), got ${describe(id)}`);
    this.ids.push(id);
    const all = this.openText();

    // What a later token could still change is not final: a trailing run of U+FFFD (an unfinished character
    // decodes to it), and before that an end that clean_up_tokenization_spaces may rewrite.
    let stable = all.length;
    while (stable > this.emitted.length && all.charCodeAt(stable - 1) === 0xfffd) stable--;
    stable -= CLEANUP.heldAt(all, this.emitted.length, stable);
    if (stable === all.length && this.ids.length - this.base >= WINDOW) this.advance(all);
    return this.release(all, stable);
  }

  /** Ends the stream: everything held back becomes final (cut at a stop string, should one be in it). */
  finish(): string {
    if (this.finished || this.stoppedAt) {
      this.finished = true;
      return '';
    }
    this.finished = true;
    return this.release(this.ids.length > this.base ? this.openText() : this.baseText, null).delta;
  }

  /**
   * Emits what is final of `all` (the whole text so far): up to the first stop string in it, or else up to
   * `stable` less any end that could begin a stop string; `stable` null means all of it is final (the end).
   */
  private release(all: string, stable: number | null): { delta: string; stopped: boolean } {
    const from = this.emitted.length;
    // A stop string ends the text as soon as it appears, even in text not yet final: generation ends here, so
    // nothing can change it. An earlier one would have ended the stream, and any start of one in the emitted
    // text was held back, so the search starts where the emitted text ends; the earliest start wins.
    let cut = -1;
    for (const s of this.stops) {
      const at = all.indexOf(s, from);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) this.stoppedAt = true;
    // Held back against the stable text, which later text extends, rather than `all`, whose end may change.
    const upTo = cut >= 0 ? cut : stable === null ? all.length : stable - this.stopPrefixes.heldAt(all, from, stable);
    const delta = upTo > from ? all.slice(from, upTo) : '';
    this.emitted += delta;
    return { delta, stopped: this.stoppedAt };
  }

  /** The whole text so far: the final text before the window's base, then the window's text past its context. */
  private openText(): string {
    const window = this.decode(this.pre, this.ids.length);
    // A decoder that rewrites text before the base (none that lorakit loads does) cannot be streamed
    // exactly, since that text may have gone out already: the stream keeps to what it sent and goes on from
    // where the texts part.
    return this.baseText + window.slice(window.startsWith(this.preText) ? this.preText.length : commonPrefix(window, this.preText));
  }

  /**
   * Moves the window's base to the end, at a clean boundary (`all` ends in a complete character that no
   * cleanup can touch): the ids since the old base become the context. Context that decodes to nothing
   * (skipped special tokens) gives a decoder no hint of what came before, so then the old context stays.
   */
  private advance(all: string): void {
    const since = this.decode(this.base, this.ids.length);
    if (since !== '') {
      this.pre = this.base;
      this.preText = since;
    } else {
      this.preText = this.decode(this.pre, this.ids.length);
    }
    this.base = this.ids.length;
    this.baseText = all;
    // Ids before the context are never decoded again.
    this.ids.splice(0, this.pre);
    this.base -= this.pre;
    this.pre = 0;
  }

  private decode(from: number, to: number): string {
    return from === to ? '' : this.tokenizer.decode(this.ids.slice(from, to), { skipSpecialTokens: this.skipSpecialTokens });
  }
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

function checkStops(op: string, stop: unknown): readonly string[] {
  if (stop === undefined) return [];
  if (!Array.isArray(stop)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'stop' must be an array of strings, got ${describe(stop)}`);
  stop.forEach((s: unknown, i) => {
    if (typeof s !== 'string' || s === '')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'stop[${i}]' must be a non-empty string, got ${describe(s)}`);
    // Decoded text never holds half of a surrogate pair, so such a stop string could never match.
    if (/\p{Cs}/u.test(s)) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'stop[${i}]' has a lone UTF-16 surrogate, which no text can contain`);
  });
  return [...(stop as string[])];
}

function checkPrompt(op: string, prompt: unknown, vocabSize: number): number[] {
  if (!Array.isArray(prompt)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'prompt' must be an array of token ids, got ${describe(prompt)}`);
  prompt.forEach((id: unknown, i) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= vocabSize)
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'prompt[${i}]' must be a token id in [0, ${vocabSize}), got ${describe(id)}`);
  });
  return [...(prompt as number[])];
}
