/**
 * Sampling (lib/generate/sampling.ts) against references computed here in float64 from transformers'
 * definitions, and streaming text (lib/generate/text.ts) against the tokenizer's own decode of all the ids.
 *
 * The frequency checks are seeded, so they are deterministic, but their bounds are set as if they were not:
 * each token's count must lie within 5 standard deviations of its binomial mean (a chance of about 6e-7 per
 * token for a correct sampler), and the chi-square statistic within 5 standard deviations of its mean. A
 * sampler off by a few percent of probability fails them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../lib/errors';
import { loadTokenizer } from '../lib/tokenizer/hub';
import { type Tokenizer } from '../lib/tokenizer/tokenizer';
import { Sampler, Xoshiro128, checkSamplingOptions, type SamplingOptions } from '../lib/generate/sampling';
import { TextStream } from '../lib/generate/text';
import { byteLevelJson } from './helpers/tokenizers';
import { expectError } from './helpers/errors';
import { tempDirs } from './helpers/tmp';

// ---------------------------------------------------------------------------------------------------
// References

/** The distribution transformers samples from, in float64: penalty, temperature, top-k, top-p, softmax. */
function referenceProbs(logits: readonly number[], o: SamplingOptions, seen: readonly number[] = []): number[] {
  const r = checkSamplingOptions('reference', o);
  const seenSet = new Set(seen);
  // RepetitionPenaltyLogitsProcessor, on the float32 logits (the penalized value is a float32 too, as in torch).
  let x = logits.map((v, i) => {
    const f = Math.fround(v);
    return seenSet.has(i) ? Math.fround(f < 0 ? f * r.repetitionPenalty : f / r.repetitionPenalty) : f;
  });
  // TemperatureLogitsWarper.
  x = x.map((v) => v / r.temperature);
  // TopKLogitsWarper: below the k-th largest value becomes -inf (ties with it stay).
  if (r.topK > 0 && r.topK < x.length) {
    const kth = [...x].sort((a, b) => b - a)[r.topK - 1]!;
    x = x.map((v) => (v < kth ? -Infinity : v));
  }
  const softmax = (v: number[]): number[] => {
    const m = Math.max(...v);
    const e = v.map((u) => Math.exp(u - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((u) => u / z);
  };
  // TopPLogitsWarper: sort ascending, remove while the cumulative probability is <= 1 - p, keep the largest.
  if (r.topP < 1) {
    const p = softmax(x);
    const asc = p.map((_, i) => i).sort((a, b) => p[a]! - p[b]! || b - a);
    let cum = 0;
    asc.forEach((id, j) => {
      cum += p[id]!;
      if (cum <= 1 - r.topP && j < asc.length - 1) x[id] = -Infinity;
    });
  }
  return softmax(x);
}

function argmaxReference(v: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

function draw(sampler: Sampler, logits: Float32Array, n: number, seen: readonly number[] = []): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampler.next(logits, seen)]!++;
  return counts;
}

/** Every count within 5 sigma of its binomial mean, zero where the probability is zero, and chi-square within 5 sigma. */
function expectFrequencies(counts: readonly number[], probs: readonly number[]): void {
  const n = counts.reduce((a, b) => a + b, 0);
  let chi = 0, df = -1;
  const impossible: number[] = [];
  probs.forEach((p, i) => {
    const c = counts[i]!;
    if (p === 0) {
      if (c > 0) impossible.push(i);
      return;
    }
    const mean = n * p, sd = Math.sqrt(n * p * (1 - p));
    if (Math.abs(c - mean) > 5 * sd + 1) throw new Error(`token ${i}: ${c} draws of ${n}, expected ${mean.toFixed(1)} +- ${(5 * sd).toFixed(1)} (p = ${p})`);
    chi += (c - mean) ** 2 / mean;
    df++;
  });
  expect(impossible).toEqual([]); // tokens of probability zero that were drawn
  if (df > 0) expect(chi).toBeLessThan(df + 5 * Math.sqrt(2 * df));
}

/** A deterministic stream of test numbers (the sampler's own generator is under test elsewhere). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

// ---------------------------------------------------------------------------------------------------
// Sampling

describe('greedy', () => {
  test('is the argmax, the lowest id among ties, with and without a repetition penalty', () => {
    const rand = lcg(1);
    for (let trial = 0; trial < 40; trial++) {
      const v = Array.from({ length: 3000 }, () => Math.fround(Math.round((rand() * 20 - 10) * 4) / 4)); // many ties
      const logits = Float32Array.from(v);
      expect(new Sampler().next(logits)).toBe(argmaxReference(v));
      const seen = Array.from({ length: 50 }, () => Math.floor(rand() * v.length));
      const penalized = v.map((x, i) => (seen.includes(i) ? (x < 0 ? x * 1.3 : x / 1.3) : x));
      expect(new Sampler({ repetitionPenalty: 1.3 }).next(logits, seen)).toBe(argmaxReference(penalized));
    }
    const tied = Float32Array.from([1, 5, 2, 5, 5]);
    expect(new Sampler().next(tied)).toBe(1);
    expect(new Sampler({ temperature: 0, topK: 3, topP: 0.5 }).next(tied)).toBe(1);
  });

  test('is the default; a top-k or top-p filter alone turns sampling on at temperature 1', () => {
    expect(checkSamplingOptions('t', undefined)).toEqual({ temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1, seed: 0 });
    expect(checkSamplingOptions('t', { topK: 5 }).temperature).toBe(1);
    expect(checkSamplingOptions('t', { topP: 0.9 }).temperature).toBe(1);
    expect(checkSamplingOptions('t', { topP: 0.9, temperature: 0 }).temperature).toBe(0);
    expect(new Sampler({ topK: 2 }).greedy).toBe(false);
    expect(new Sampler({ repetitionPenalty: 1.2 }).greedy).toBe(true);
  });
});

describe('repetition penalty', () => {
  // Closed form: seen positive logits are divided by the penalty, seen negative ones multiplied; each seen
  // id once, however often it was seen.
  const logits = Float32Array.from([2, -2, 0.5, -0.5, 3, 1]);
  const seen = [0, 1, 1, 5, 0];
  const penalized = [1, -4, 0.5, -0.5, 3, 0.5];

  test('matches the closed form, for greedy and for the sampled distribution', () => {
    expect(new Sampler({ repetitionPenalty: 2 }).next(Float32Array.from([3, 2.9]), [0])).toBe(1); // 3 / 2 < 2.9
    expect(new Sampler({ repetitionPenalty: 2 }).next(Float32Array.from([-1, -1.5]), [0])).toBe(1); // -1 * 2 < -1.5
    expect(new Sampler({ repetitionPenalty: 0.5 }).next(Float32Array.from([1, 1.5]), [0])).toBe(0); // a penalty < 1 favours
    const z = penalized.reduce((a, v) => a + Math.exp(v), 0);
    const closed = penalized.map((v) => Math.exp(v) / z);
    const reference = referenceProbs([...logits], { temperature: 1, repetitionPenalty: 2 }, seen);
    closed.forEach((p, i) => expect(reference[i]).toBeCloseTo(p, 12));
    expectFrequencies(draw(new Sampler({ temperature: 1, repetitionPenalty: 2, seed: 3 }), logits, 20000, seen), closed);
  });

  test('reads seen ids from an array or a set alike, and leaves the logits alone', () => {
    const copy = logits.slice();
    const a = new Sampler({ temperature: 1, repetitionPenalty: 2, seed: 9 });
    const b = new Sampler({ temperature: 1, repetitionPenalty: 2, seed: 9 });
    for (let i = 0; i < 200; i++) expect(a.next(logits, seen)).toBe(b.next(logits, new Set(seen)));
    expect(logits).toEqual(copy);
  });
});

describe('the sampled distribution', () => {
  const rand = lcg(7);
  const small = Float32Array.from(Array.from({ length: 12 }, () => rand() * 6 - 3));
  const cases: SamplingOptions[] = [
    { temperature: 1 },
    { temperature: 0.5 },
    { temperature: 2.5 },
    { topK: 4 },
    { topK: 4, temperature: 0.7 },
    { topP: 0.8 },
    { topP: 0.6, temperature: 1.5 },
    { topK: 6, topP: 0.7 },
    { topK: 5, topP: 0.9, temperature: 0.8, repetitionPenalty: 1.5 },
  ];
  test.each(cases.map((c) => [JSON.stringify(c), c] as const))('%s matches transformers in float64', (_name, o) => {
    const seen = [0, 3, 7];
    const probs = referenceProbs([...small], o, seen);
    expectFrequencies(draw(new Sampler({ ...o, seed: 11 }), small, 20000, seen), probs);
  });

  test('top-k keeps exactly k tokens, and ties with the k-th as transformers does', () => {
    const v = Array.from({ length: 1000 }, (_, i) => Math.sin(i * 7.31) * 5); // distinct
    const counts = draw(new Sampler({ topK: 5, seed: 1 }), Float32Array.from(v), 20000);
    const top5 = [...v.keys()].sort((a, b) => v[b]! - v[a]!).slice(0, 5);
    expect(counts.flatMap((c, i) => (c > 0 ? [i] : [])).sort((a, b) => a - b)).toEqual([...top5].sort((a, b) => a - b));
    expectFrequencies(counts, referenceProbs(v, { topK: 5 }));
    const tied = draw(new Sampler({ topK: 2, seed: 1 }), Float32Array.from([3, 2, 2, 2, 1]), 20000);
    expectFrequencies(tied, referenceProbs([3, 2, 2, 2, 1], { topK: 2 }));
    expect(tied.slice(0, 4).every((c) => c > 0)).toBe(true);
  });

  test('top-p keeps the smallest set that reaches p, at least one token', () => {
    // Probabilities 1/2, 1/4, 1/8, 1/8 (up to rounding in exp).
    const quarters = Float32Array.from([Math.log(4), Math.log(2), 0, 0]);
    const support = (o: SamplingOptions): number[] => draw(new Sampler({ ...o, seed: 5 }), quarters, 4000).flatMap((c, i) => (c > 0 ? [i] : []));
    expect(support({ topP: 0.5 })).toEqual([0]); // reached exactly by the first token
    expect(support({ topP: 0.75 })).toEqual([0, 1]); // reached exactly by the second
    expect(support({ topP: 0.76 })).toEqual([0, 1, 2]); // the tie at 1/8 goes to the lower id
    expect(support({ topP: 1 })).toEqual([0, 1, 2, 3]);
    expect(support({ topP: 0.01 })).toEqual([0]);
    const dominant = Float32Array.from([12, 0, 0, 0, 0]);
    expect(draw(new Sampler({ topP: 0.9, temperature: 1, seed: 2 }), dominant, 1000)).toEqual([1000, 0, 0, 0, 0]);
    expectFrequencies(draw(new Sampler({ topP: 0.75, seed: 4 }), quarters, 20000), [2 / 3, 1 / 3, 0, 0]);
  });

  test('top-p over a large vocabulary (binned, not sorted) matches the reference', () => {
    // The small-vocabulary cases above take the same path and check the probabilities closely; here the
    // point is the support in a vocabulary of thousands, so fewer draws do (Math.exp is slow under jest).
    const r = lcg(3);
    const v = Array.from({ length: 8192 }, () => -14 + 4 * r());
    [9, 8.6, 8.1, 7.7, 7, 6.2, 5.5, 5].forEach((x, j) => (v[(j * 999 + 17) % v.length] = x));
    for (const o of [{ topP: 0.9 }, { topP: 0.97, temperature: 1.3 }] as SamplingOptions[]) {
      const probs = referenceProbs(v, o);
      expect(probs.filter((p) => p > 0).length).toBeGreaterThan(2);
      expectFrequencies(draw(new Sampler({ ...o, seed: 8 }), Float32Array.from(v), 1500), probs);
    }
    // A hundred tied tokens at the boundary: 51 of them reach 0.505, the lowest ids.
    const ties = new Float32Array(8192).fill(-30);
    const tiedIds = Array.from({ length: 100 }, (_, j) => 100 + j * 80);
    for (const id of tiedIds) ties[id] = 5;
    const kept = new Set(tiedIds.slice(0, 51));
    expectFrequencies(draw(new Sampler({ topP: 0.505, seed: 6 }), ties, 1500), [...ties].map((_, i) => (kept.has(i) ? 1 / 51 : 0)));
  });

  test('a banned token (-Infinity) is never drawn', () => {
    const v = Float32Array.from([0, -Infinity, 0, -Infinity]);
    for (const o of [{ temperature: 1 }, { topK: 3 }, { topP: 0.99 }] as SamplingOptions[]) {
      const c = draw(new Sampler({ ...o, seed: 1 }), v, 2000);
      expect(c[1]! + c[3]!).toBe(0);
    }
  });
});

describe('seeds', () => {
  const logits = Float32Array.from(Array.from({ length: 64 }, (_, i) => Math.cos(i)));
  const run = (o: SamplingOptions, n = 300): number[] => {
    const s = new Sampler(o);
    return Array.from({ length: n }, () => s.next(logits));
  };

  test('the same seed gives the same tokens; different seeds differ', () => {
    for (const o of [{ temperature: 1 }, { topK: 10 }, { topP: 0.8 }] as SamplingOptions[]) {
      expect(run({ ...o, seed: 42 })).toEqual(run({ ...o, seed: 42 }));
      expect(run({ ...o, seed: 42 })).not.toEqual(run({ ...o, seed: 43 }));
      expect(run({ ...o, seed: 0 })).not.toEqual(run({ ...o, seed: 2 ** 32 })); // the high bits count too
      expect(run({ ...o, seed: -1 })).not.toEqual(run({ ...o, seed: 1 }));
    }
  });

  test("a sequence's tokens do not depend on what is sampled beside it", () => {
    const alone = run({ temperature: 1, seed: 5 }, 100);
    const a = new Sampler({ temperature: 1, seed: 5 }), b = new Sampler({ temperature: 1, seed: 6 });
    const other = Float32Array.from(Array.from({ length: 999 }, (_, i) => Math.sin(i)));
    const interleaved: number[] = [];
    for (let i = 0; i < 100; i++) {
      b.next(other);
      interleaved.push(a.next(logits));
      b.next(other);
    }
    expect(interleaved).toEqual(alone);
  });

  test('xoshiro128** doubles are uniform on [0, 1)', () => {
    const g = new Xoshiro128(123);
    const bins = new Array<number>(10).fill(0);
    let outside = 0;
    for (let i = 0; i < 50000; i++) {
      const u = g.nextDouble();
      if (u >= 0 && u < 1) bins[Math.floor(u * 10)]!++;
      else outside++;
    }
    expect(outside).toBe(0);
    expectFrequencies(bins, new Array<number>(10).fill(0.1));
  });
});

describe('validation', () => {
  test.each([
    [{ temperature: -1 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'temperature' must be >= 0, got -1"],
    [{ temperature: NaN }, LorakitTypeError, 'ERR_INVALID_ARG', "'temperature' must be a finite number, got number NaN"],
    [{ temperature: '1' }, LorakitTypeError, 'ERR_INVALID_ARG', "'temperature' must be a finite number, got '1'"],
    [{ topP: 0 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'topP' must be in (0, 1], got 0"],
    [{ topP: 1.5 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'topP' must be in (0, 1], got 1.5"],
    [{ topP: NaN }, LorakitTypeError, 'ERR_INVALID_ARG', "'topP' must be a finite number"],
    [{ topK: 2.5 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'topK' must be an integer, got 2.5"],
    [{ topK: -1 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'topK' must be >= 0, got -1"],
    [{ repetitionPenalty: 0 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'repetitionPenalty' must be > 0, got 0"],
    [{ seed: 1.5 }, LorakitRangeError, 'ERR_OUT_OF_RANGE', "'seed' must be an integer, got 1.5"],
    [{ top_p: 0.9 }, LorakitTypeError, 'ERR_INVALID_ARG', "'top_p' is not a sampling option; did you mean 'topP'?"],
    [{ temprature: 1 }, LorakitTypeError, 'ERR_INVALID_ARG', "'temprature' is not a sampling option; did you mean 'temperature'?"],
    [[], LorakitTypeError, 'ERR_INVALID_ARG', 'sampling options must be an object, got an array of length 0'],
  ] as const)('%j', (o, type, code, message) => {
    expectError(() => checkSamplingOptions('generate', o), type, code, `generate: ${message}`);
    expectError(() => new Sampler(o as SamplingOptions), type, code, `Sampler: ${message}`);
  });

  test('logits must be a Float32Array of numbers that are finite or -Infinity', () => {
    const s = new Sampler({ temperature: 1, repetitionPenalty: 1.1 });
    expectError(() => s.next([1, 2] as unknown as Float32Array), LorakitTypeError, 'ERR_INVALID_ARG', "'logits' must be a Float32Array, got an array of length 2");
    expectError(() => s.next(new Float32Array(0)), LorakitRangeError, 'ERR_SHAPE', "'logits' is empty");
    expectError(() => s.next(Float32Array.from([0, 1, NaN])), LorakitRangeError, 'ERR_OUT_OF_RANGE', 'logits[2] is NaN');
    expectError(() => s.next(Float32Array.from([0, Infinity])), LorakitRangeError, 'ERR_OUT_OF_RANGE', 'logits[1] is +Infinity');
    expectError(() => s.next(Float32Array.from([-Infinity, -Infinity])), LorakitRangeError, 'ERR_OUT_OF_RANGE', 'every logit is -Infinity');
    expectError(() => s.next(Float32Array.from([0, 1]), [0, 2]), LorakitRangeError, 'ERR_OUT_OF_RANGE', 'seen token id number 2 is not in [0, 2)');
  });
});

// ---------------------------------------------------------------------------------------------------
// Streaming text

const newDir = tempDirs('lorakit-sampling-');

function tokenizerIn(files: Record<string, unknown>): Tokenizer {
  const dir = newDir();
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), JSON.stringify(content));
  return loadTokenizer(dir);
}

/** Mistral's layout in miniature: Metaspace with a prepended space, <0xNN> byte fallback, and a decoder that strips the first space. */
function sentencePieceTokenizer(): Tokenizer {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const chars = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', 'n', "'", 't', '.'];
  chars.forEach((c, i) => (vocab[c] = 259 + i));
  const merges: [string, string][] = [['▁', 'h'], ['e', 'l'], ['▁h', 'el'], ['l', 'o'], ['▁hel', 'lo'], ['▁', 'w'], ['o', 'r'], ['▁w', 'or']];
  merges.forEach(([a, b], i) => (vocab[a + b] = 259 + chars.length + i));
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return tokenizerIn({
    'tokenizer.json': {
      version: '1.0',
      added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      post_processor: null,
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
        fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges,
      },
    },
    'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', clean_up_tokenization_spaces: false },
  });
}

