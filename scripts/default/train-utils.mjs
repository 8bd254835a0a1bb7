/**
 * Training helpers for the default-asset builder: the learning-rate schedule, batches cut from a token
 * stream or padded from prompt/completion examples, and evaluation beyond lorakit's `evaluate`.
 */
import { Rng } from './rng.mjs';

/** Linear warm-up to `peak`, then a cosine down to `peak * floor` at `total` steps. `step` counts from 0. */
export function cosineLr(step, { peak, warmup, total, floor = 0.1 }) {
  if (step < warmup) return (peak * (step + 1)) / warmup;
  const t = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return peak * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * t)));
}

/** Rows of `seq` tokens starting at random offsets of `stream`, `batch` per call. */
export class StreamBatches {
  constructor(stream, batch, seq, seed) {
    this.stream = stream;
    this.batch = batch;
    this.seq = seq;
    this.rng = new Rng(seed);
  }

  next() {
    const ids = new BigInt64Array(this.batch * this.seq);
    for (let b = 0; b < this.batch; b++) {
      const start = this.rng.int(0, this.stream.length - this.seq);
      for (let t = 0; t < this.seq; t++) ids[b * this.seq + t] = BigInt(this.stream[start + t]);
    }
    return ids;
  }
}

/**
 * Batches of tokenized examples ({inputIds, labels}), shuffled each epoch, right-padded with `padId`
 * (labels -100 there) to the longest in the batch.
 */
export class ExampleBatches {
  constructor(examples, batch, padId, seed) {
    this.examples = examples;
    this.batch = batch;
    this.padId = padId;
    this.rng = new Rng(seed);
    this.order = [];
  }

  next() {
    const rows = [];
    while (rows.length < this.batch) {
      if (this.order.length === 0) this.order = this.rng.shuffle([...this.examples.keys()]);
      rows.push(this.examples[this.order.pop()]);
    }
    return padRows(rows, this.padId);
  }
}

/** Right-pads examples to one [rows, seq] pair of int64 arrays. */
export function padRows(rows, padId) {
  const seq = Math.max(...rows.map((r) => r.inputIds.length));
  const ids = new BigInt64Array(rows.length * seq).fill(BigInt(padId));
  const labels = new BigInt64Array(rows.length * seq).fill(-100n);
  rows.forEach((r, i) => {
    r.inputIds.forEach((id, t) => (ids[i * seq + t] = BigInt(id)));
    r.labels.forEach((id, t) => (labels[i * seq + t] = BigInt(id)));
  });
  return { ids, labels, shape: [rows.length, seq] };
}

/** Consecutive rows of `seq` tokens covering `stream` (the last partial row dropped). */
export function streamRows(stream, seq) {
  const rows = [];
  for (let s = 0; s + seq <= stream.length; s += seq) rows.push(stream.slice(s, s + seq));
  return rows;
}

/**
 * Share of examples whose every completion token is the model's top prediction given the tokens
 * before it: what greedy decoding of the answer gets right.
 */
export function exactMatch(lk, model, examples) {
  let right = 0;
  for (const ex of examples) {
    const n = ex.inputIds.length;
    const ids = lk.tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, n]);
    const { logits } = model.forward(ids, { returnLogits: true });
    ids.dispose();
    const v = model.config.vocabSize;
    const data = logits.toFloat32Array();
    logits.dispose();
    let ok = true;
    for (let t = 0; t + 1 < n && ok; t++) {
      if (ex.labels[t + 1] === -100) continue;
      let best = 0;
      for (let k = 1; k < v; k++) if (data[t * v + k] > data[t * v + best]) best = k;
      ok = best === ex.labels[t + 1];
    }
    if (ok) right++;
  }
  return right / examples.length;
}
