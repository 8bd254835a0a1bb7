import { LorakitRangeError } from '../errors';
import { type CausalLM } from '../models/causal-lm';
import { type Example } from '../data/jsonl';
import { tensor } from '../tensor/tensor';

export interface EvalResult {
  /** Token-weighted mean next-token cross-entropy over every example (transformers' reduction). */
  loss: number;
  perplexity: number;
  /** Positions that counted. */
  tokens: number;
  examples: number;
}

/** Loss of the model on the examples, one sequence at a time (no packing). */
export function evaluate(model: CausalLM, examples: readonly Example[]): EvalResult {
  let sum = 0;
  let tokens = 0;
  examples.forEach((ex, i) => {
    const n = ex.inputIds.length;
    if (n > model.config.maxPositions && model.config.ropeTheta === null)
      throw new LorakitRangeError('ERR_SHAPE', `evaluate: example ${i + 1} has ${n} tokens; the model takes at most ${model.config.maxPositions}`);
    const bad = ex.inputIds.find((id) => id >= model.config.vocabSize);
    if (bad !== undefined) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `evaluate: example ${i + 1} has token id ${bad}, outside the model's vocabulary of ${model.config.vocabSize}`);
    using ids = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, n], { device: model.device });
    using labels = tensor(BigInt64Array.from(ex.labels, BigInt), [1, n], { device: model.device });
    const r = model.forward(ids, { labels });
    if (r.tokens > 0) {
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
  });
  const loss = tokens > 0 ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens, examples: examples.length };
}
