// The classifier and loss computed a block of rows at a time (CausalLM.headChunkElements) give the loss
// and every gradient of the one-shot head: full fine-tuning, so the (tied or untied) head's gradient and
// the hidden states' are both checked, with ignored labels inside the blocks.
import { tensor } from '../lib';
import { addAdapter } from '../lib/adapters/adapter';
import { MODEL_SHAPES, randomModel } from '../lib/models/random';
import { normRelErr } from './helpers/reference';

function run(shape: string, chunkRows: number | null, method: 'full' | 'lora') {
  using m = randomModel(MODEL_SHAPES[shape]!, { seed: 11 });
  if (method === 'full') m.requireFullGrad();
  else addAdapter(m, { r: 4, loraAlpha: 8, targetModules: 'all-linear', initLoraWeights: 'gaussian', seed: 2 });
  if (chunkRows !== null) m.headChunkElements = chunkRows * m.config.vocabSize;
  const B = 3, T = 17;
  using ids = tensor(Array.from({ length: B * T }, (_, i) => BigInt((i * 131 + 7) % m.config.vocabSize)), [B, T], { dtype: 'int64' });
  // Some ignored labels, so that blocks count different numbers of rows.
  using labels = tensor(Array.from({ length: B * T }, (_, i) => (i % 5 === 2 ? -100n : BigInt((i * 31) % m.config.vocabSize))), [B, T], { dtype: 'int64' });
  const eval_ = m.forward(ids, { labels });
  const r = m.forwardBackward(ids, { labels });
  const grads = new Map(m.parameters().map((p) => [p.name, Float64Array.from(p.grad.toFloat32Array())]));
  return { loss: r.loss, tokens: r.tokens, evalLoss: eval_.loss, grads };
}

describe('row-chunked classifier and loss', () => {
  for (const shape of ['gpt2-tiny', 'llama-tiny'])
    for (const method of ['full', 'lora'] as const)
      test(`${shape} ${method}: blocks of 5 and of 1 rows match the one-shot head`, () => {
        const whole = run(shape, null, method);
        for (const rows of [5, 1]) {
          const c = run(shape, rows, method);
          expect(c.tokens).toBe(whole.tokens);
          expect(Math.abs(c.loss - whole.loss)).toBeLessThan(1e-6 * whole.loss);
          expect(Math.abs(c.evalLoss - whole.evalLoss)).toBeLessThan(1e-6 * whole.evalLoss);
          expect([...c.grads.keys()]).toEqual([...whole.grads.keys()]);
          for (const [name, g] of whole.grads) {
            const err = normRelErr(c.grads.get(name)!, g);
            if (!(err < 2e-5)) throw new Error(`${shape} ${method} rows ${rows}: gradient of ${name} differs by ${err}`);
          }
        }
      });
});
