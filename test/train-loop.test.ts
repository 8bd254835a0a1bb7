import { AdamW, LorakitError, tensor, zeros, type Tensor } from '../lib';
import { type Batcher } from '../lib/data';
import { type CausalLM } from '../lib/models/causal-lm';
import { nonFiniteError, optimizerStep, type StepInput } from '../lib/train/loop';

/**
 * A stand-in model with one parameter: each micro-batch's backward adds `grad` to its gradient and
 * reports `loss` over 2 tokens, so that a step can be given any loss or gradient.
 */
function stepInput(loss: number, grad: number[], gradAccum = 2): { input: StepInput; param: Tensor; batches: Tensor[] } {
  const param = tensor([1, 2, 3]);
  const g = zeros([3]);
  const batches: Tensor[] = [];
  const model = {
    zeroGrad: () => g.storage().upload(new Float32Array(3)),
    forwardBackward: () => {
      g.storage().upload(Float32Array.from(g.toFloat32Array(), (v, i) => v + grad[i]!));
      return { loss, tokens: 2 };
    },
  } as unknown as CausalLM;
  const batcher = {
    batchesPerEpoch: 3,
    batch: () => {
      const b = { inputIds: zeros([1, 2]), labels: zeros([1, 2]), positions: zeros([1, 2]), docStarts: zeros([1]) };
      batches.push(...Object.values(b));
      return b;
    },
  } as unknown as Batcher;
  const o = { gradAccum, device: 'cpu' as const, seed: 1, maxGradNorm: 1 };
  return { input: { model, optimizer: new AdamW([param]), grads: [g], batcher, o, step: 4, micro: 0, lr: 1e-3 }, param, batches };
}

describe('one optimizer step returns a non-finite loss or gradient norm as a value', () => {
  test('a finite step updates and reports its loss, tokens and gradient norm', async () => {
    const { input, param, batches } = stepInput(2, [3, 0, 4]);
    const r = await optimizerStep(input);
    expect(r).toEqual({ ok: true, loss: 2, tokens: 4, gradNorm: expect.closeTo(5, 5) });
    expect(param.toArray()).not.toEqual([1, 2, 3]);
    expect(input.optimizer.stepCount).toBe(1);
    expect(batches.every((t) => t.disposed)).toBe(true);
  });

  test('a NaN loss is a value, and nothing is updated', async () => {
    const { input, param, batches } = stepInput(NaN, [1, 1, 1]);
    await expect(optimizerStep(input)).resolves.toEqual({ ok: false, reason: 'loss', loss: NaN });
    expect(param.toArray()).toEqual([1, 2, 3]);
    expect(input.optimizer.stepCount).toBe(0);
    expect(batches.every((t) => t.disposed)).toBe(true);
  });

  test.each([NaN, Infinity])('a gradient holding %p is a value, and nothing is updated', async (bad) => {
    const { input, param } = stepInput(2, [0, bad, 0]);
    const r = await optimizerStep(input);
    expect(r).toEqual({ ok: false, reason: 'grad-norm', gradNorm: expect.anything() });
    expect(param.toArray()).toEqual([1, 2, 3]);
    expect(input.optimizer.stepCount).toBe(0);
  });

  test('the run stops with the message and code it always had, counting steps from 1', () => {
    const grad = nonFiniteError({ ok: false, reason: 'grad-norm', gradNorm: NaN }, 4);
    expect(grad).toBeInstanceOf(LorakitError);
    expect(grad.code).toBe('ERR_NATIVE');
    expect(grad.message).toBe('train: the gradient norm is not finite at step 5; stopping (the last good checkpoint is kept)');
    const loss = nonFiniteError({ ok: false, reason: 'loss', loss: Infinity }, 0);
    expect(loss.code).toBe('ERR_NATIVE');
    expect(loss.message).toBe('train: the loss is Infinity at step 1; stopping (the last good checkpoint is kept)');
  });
});
