// The Batcher (lib/data/batching.ts) against a packer written out here: for many random datasets and shapes, every
// batch of several epochs equals the rows a plain concatenate-and-cut (or one-example-a-row) of the epoch's order
// gives, with labels, positions, document starts and the token count worked out independently. The shuffle is
// checked for what it promises: a permutation, uniform, and different per seed, stream and the seed's high bits.
import { Batcher, seededPermutation, type Batch, type Example } from '../lib/data';
import { rng } from './helpers/reference';

type Rows = { ids: number[][]; labels: number[][]; positions: number[][]; docStarts: number[][]; tokens: number };

function read(batch: Batch): Rows {
  const rows = (t: Batch['inputIds']) => {
    expect(t.dtype).toBe('int64');
    return (t.toArray() as bigint[][]).map((r) => r.map(Number));
  };
  const out = { ids: rows(batch.inputIds), labels: rows(batch.labels), positions: rows(batch.positions), docStarts: rows(batch.docStarts), tokens: batch.tokens };
  for (const t of [batch.inputIds, batch.labels, batch.positions, batch.docStarts]) t.dispose();
  return out;
}

/** Every row of one epoch, by concatenating the examples in `order` and cutting the stream every T tokens. */
function packedRows(examples: Example[], order: ArrayLike<number>, T: number): Omit<Rows, 'tokens'> {
  // The stream as (example, index in example) pairs.
  const stream: [number, number][] = [];
  for (let p = 0; p < order.length; p++) for (let j = 0; j < examples[order[p]!]!.inputIds.length; j++) stream.push([order[p]!, j]);
  const out: Omit<Rows, 'tokens'> = { ids: [], labels: [], positions: [], docStarts: [] };
  for (let r = 0; (r + 1) * T <= stream.length; r++) {
    const ids: number[] = [], labels: number[] = [], positions: number[] = [], docStarts: number[] = [];
    let start = 0;
    for (let t = 0; t < T; t++) {
      const [e, j] = stream[r * T + t]!;
      // A new document piece starts at the row's first token, or where the example changes.
      const fresh = t === 0 || stream[r * T + t - 1]![0] !== e || stream[r * T + t - 1]![1] !== j - 1;
      if (fresh) start = t;
      ids.push(examples[e]!.inputIds[j]!);
      labels.push(fresh ? -100 : examples[e]!.labels[j]!);
      positions.push(t - start);
      docStarts.push(start);
    }
    out.ids.push(ids);
    out.labels.push(labels);
    out.positions.push(positions);
    out.docStarts.push(docStarts);
  }
  return out;
}

/** One example a row: truncated to T, padded with padId (label -100); positions 0..T-1, every document starts at 0. */
function paddedRows(examples: Example[], order: ArrayLike<number>, T: number, padId: number): Omit<Rows, 'tokens'> {
  const out: Omit<Rows, 'tokens'> = { ids: [], labels: [], positions: [], docStarts: [] };
  for (let p = 0; p < order.length; p++) {
    const ex = examples[order[p]!]!;
    out.ids.push(Array.from({ length: T }, (_, t) => (t < ex.inputIds.length ? ex.inputIds[t]! : padId)));
    out.labels.push(Array.from({ length: T }, (_, t) => (t < ex.inputIds.length ? ex.labels[t]! : -100)));
    out.positions.push(Array.from({ length: T }, (_, t) => t));
    out.docStarts.push(new Array<number>(T).fill(0));
  }
  return out;
}

/** Labels at t = 1..T-1 that take a loss. */
const countTokens = (labels: number[][]) => labels.reduce((s, row) => s + row.filter((l, t) => t > 0 && l !== -100).length, 0);

function randomExamples(u: () => number, n: number, maxLen: number): Example[] {
  return Array.from({ length: n }, (_, i) => {
    const len = 1 + Math.floor(u() * maxLen);
    const ids = Array.from({ length: len }, (_, j) => 1000 * (i + 1) + j);
    // Some labels masked, as prompts are.
    return { inputIds: ids, labels: ids.map((id) => (u() < 0.25 ? -100 : id)) };
  });
}

