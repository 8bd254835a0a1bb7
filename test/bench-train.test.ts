// `lorakit bench train`: random-initialised models of a named shape, and the training-step measurement.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { tensor } from '../lib';
import { randomModel, MODEL_SHAPES } from '../lib/models/random';
import { benchTrain } from '../lib/train/bench';

const cli = path.resolve(__dirname, '..', 'dist', 'cli', 'index.js');

// gpt2-tiny by hand: 2 layers, width 64, 4·64 MLP, vocab 512, 128 positions, tied head.
const D = 64, V = 512, P = 128, L = 2;
const linears = [[D, 3 * D], [D, D], [D, 4 * D], [4 * D, D]];
const tinyParams = V * D + P * D + 2 * D + L * (4 * D + linears.reduce((s, [i, o]) => s + i! * o! + o!, 0));
const tinyLora = (r: number) => L * linears.reduce((s, [i, o]) => s + r * (i! + o!), 0);

describe('random models', () => {
  test('near-zero logits at initialisation: the loss is about ln(vocab)', () => {
    for (const shape of ['gpt2-tiny', 'llama-tiny']) {
      using m = randomModel(MODEL_SHAPES[shape]!, { seed: 3 });
      using ids = tensor(Array.from({ length: 64 }, (_, i) => BigInt((i * 37) % V)), [2, 32], { dtype: 'int64' });
      const r = m.forward(ids);
      expect(r.tokens).toBe(2 * 31);
      expect(Math.abs(r.loss - Math.log(V))).toBeLessThan(0.05);
    }
  });

  test('a shape and a seed give the same weights every time; another seed gives others', () => {
    using ids = tensor(Array.from({ length: 32 }, (_, i) => BigInt((i * 11) % V)), [1, 32], { dtype: 'int64' });
    const loss = (seed: number) => {
      using m = randomModel(MODEL_SHAPES['llama-tiny']!, { seed });
      return m.forward(ids).loss;
    };
    expect(loss(5)).toBe(loss(5));
    expect(loss(5)).not.toBe(loss(6));
  });
});

describe('benchTrain', () => {
  test('counts tokens, parameters and the LoRA parameters of an all-linear adapter', async () => {
    const r = await benchTrain({ shape: 'gpt2-tiny', batchSize: 2, seqLen: 16, steps: 3, r: 8 });
    expect(r).toMatchObject({ shape: 'gpt2-tiny', modelType: 'gpt2', method: 'lora', device: 'cpu', batchSize: 2, seqLen: 16, steps: 3, peakOf: 'process-rss' });
    expect(r.parameters).toBe(tinyParams);
    expect(r.trainable).toBe(tinyLora(8));
    expect(r.losses).toHaveLength(3);
    for (const l of r.losses) expect(Math.abs(l - Math.log(V))).toBeLessThan(0.1);
    expect(r.tokensPerSecond * (r.stepMs / 1000)).toBeCloseTo(2 * 16, 6);
    expect(r.peakBytes).toBeGreaterThan(1e6);
  });

  test('full fine-tuning trains every parameter', async () => {
    const r = await benchTrain({ shape: 'gpt2-tiny', method: 'full', batchSize: 1, seqLen: 8, steps: 2 });
    expect(r.trainable).toBe(tinyParams);
  });

  test('bad shapes and devices are refused with what was expected', async () => {
    await expect(benchTrain({ shape: 'gpt5' })).rejects.toThrow(/unknown shape 'gpt5'; known: gpt2-124m, smollm-135m/);
    await expect(benchTrain({ shape: 'gpt2-tiny', seqLen: 1000 })).rejects.toThrow(/seqLen 1000 exceeds the model's 128 positions/);
    await expect(benchTrain({ shape: 'gpt2-tiny', device: 'cuda' })).rejects.toThrow(/bench train: device 'cuda' is not available: no GPU backend is active/);
  });

  test('the CLI prints one JSON object with --json and names its errors', () => {
    const ok = spawnSync(process.execPath, [cli, 'bench', 'train', '--config', 'llama-tiny', '--method', 'qlora', '--steps', '1', '--batch-size', '1', '--seq-len', '8', '--json'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    const j = JSON.parse(ok.stdout) as { method: string; modelType: string; losses: number[]; backend: string };
    expect(j).toMatchObject({ method: 'qlora', modelType: 'llama', backend: 'cpu' });
    expect(j.losses).toHaveLength(1);
    const bad = spawnSync(process.execPath, [cli, 'bench', 'train', '--arch', 'llama', '--config', 'gpt2-tiny'], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toBe("lorakit bench train: --arch llama but 'gpt2-tiny' is model_type gpt2\n");
  });
});