/** Pushes ids until a stop string is hit (then finish), or all of them and finish; returns what a caller sees. */
function stream(tok: Tokenizer, ids: readonly number[], options: ConstructorParameters<typeof TextStream>[1] = {}) {
  const s = new TextStream(tok, options);
  const deltas: string[] = [];
  let pushed = 0, stopped = false;
  for (const id of ids) {
    const r = s.push(id);
    pushed++;
    deltas.push(r.delta);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  const tail = s.finish();
  return { deltas, tail, joined: deltas.join('') + tail, text: s.text, pushed, stopped, streamStopped: s.stopped };
}

/**
 * What the stream must give: the decode of the ids pushed when the first stop string appears, cut before its
 * earliest occurrence, or else the decode of all of them. With a prompt, the text its ids add to the prompt's.
 */
function expected(tok: Tokenizer, ids: readonly number[], stop: readonly string[], skip = true, prompt: readonly number[] = []) {
  const promptText = tok.decode([...prompt], { skipSpecialTokens: skip });
  const textOf = (n: number): string => {
    const t = tok.decode([...prompt, ...ids.slice(0, n)], { skipSpecialTokens: skip });
    expect(t.startsWith(promptText)).toBe(true);
    return t.slice(promptText.length);
  };
  for (let n = 1; n <= ids.length; n++) {
    const t = textOf(n);
    const at = Math.min(...stop.map((s) => t.indexOf(s)).filter((i) => i >= 0));
    if (at !== Infinity) return { text: t.slice(0, at), pushed: n, stopped: true };
  }
  return { text: textOf(ids.length), pushed: ids.length, stopped: false };
}

describe('TextStream', () => {
  let tok: Tokenizer;
  beforeAll(() => {
    tok = loadTokenizer(path.join(__dirname, '../assets/default'));
  });
  const encode = (t: string): number[] => tok.encode(t, { addSpecialTokens: false });

  test('characters split over several tokens come out whole, never as U+FFFD', () => {
    const text = 'emoji 😀👍🏽 family 👨‍👩‍👧, CJK 日本語のテキスト, Crème brûlée';
    const ids = encode(text);
    // The test means something only if some token ends mid-character.
    expect(ids.some((id) => tok.decode([id]).includes('\uFFFD'))).toBe(true);
    const r = stream(tok, ids);
    for (const d of r.deltas) expect(d).not.toContain('\uFFFD');
    expect(r.joined).toBe(text);
    expect(r.text).toBe(text);
    expect(r.tail).toBe('');
  });

  test('a stop string across token boundaries ends the text right before it, at the token that completes it', () => {
    const ids = encode('hello world, the quick brown fox');
    for (const stop of [['o wor'], ['quick b'], ['fox'], ['d, t']]) {
      const r = stream(tok, ids, { stop });
      const want = expected(tok, ids, stop);
      expect(want.stopped).toBe(true);
      expect(r).toMatchObject({ joined: want.text, text: want.text, pushed: want.pushed, stopped: true, streamStopped: true, tail: '' });
      expect(r.joined).not.toContain(stop[0]!);
    }
    expect(stream(tok, ids, { stop: ['o wor'] }).text).toBe('hell');
  });

  test('a stop string at the very start gives empty text', () => {
    const ids = encode('hello world');
    const r = stream(tok, ids, { stop: ['he'] });
    expect(r).toMatchObject({ joined: '', text: '', stopped: true, pushed: expected(tok, ids, ['he']).pushed });
  });

  test('overlapping stop strings: the earliest occurrence wins', () => {
    const ids = encode('hello world');
    expect(stream(tok, ids, { stop: ['world', 'lo w'] }).text).toBe('hel');
    expect(stream(tok, ids, { stop: ['llo', 'll', 'l'] }).text).toBe('he');
    expect(stream(tok, ids, { stop: ['world', 'orld'] }).text).toBe('hello ');
  });

  test('what could begin a stop string is held back, and finish flushes it when none follows', () => {
    const ids = encode('hello world');
    const r = stream(tok, ids, { stop: ['worlds', 'xyz'] });
    expect(r).toMatchObject({ joined: 'hello world', text: 'hello world', stopped: false });
    expect(r.tail.length).toBeGreaterThan(0);
    expect(r.tail.endsWith('world')).toBe(true);
    // An unfinished last character is flushed as the decoder writes it.
    const cut = encode('ok 😀').slice(0, -1);
    const c = stream(tok, cut);
    expect(c.joined).toBe(tok.decode(cut, { skipSpecialTokens: true }));
    expect(c.tail).toContain('\uFFFD');
  });

  test('special tokens are skipped unless asked for', () => {
    const ids = [...encode('hi'), tok.eosTokenId!, ...encode(' there')];
    expect(stream(tok, ids).joined).toBe('hi there');
    expect(stream(tok, ids, { skipSpecialTokens: false }).joined).toBe('hi<|endoftext|> there');
  });

  test('with a prompt, the text is what the generated ids add to it (SentencePiece keeps the leading space)', () => {
    const spm = sentencePieceTokenizer();
    const prompt = spm.encode('hello', { addSpecialTokens: false });
    const gen = spm.encode('hello world', { addSpecialTokens: false }).slice(prompt.length);
    expect(spm.decode(gen)).toBe('world'); // alone, the decoder strips the space
    expect(stream(spm, gen).joined).toBe('world');
    expect(stream(spm, gen, { prompt }).joined).toBe(' world');
  });

  test('decodes a window of recent ids, not the whole output, per token', () => {
    const lengths: number[] = [];
    const counting: Tokenizer = Object.create(tok, {
      decode: { value: (ids: readonly number[], o?: { skipSpecialTokens?: boolean }) => (lengths.push(ids.length), tok.decode(ids, o)) },
    });
    const text = 'The quick brown fox jumps over the lazy dog. '.repeat(30);
    const ids = encode(text);
    expect(ids.length).toBeGreaterThan(300);
    expect(stream(counting, ids, { stop: ['never'] }).joined).toBe(text);
    expect(Math.max(...lengths)).toBeLessThan(40);
  });

  test('a decoder that rewrites text already sent cannot be followed exactly, but the stream stays self-consistent', () => {
    // Token 2 is a backspace: it takes back the character before it, which the stream may have sent.
    const backspace: Tokenizer = Object.create(tok, {
      vocabSize: { value: 3 },
      decode: { value: (ids: readonly number[]) => ids.reduce((t, id) => (id === 2 ? t.slice(0, -1) : t + 'ab'[id]), '') },
    });
    const rand = lcg(5);
    for (let trial = 0; trial < 30; trial++) {
      const r = stream(backspace, Array.from({ length: 70 }, () => Math.floor(rand() * 3)));
      expect(r.joined).toBe(r.text);
    }
  });

  describe('equals the decode of all ids, cut at the first stop string, on random token sequences', () => {
    const tokenizers: [string, () => Tokenizer][] = [
      ['the shipped byte-level BPE', () => tok],
      ['byte-level BPE with clean_up_tokenization_spaces', () => tokenizerIn({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { clean_up_tokenization_spaces: true } })],
      ['SentencePiece-style BPE with byte fallback', sentencePieceTokenizer],
    ];
    test.each(tokenizers)('%s', (_name, make) => {
      const t = make();
      const rand = lcg(_name.length);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      // Ids drawn from the whole vocabulary, and from the pieces clean-up rewrites (spaces, quotes, n't, '.').
      const pieces = [' ', '.', ',', '?', "'", 'n', 't', 'm', 's', 've', 're', ' n', " '", 'a', 'é', '😀', '日'].flatMap((p) => t.encode(p, { addSpecialTokens: false }));
      const prompts = [[], t.encode('Once upon a time', { addSpecialTokens: false }), t.encode('hello world', { addSpecialTokens: false })];
      for (let trial = 0; trial < 250; trial++) {
        const n = 1 + Math.floor(rand() * 60);
        const ids = Array.from({ length: n }, () => (rand() < 0.5 ? pick(pieces) : Math.floor(rand() * t.vocabSize)));
        const whole = t.decode(ids, { skipSpecialTokens: true });
        const stop: string[] = [];
        for (let k = Math.floor(rand() * 3); k > 0; k--) {
          const at = Math.floor(rand() * whole.length), len = 1 + Math.floor(rand() * 4);
          const s = rand() < 0.7 ? [...whole.slice(at)].slice(0, len).join('') : pick(['zz', ' .', "n't", '\n\n', 'é']);
          if (s !== '' && !/\p{Cs}/u.test(s)) stop.push(s);
        }
        const prompt = pick(prompts);
        const skip = rand() < 0.8;
        const r = stream(t, ids, { stop, prompt, skipSpecialTokens: skip });
        const want = expected(t, ids, stop, skip, prompt);
        const context = JSON.stringify({ ids, stop, prompt, skip });
        expect({ context, joined: r.joined, text: r.text, pushed: r.pushed, stopped: r.stopped }).toEqual({ context, ...want, joined: want.text });
      }
    });
  });

  test('validation', () => {
    expectError(() => new TextStream(null as unknown as Tokenizer), LorakitTypeError, 'ERR_INVALID_ARG', "TextStream: 'tokenizer' must be a Tokenizer, got null");
    expectError(() => new TextStream(tok, { stop: 'x' as unknown as string[] }), LorakitTypeError, 'ERR_INVALID_ARG', "'stop' must be an array of strings, got 'x'");
    expectError(() => new TextStream(tok, { stop: ['a', ''] }), LorakitTypeError, 'ERR_INVALID_ARG', "'stop[1]' must be a non-empty string, got ''");
    expectError(() => new TextStream(tok, { stop: ['\uD83D'] }), LorakitRangeError, 'ERR_OUT_OF_RANGE', "'stop[0]' has a lone UTF-16 surrogate");
    expectError(() => new TextStream(tok, { prompt: [1, 5000] }), LorakitRangeError, 'ERR_OUT_OF_RANGE', "'prompt[1]' must be a token id in [0, 1024), got number 5000");
    expectError(() => new TextStream(tok, { skipSpecialTokens: 1 as unknown as boolean }), LorakitTypeError, 'ERR_INVALID_ARG', "'skipSpecialTokens' must be true or false");
    expectError(() => new TextStream(tok, { stops: ['x'] } as never), LorakitTypeError, 'ERR_INVALID_ARG', "'stops' is not an option");
    const s = new TextStream(tok, { stop: ['e'] });
    expectError(() => s.push(-1), LorakitRangeError, 'ERR_OUT_OF_RANGE', "TextStream.push: 'id' must be a token id in [0, 1024), got number -1");
    expect(s.push(encode('h')[0]!)).toEqual({ delta: 'h', stopped: false });
    expect(s.push(encode('e')[0]!)).toEqual({ delta: '', stopped: true });
    expect(s.push(encode('y')[0]!)).toEqual({ delta: '', stopped: true }); // ignored after a stop
    expect(s.finish()).toBe('');
    expectError(() => s.push(1), LorakitError, 'ERR_INVALID_ARG', 'the stream was finished');
  });
});
