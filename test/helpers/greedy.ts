import { type CausalLM } from '../../lib/models/causal-lm';
import { tensor } from '../../lib/tensor/tensor';

/**
 * The next token a full forward pass (no KV cache, no engine) picks after `ids`, the argmax of the last
 * position's logits (lowest id among ties), and its margin over the runner-up: the reference generation is
 * checked against.
 */
export function fullArgmax(m: CausalLM, ids: readonly number[]): { token: number; margin: number } {
  using input = tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]);
  using logits = m.forward(input, { returnLogits: true }).logits!;
  const V = m.config.vocabSize;
  const row = logits.toFloat32Array().subarray((ids.length - 1) * V);
  let best = 0, second = -Infinity;
  for (let v = 1; v < V; v++) if (row[v]! > row[best]!) best = v;
  for (let v = 0; v < V; v++) if (v !== best && row[v]! > second) second = row[v]!;
  return { token: best, margin: row[best]! - second };
}
