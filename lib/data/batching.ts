/**
 * Batches for training: every epoch a seeded shuffle of the examples, packed into rows of seqLen tokens (or one
 * example a row). Any batch is computed from (seed, epoch, index) alone, so a resumed run sees exactly the
 * batches it would have seen.
 */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { checkNumber, checkOptions, describe, type Device } from '../check';
import { type Tensor, tensor } from '../tensor/tensor';
import { type Example } from './example';

export interface BatcherOptions {
  /** Tokens per row (T); at least 2, as a row of one token predicts nothing. */
  seqLen: number;
  /** Rows per batch (B). */
  batchSize: number;
  /** Concatenate examples and cut the stream into full rows (default), or put one example in each row. */
  pack?: boolean;
  /** Seeds the shuffle; with the epoch, it fixes the order of the examples. */
  seed: number;
  /** The token id written after a short example when not packing. */
  padId: number;
}

/** One batch; the caller disposes the tensors. */
export interface Batch {
  /** int64 [B, T]. */
  inputIds: Tensor;
  /** int64 [B, T], aligned with inputIds (the model shifts them); -100 takes no loss. */
  labels: Tensor;
  /** int64 [B, T]: each token's position within its document. */
  positions: Tensor;
  /** int64 [B, T]: the index in its row where each token's document starts. */
  docStarts: Tensor;
  /** Positions t in [0, T-2] of every row whose label t+1 is not -100: the count the model's loss averages over. */
  tokens: number;
}

const OP = 'Batcher';
const IGNORE = -100n;

/** An integer hash with good avalanche; integer arithmetic only, so every machine computes the same value. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** A counter through mix32, keyed by (seed, epoch): independent streams for every epoch of every seed. */
class Rng {
  #state: number;

  constructor(seed: number, epoch: number) {
    let h = 0x6a09e667;
    // Safe integers have up to 53 bits: the high word matters too.
    for (const v of [seed, epoch]) h = mix32(mix32(h ^ (v >>> 0)) ^ (Math.floor(v / 2 ** 32) >>> 0));
    this.#state = h;
  }

  #next(): number {
    this.#state = (this.#state + 0x9e3779b9) >>> 0;
    return mix32(this.#state);
  }

