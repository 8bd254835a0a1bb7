/**
 * Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k, top-p and a
 * repetition penalty, each as Hugging Face transformers' logits processors define it, applied in their order
 * (repetition penalty, temperature, top-k, top-p), then a draw from the softmax of what is kept.
 *
 * Every Sampler owns one seeded random stream and takes exactly one draw from it per sampled token, so a
 * request's tokens depend only on its seed and its logits: not on the batch it ran in, nor on other requests.
 */
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { checkNumber, describe } from '../check';
import { nearestName } from '../suggest';

export interface SamplingOptions {
  /**
   * Divides the logits before the softmax; >= 0. 0 is greedy: the most likely token (after the repetition
   * penalty), the lowest id among ties, and topK/topP do not apply. Default: 0 (greedy) when neither topK nor
   * topP is given, 1 when either is (asking for a filter asks for sampling).
   */
  temperature?: number;
  /** Keeps the k most likely tokens (and any tied with the k-th, as transformers does); an integer >= 0, 0 = off (default). */
  topK?: number;
  /**
   * Keeps the smallest set of most likely tokens whose probabilities sum to at least p (always at least one;
   * among equal probabilities the lower ids come first); in (0, 1], 1 = off (default). Applied after topK,
   * to the probabilities of the tokens topK kept.
   */
  topP?: number;
  /**
   * > 0, 1 = off (default). Every token id already seen (prompt and generated) has its logit divided by the
   * penalty when positive and multiplied by it when negative (transformers' RepetitionPenaltyLogitsProcessor).
   */
  repetitionPenalty?: number;
  /** A safe integer; the same seed and the same logits give the same tokens. Default 0. */
  seed?: number;
}

export type ResolvedSampling = Required<SamplingOptions>;

/** The option names, for callers that split a larger options object. */
export const SAMPLING_OPTION_KEYS = ['temperature', 'topK', 'topP', 'repetitionPenalty', 'seed'] as const;

/** Checks sampling options (undefined: all defaults) and fills in the defaults; any other key is an error. */
export function checkSamplingOptions(op: string, o: unknown): ResolvedSampling {
  if (o === undefined) o = {};
  if (o === null || typeof o !== 'object' || Array.isArray(o))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: sampling options must be an object, got ${describe(o)}`);
  const bag = o as Record<string, unknown>;
  for (const k of Object.keys(bag))
    if (!(SAMPLING_OPTION_KEYS as readonly string[]).includes(k) && bag[k] !== undefined)
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${k}' is not a sampling option${nearestSamplingOption(k)}`);
  const topK = bag.topK === undefined ? 0 : checkNumber(op, 'topK', bag.topK, { integer: true, min: 0 });
  const topP = bag.topP === undefined ? 1 : checkNumber(op, 'topP', bag.topP);
  if (topP <= 0 || topP > 1) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'topP' must be in (0, 1], got ${topP}`);
  const filtered = bag.topK !== undefined || bag.topP !== undefined;
  const temperature = bag.temperature === undefined ? (filtered ? 1 : 0) : checkNumber(op, 'temperature', bag.temperature, { min: 0 });
  const repetitionPenalty = bag.repetitionPenalty === undefined ? 1 : checkNumber(op, 'repetitionPenalty', bag.repetitionPenalty);
  if (repetitionPenalty <= 0)
    throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'repetitionPenalty' must be > 0, got ${repetitionPenalty}`);
  const seed = bag.seed === undefined ? 0 : checkNumber(op, 'seed', bag.seed, { integer: true });
  return { temperature, topK, topP, repetitionPenalty, seed };
}

/** A suggestion for a misspelt key: the same name in another case or spelling (top_p, TopP) first, else the nearest. */
function nearestSamplingOption(key: string): string {
  const plain = (k: string): string => k.toLowerCase().replace(/[-_]/g, '');
  const near = SAMPLING_OPTION_KEYS.find((k) => plain(k) === plain(key)) ?? nearestName(key, SAMPLING_OPTION_KEYS);
  return near === null ? ` (${SAMPLING_OPTION_KEYS.join(', ')})` : `; did you mean '${near}'?`;
}

