import { LorakitRangeError } from '../errors';
import { type CausalLM } from '../models/causal-lm';
import { type Example } from '../data/example';
import { splitExample } from '../data/load';
import { tensor } from '../tensor/tensor';

export interface EvalResult {
  /** Token-weighted mean next-token cross-entropy over every example (transformers' reduction). */
  loss: number;
  perplexity: number;
  /** Positions that counted. */
  tokens: number;
  examples: number;
}

/** Loss of the model on the examples, one sequence at a time (no packing), each cut at the model's context. */
export function evaluate(model: CausalLM, examples: readonly Example[]): EvalResult {
  const acc = { sum: 0, tokens: 0 };
  examples.forEach((ex, i) => evaluateOne(model, ex, i, acc));
  return result(acc, examples.length);
}

/**
 * The same, handing the event loop a turn after every example so that timers and signal handlers run
 * during a long evaluation; resolves to null, unfinished, as soon as `stop()` says so.
 */
export async function evaluateAsync(model: CausalLM, examples: readonly Example[], stop: () => boolean = () => false): Promise<EvalResult | null> {
  const acc = { sum: 0, tokens: 0 };
  for (let i = 0; i < examples.length; i++) {
    await new Promise<void>((r) => setImmediate(r));
    if (stop()) return null;
    evaluateOne(model, examples[i]!, i, acc);
  }
  return result(acc, examples.length);
}

function evaluateOne(model: CausalLM, ex: Example, i: number, acc: { sum: number; tokens: number }): void {
  const bad = ex.inputIds.find((id) => id >= model.config.vocabSize);
  if (bad !== undefined) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `evaluate: example ${i + 1} has token id ${bad}, outside the model's vocabulary of ${model.config.vocabSize}`);
  // Past the model's context an example is read in pieces, as loadExamples cuts it: attention over the
  // whole would cost memory quadratic in its length (and positions the model never learned).
  for (const piece of splitExample(ex, model.config.maxPositions)) {
    const n = piece.inputIds.length;
    using ids = tensor(BigInt64Array.from(piece.inputIds, BigInt), [1, n], { device: model.device });
    using labels = tensor(BigInt64Array.from(piece.labels, BigInt), [1, n], { device: model.device });
    const r = model.forward(ids, { labels });
    if (r.tokens > 0) {
      acc.sum += r.loss * r.tokens;
      acc.tokens += r.tokens;
    }
  }
}

function result(acc: { sum: number; tokens: number }, examples: number): EvalResult {
  // No counted token: 0 / 0, NaN.
  const loss = acc.sum / acc.tokens;
  return { loss, perplexity: Math.exp(loss), tokens: acc.tokens, examples };
}