  /** An integer in [0, n), from 53 random bits (the bias is below 2^-30 for any array length). */
  below(n: number): number {
    const u = ((this.#next() >>> 5) * 2 ** 26 + (this.#next() >>> 6)) / 2 ** 53;
    return Math.floor(u * n);
  }
}

/**
 * A permutation of 0..n-1 by a Fisher-Yates shuffle keyed by (seed, stream): the same on every
 * machine. The trainer's held-out split and every epoch's order use it with their own stream.
 */
export function seededPermutation(n: number, seed: number, stream: number): Int32Array {
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const rng = new Rng(seed, stream);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** One epoch's example order, and where each example starts in the epoch's token stream. */
interface EpochLayout {
  epoch: number;
  order: Int32Array;
  /** starts[p] is the stream offset of the example at order position p; starts[n] is the stream length. */
  starts: Float64Array;
}

/** Rows of one batch, written in place. */
interface Rows {
  ids: BigInt64Array;
  labels: BigInt64Array;
  positions: BigInt64Array;
  docStarts: BigInt64Array;
}

/**
 * Deterministic, random-access batches over examples. With packing, each epoch's examples are concatenated
 * in their shuffled order and the stream is cut into rows of seqLen tokens; a document cut at a row's end
 * goes on at the start of the next row as a new document piece. Positions restart at every document (piece),
 * and each document's first label is -100, so no token is predicted across a boundary. The stream's last
 * partial row, and the rows that do not fill a last batch, are dropped: every batch is full, and since the
 * order changes every epoch, a different tail is dropped each time. Without packing, each row holds one
 * example, truncated to seqLen and padded with padId (label -100); a last partial batch is dropped likewise.
 */
export class Batcher {
  readonly batchesPerEpoch: number;
  readonly seqLen: number;
  readonly batchSize: number;
  readonly pack: boolean;
  readonly seed: number;
  readonly padId: number;
  readonly #examples: readonly Example[];
  #layout: EpochLayout | null = null;

  constructor(examples: readonly Example[], options: BatcherOptions) {
    const o = checkOptions<BatcherOptions>(OP, options);
    this.seqLen = checkNumber(OP, 'seqLen', o.seqLen, { integer: true, min: 2 });
    this.batchSize = checkNumber(OP, 'batchSize', o.batchSize, { integer: true, min: 1 });
    this.seed = checkNumber(OP, 'seed', o.seed, { integer: true });
    this.padId = checkNumber(OP, 'padId', o.padId, { integer: true, min: 0 });
    if (o.pack !== undefined && typeof o.pack !== 'boolean')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: option 'pack' must be true or false, got ${describe(o.pack)}`);
    this.pack = o.pack ?? true;
    if (!Array.isArray(examples)) throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: 'examples' must be an array, got ${describe(examples)}`);
    let total = 0;
    examples.forEach((ex: Example, i) => {
      if (ex.labels.length !== ex.inputIds.length)
        throw new LorakitRangeError('ERR_SHAPE', `${OP}: example ${i + 1} has ${ex.inputIds.length} input ids but ${ex.labels.length} labels`);
      total += ex.inputIds.length;
    });
    this.#examples = examples;
    const rows = this.pack ? Math.floor(total / this.seqLen) : examples.length;
    this.batchesPerEpoch = Math.floor(rows / this.batchSize);
    if (this.batchesPerEpoch === 0) {
      const held = this.pack ? `hold ${total} tokens, which fill ${rows} rows of seqLen ${this.seqLen}` : `fill ${rows} rows without packing`;
      throw new LorakitError(
        'ERR_INVALID_ARG',
        `${OP}: the dataset cannot fill one batch: ${examples.length} examples ${held}; a batch of batchSize ${this.batchSize} needs ${this.batchSize} rows` +
          (this.pack ? ` (${this.batchSize * this.seqLen} tokens)` : ''),
      );
    }
  }

  /**
   * Batch `index` of epoch `epoch` (both from 0): the same batch on every call and every machine,
   * assembled in host memory and placed on `device`.
   */
  batch(epoch: number, index: number, device: Device = 'cpu'): Batch {
    checkNumber(`${OP}.batch`, 'epoch', epoch, { integer: true, min: 0 });
    checkNumber(`${OP}.batch`, 'index', index, { integer: true, min: 0, max: this.batchesPerEpoch, maxExclusive: true });
    const layout = this.#layoutOf(epoch);
    const [B, T] = [this.batchSize, this.seqLen];
    const rows: Rows = {
      ids: new BigInt64Array(B * T),
      labels: new BigInt64Array(B * T),
      positions: new BigInt64Array(B * T),
      docStarts: new BigInt64Array(B * T),
    };
    for (let b = 0; b < B; b++) {
      const row = index * B + b;
      if (this.pack) this.#packedRow(layout, row, rows, b * T);
      else this.#paddedRow(layout, row, rows, b * T);
    }
    let tokens = 0;
    for (let i = 0; i < B * T; i++) if (i % T !== 0 && rows.labels[i] !== IGNORE) tokens++;
    const shape = [B, T];
    return {
      inputIds: tensor(rows.ids, shape, { device }),
      labels: tensor(rows.labels, shape, { device }),
      positions: tensor(rows.positions, shape, { device }),
      docStarts: tensor(rows.docStarts, shape, { device }),
      tokens,
    };
  }

  /** The epoch's order, kept for the latest epoch asked for: a run asks for one epoch's batches in turn. */
  #layoutOf(epoch: number): EpochLayout {
    if (this.#layout?.epoch === epoch) return this.#layout;
    const n = this.#examples.length;
    const order = seededPermutation(n, this.seed, epoch);
    const starts = new Float64Array(n + 1);
    for (let p = 0; p < n; p++) starts[p + 1] = starts[p]! + this.#examples[order[p]!]!.inputIds.length;
    this.#layout = { epoch, order, starts };
    return this.#layout;
  }

  #packedRow(layout: EpochLayout, row: number, out: Rows, at: number): void {
    const T = this.seqLen;
    const begin = row * T;
    // The last order position whose example starts at or before the row's first token.
    let lo = 0;
    let hi = layout.order.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (layout.starts[mid]! <= begin) lo = mid;
      else hi = mid - 1;
    }
    let p = lo;
    let offset = begin - layout.starts[p]!;
    for (let t = 0; t < T; p++, offset = 0) {
      const ex = this.#examples[layout.order[p]!]!;
      const n = Math.min(ex.inputIds.length - offset, T - t);
      for (let j = 0; j < n; j++) {
        const k = at + t + j;
        out.ids[k] = BigInt(ex.inputIds[offset + j]!);
        out.labels[k] = j === 0 ? IGNORE : BigInt(ex.labels[offset + j]!);
        out.positions[k] = BigInt(j);
        out.docStarts[k] = BigInt(t);
      }
      t += n;
    }
  }

  #paddedRow(layout: EpochLayout, row: number, out: Rows, at: number): void {
    const ex = this.#examples[layout.order[row]!]!;
    const n = Math.min(ex.inputIds.length, this.seqLen);
    for (let t = 0; t < this.seqLen; t++) {
      const k = at + t;
      out.ids[k] = BigInt(t < n ? ex.inputIds[t]! : this.padId);
      out.labels[k] = t < n ? BigInt(ex.labels[t]!) : IGNORE;
      out.positions[k] = BigInt(t);
    }
  }
}