/**
 * xoshiro128** (Blackman and Vigna, 2018): 128 bits of state in four 32-bit words, period 2^128 - 1, all in
 * 32-bit integer arithmetic (Math.imul, >>> 0), so no BigInt on the per-token path. Seeding: the low and high
 * 32 bits of the seed each drive a splitmix-style counter (golden-ratio steps through a bijective 32-bit
 * hash) that fills two of the words, so distinct seeds give distinct states; the first outputs are then
 * discarded, since xoshiro's first output reads only one word.
 */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    const lo = splitmix32(seed >>> 0), hi = splitmix32(Math.floor(seed / 2 ** 32) >>> 0 ^ 0x5bd1e995);
    this.a = lo();
    this.b = lo();
    this.c = hi();
    this.d = hi();
    // The one state xoshiro cannot leave (at most one seed could land on it).
    if ((this.a | this.b | this.c | this.d) === 0) this.d = 1;
    for (let i = 0; i < 16; i++) this.nextUint32();
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** A double uniform in [0, 1) with all 53 bits of the mantissa random (from two 32-bit outputs). */
  nextDouble(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

/** A counter stepped by the golden ratio, through a bijective 32-bit hash (a hash-prospector mixer). */
function splitmix32(state: number): () => number {
  let s = state | 0;
  return () => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * Probability sums within this relative distance of topP count as reaching it: the probabilities come from
 * float32 logits through exp, so a cumulative sum that is exactly p in real numbers lands a few ulps either
 * side of it, and the minimal set must not depend on which.
 */
const TOP_P_TOLERANCE = 1e-9;

/**
 * Top-p without topK bins the vocabulary by how far each tempered logit is below the maximum, BINS_PER_NAT
 * bins per unit (a bin spans a probability ratio of e^(1/64)); beyond BINS / BINS_PER_NAT = 64 units (a
 * probability ratio of 1.6e-28) everything shares the last bin.
 */
const BINS_PER_NAT = 64;
const BINS = 4096;

/**
 * Working buffers, grown to the largest vocabulary seen, so that a call per token allocates nothing of the
 * vocabulary's size. One set serves every Sampler: next() runs to its end without yielding, so no two calls
 * share them at once, and a server running many requests holds one set rather than one per request.
 */
class Scratch {
  penalized = new Float32Array(0);
  weights = new Float64Array(0);
  order = new Uint32Array(0);
  bins = new Uint16Array(0);
  heapValues = new Float64Array(0);
  heapIds = new Uint32Array(0);
  readonly binMass = new Float64Array(BINS);

  fit(vocab: number): void {
    if (this.weights.length >= vocab) return;
    this.penalized = new Float32Array(vocab);
    this.weights = new Float64Array(vocab);
    this.order = new Uint32Array(vocab);
    this.bins = new Uint16Array(vocab);
  }

  fitHeap(k: number): void {
    if (this.heapValues.length >= k) return;
    this.heapValues = new Float64Array(k);
    this.heapIds = new Uint32Array(k);
  }
}
const scratch = new Scratch();

export class Sampler {
  readonly options: ResolvedSampling;
  private readonly rng: Xoshiro128;

  constructor(options: SamplingOptions = {}) {
    this.options = checkSamplingOptions('Sampler', options);
    this.rng = new Xoshiro128(this.options.seed);
  }

  /** Whether this sampler takes the argmax (temperature 0) rather than drawing. */
  get greedy(): boolean {
    return this.options.temperature === 0;
  }

  /**
   * Picks the next token from one row of logits (length: the vocabulary), given the token ids seen so far
   * (prompt and generated; read only when a repetition penalty is set). The logits are not modified.
   * Logits may be -Infinity (a banned token), never NaN or +Infinity.
   */
  next(logits: Float32Array, seen: readonly number[] | ReadonlySet<number> = []): number {
    const op = 'Sampler.next';
    if (!(logits instanceof Float32Array)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'logits' must be a Float32Array, got ${describe(logits)}`);
    if (logits.length === 0) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'logits' is empty; expected one logit per vocabulary entry`);
    const { temperature, topK, topP, repetitionPenalty } = this.options;
    scratch.fit(logits.length);
    const s = repetitionPenalty === 1 ? logits : this.penalize(op, logits, seen, repetitionPenalty);
    const top = argmax(op, s);
    if (temperature === 0) return top;

    const vocab = s.length;
    const invT = 1 / temperature;
    const max = s[top]!;
    if (topK > 0 && topK < vocab) {
      const n = this.topKCandidates(s, topK);
      return this.drawSorted(s, n, max, invT, topP);
    }
    if (topP < 1) return this.drawTopP(s, max, invT, topP);
    return this.drawAll(s, max, invT);
  }

  /** A copy of the logits with the repetition penalty applied once to each distinct seen id. */
  private penalize(op: string, logits: Float32Array, seen: readonly number[] | ReadonlySet<number>, penalty: number): Float32Array {
    const out = scratch.penalized.subarray(0, logits.length);
    out.set(logits);
    for (const id of seen) {
      if (!Number.isInteger(id) || id < 0 || id >= logits.length)
        throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: seen token id ${describe(id)} is not in [0, ${logits.length})`);
      // Computed from the original logit, so an id seen twice is penalized once, as transformers' gather/scatter does.
      const v = logits[id]!;
      out[id] = v < 0 ? v * penalty : v / penalty;
    }
    return out;
  }

  /**
   * Puts the ids of the topK largest logits, and any tied with the k-th, in `order`, largest first; returns
   * how many. A size-k min-heap finds the k-th value in one pass without sorting the vocabulary.
   */
  private topKCandidates(s: Float32Array, k: number): number {
    scratch.fitHeap(k);
    const hv = scratch.heapValues, hi = scratch.heapIds;
    for (let i = 0; i < k; i++) {
      hv[i] = s[i]!;
      hi[i] = i;
      siftUp(hv, hi, i);
    }
    for (let i = k; i < s.length; i++) {
      const v = s[i]!;
      if (v > hv[0]!) {
        hv[0] = v;
        hi[0] = i;
        siftDown(hv, hi, k);
      }
    }
    const kth = hv[0]!;
    const order = scratch.order;
    let n = 0;
    for (let i = 0; i < s.length; i++) if (s[i]! >= kth) order[n++] = i;
    sortByLogit(order.subarray(0, n), s);
    return n;
  }

  /**
   * Top-p over the whole vocabulary without sorting it: one pass bins the tokens by tempered logit and sums
   * each bin's probability; the bins wholly inside the minimal set are kept as they are, and only the bin
   * where the cumulative probability crosses p is sorted, to find where in it the set ends.
   */
  private drawTopP(s: Float32Array, max: number, invT: number, topP: number): number {
    const w = scratch.weights, bin = scratch.bins, mass = scratch.binMass;
    mass.fill(0);
    let total = 0;
    for (let i = 0; i < s.length; i++) {
      const x = (s[i]! - max) * invT;
      const wi = Math.exp(x);
      const b = binOf(x);
      w[i] = wi;
      bin[i] = b;
      total += wi;
      mass[b]! += wi;
    }
    const target = topP * total * (1 - TOP_P_TOLERANCE);
    let cross = 0;
    for (let below = 0; cross < BINS - 1 && below + mass[cross]! < target; ) below += mass[cross++]!;
    const order = scratch.order;
    let whole = 0;
    for (let i = 0; i < s.length; i++) if (bin[i]! < cross) order[whole++] = i;
    let n = whole;
    for (let i = 0; i < s.length; i++) if (bin[i] === cross) order[n++] = i;
    sortByLogit(order.subarray(whole, n), s);
    return this.cutAndDraw(whole, n, target);
  }

  /** Candidates in `order[0..n)`, largest first: applies top-p to their renormalized softmax and draws. */
  private drawSorted(s: Float32Array, n: number, max: number, invT: number, topP: number): number {
    const w = scratch.weights, order = scratch.order;
    let total = 0;
    for (let j = 0; j < n; j++) {
      const id = order[j]!;
      const wi = Math.exp((s[id]! - max) * invT);
      w[id] = wi;
      total += wi;
    }
    return this.cutAndDraw(0, n, topP < 1 ? topP * total * (1 - TOP_P_TOLERANCE) : Infinity);
  }

  /**
   * Keeps `order[0..whole)`, then of the rest (largest first) the shortest run that brings the weights to
   * `target` (all of it when none does), and draws from what is kept in proportion to the weights.
   */
  private cutAndDraw(whole: number, n: number, target: number): number {
    const order = scratch.order, w = scratch.weights;
    let kept = 0, sum = 0;
    while (kept < whole) sum += w[order[kept++]!]!;
    while (kept < n && !(sum >= target)) sum += w[order[kept++]!]!;
    let u = this.rng.nextDouble() * sum;
    for (let j = 0; j < kept; j++) {
      const id = order[j]!;
      u -= w[id]!;
      if (u < 0) return id;
    }
    // Rounding left u a hair above zero: the draw belongs to the last kept token with any weight.
    for (let j = kept - 1; j > 0; j--) if (w[order[j]!]! > 0) return order[j]!;
    return order[0]!;
  }

  /** Plain sampling from the softmax of the whole vocabulary, walking ids in order. */
  private drawAll(s: Float32Array, max: number, invT: number): number {
    const w = scratch.weights;
    let total = 0;
    for (let i = 0; i < s.length; i++) {
      const wi = Math.exp((s[i]! - max) * invT);
      w[i] = wi;
      total += wi;
    }
    let u = this.rng.nextDouble() * total;
    let last = 0;
    for (let i = 0; i < s.length; i++) {
      const wi = w[i]!;
      if (wi > 0) last = i;
      u -= wi;
      if (u < 0) return i;
    }
    return last;
  }
}

function binOf(x: number): number {
  // x = tempered logit minus the maximum, <= 0 (or -Infinity for a banned token, which lands in the last bin).
  const b = Math.floor(-x * BINS_PER_NAT);
  return b < BINS ? b : BINS - 1;
}

/** The index of the largest value, the lowest among ties; rejects NaN and +Infinity, and a row with no finite logit. */
function argmax(op: string, s: Float32Array): number {
  let best = 0, bestV = -Infinity;
  for (let i = 0; i < s.length; i++) {
    const v = s[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    } else if (v !== v) {
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: logits[${i}] is NaN`);
    }
  }
  if (bestV === Infinity) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: logits[${best}] is +Infinity; logits must be finite or -Infinity`);
  if (bestV === -Infinity) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: every logit is -Infinity; no token can be chosen`);
  return best;
}

/** Sorts ids by logit, largest first, then by id, so equal logits come out in a fixed order. */
function sortByLogit(ids: Uint32Array, s: Float32Array): void {
  ids.sort((a, b) => s[b]! - s[a]! || a - b);
}

// A min-heap on parallel arrays (values, ids), smallest value at the root.
function siftUp(v: Float64Array, ids: Uint32Array, i: number): void {
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!(v[i]! < v[p]!)) break;
    swap(v, ids, i, p);
    i = p;
  }
}

function siftDown(v: Float64Array, ids: Uint32Array, n: number): void {
  let i = 0;
  for (;;) {
    const l = 2 * i + 1, r = l + 1;
    let m = i;
    if (l < n && v[l]! < v[m]!) m = l;
    if (r < n && v[r]! < v[m]!) m = r;
    if (m === i) return;
    swap(v, ids, i, m);
    i = m;
  }
}

function swap(v: Float64Array, ids: Uint32Array, i: number, j: number): void {
  const tv = v[i]!;
  v[i] = v[j]!;
  v[j] = tv;
  const ti = ids[i]!;
  ids[i] = ids[j]!;
  ids[j] = ti;
}