describe('Batcher against a reference packer', () => {
  test('packed batches: random datasets, row lengths and batch sizes, several epochs', () => {
    const u = rng(2024);
    for (let trial = 0; trial < 30; trial++) {
      const n = 1 + Math.floor(u() * 9);
      const examples = randomExamples(u, n, 9);
      const total = examples.reduce((s, e) => s + e.inputIds.length, 0);
      const T = 2 + Math.floor(u() * 6);
      const B = 1 + Math.floor(u() * 3);
      const seed = Math.floor(u() * 1e6);
      if (Math.floor(Math.floor(total / T) / B) === 0) {
        expect(() => new Batcher(examples, { seqLen: T, batchSize: B, seed, padId: 0 })).toThrow(/cannot fill one batch/);
        continue;
      }
      const batcher = new Batcher(examples, { seqLen: T, batchSize: B, seed, padId: 0 });
      expect(batcher.batchesPerEpoch).toBe(Math.floor(Math.floor(total / T) / B));
      expect([batcher.seqLen, batcher.batchSize, batcher.pack, batcher.seed, batcher.padId]).toEqual([T, B, true, seed, 0]);
      // Epochs out of order and back: the layout kept for one epoch must not leak into another.
      for (const epoch of [0, 2, 1, 0]) {
        const want = packedRows(examples, seededPermutation(n, seed, epoch), T);
        for (let i = 0; i < batcher.batchesPerEpoch; i++) {
          const got = read(batcher.batch(epoch, i));
          const rows = (k: keyof typeof want) => want[k].slice(i * B, (i + 1) * B);
          expect(got).toEqual({ ids: rows('ids'), labels: rows('labels'), positions: rows('positions'), docStarts: rows('docStarts'), tokens: countTokens(rows('labels')) });
        }
      }
    }
  });

  test('one example a row: random datasets, truncation and padding', () => {
    const u = rng(77);
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + Math.floor(u() * 8);
      const examples = randomExamples(u, n, 8);
      const T = 2 + Math.floor(u() * 5);
      const B = 1 + Math.floor(u() * Math.min(3, n));
      const padId = Math.floor(u() * 50);
      const seed = Math.floor(u() * 1e6) - 5e5;
      const batcher = new Batcher(examples, { seqLen: T, batchSize: B, pack: false, seed, padId });
      expect(batcher.batchesPerEpoch).toBe(Math.floor(n / B));
      for (const epoch of [3, 0]) {
        const want = paddedRows(examples, seededPermutation(n, seed, epoch), T, padId);
        for (let i = 0; i < batcher.batchesPerEpoch; i++) {
          const got = read(batcher.batch(epoch, i));
          const rows = (k: keyof typeof want) => want[k].slice(i * B, (i + 1) * B);
          expect(got).toEqual({ ids: rows('ids'), labels: rows('labels'), positions: rows('positions'), docStarts: rows('docStarts'), tokens: countTokens(rows('labels')) });
        }
      }
    }
  });

  test('a row that starts exactly where an example starts, and one inside a long example', () => {
    // Lengths 4, 4, 10 with T = 4: whatever the order, rows begin on example boundaries or inside the long one.
    const examples: Example[] = [4, 4, 10].map((len, i) => ({ inputIds: Array.from({ length: len }, (_, j) => 10 * i + j), labels: Array.from({ length: len }, (_, j) => 10 * i + j) }));
    const batcher = new Batcher(examples, { seqLen: 4, batchSize: 1, seed: 3, padId: 0 });
    expect(batcher.batchesPerEpoch).toBe(4);
    for (const epoch of [0, 1, 2, 3]) {
      const want = packedRows(examples, seededPermutation(3, 3, epoch), 4);
      for (let i = 0; i < 4; i++) expect(read(batcher.batch(epoch, i)).ids).toEqual([want.ids[i]]);
    }
  });
});

describe('seededPermutation', () => {
  test('is a permutation, and the same for the same (seed, stream)', () => {
    expect([...seededPermutation(0, 1, 0)]).toEqual([]);
    expect([...seededPermutation(1, 1, 0)]).toEqual([0]);
    for (const n of [2, 7, 50]) {
      const p = seededPermutation(n, 11, 4);
      expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
      expect([...seededPermutation(n, 11, 4)]).toEqual([...p]);
    }
  });

  test('every element lands in every position equally often (chi-square over 6000 seeds)', () => {
    const n = 5, draws = 6000;
    const counts = Array.from({ length: n }, () => new Array<number>(n).fill(0));
    for (let s = 0; s < draws; s++) seededPermutation(n, s, 0).forEach((v, pos) => counts[v]![pos]!++);
    // 25 cells with 1200 expected each; the 16 degrees of freedom of a 5 x 5 table with fixed margins put the
    // chi-square's 99.9% point at 39.3.
    const expected = draws / n;
    const chi2 = counts.flat().reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
    expect(chi2).toBeLessThan(39.3);
  });

  test('the identity is rare: about 1 in n! of shuffles', () => {
    // n = 4: 24 orders, so about 250 of 6000 shuffles are the identity (binomial sd about 15).
    let identity = 0;
    for (let s = 0; s < 6000; s++) if (seededPermutation(4, s, 1).every((v, i) => v === i)) identity++;
    expect(identity).toBeGreaterThan(180);
    expect(identity).toBeLessThan(320);
  });

  test('other seeds, streams (negative ones too) and the high bits of the seed give other orders', () => {
    const order = (seed: number, stream: number) => [...seededPermutation(20, seed, stream)].join(',');
    const seen = new Set([order(1, 0), order(2, 0), order(1, 1), order(1, -1), order(1 + 2 ** 32, 0), order(1, 2 ** 32), order(-1, 0), order(2 ** 32 - 1, 0)]);
    expect(seen.size).toBe(8);
  });
});
