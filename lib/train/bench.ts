/**
 * Training-step throughput on a randomly initialised model of a given shape (`lorakit bench train`): the
 * same step the trainer runs (forward, backward, clipped AdamW) on random token batches, with no
 * download and no data. Reports tokens per second, the step time and the peak memory.
 */
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { parameterCounts, parseModelConfig, type ModelConfig } from '../io/config';
import { addAdapter } from '../adapters/adapter';
import { type CausalLM } from '../models/causal-lm';
import { MODEL_SHAPES, randomModel } from '../models/random';
import { native } from '../native/binding';
import { checkNumber, type Device, checkDevice } from '../check';
import { memory, tensor } from '../tensor/tensor';
import { AdamW } from './adamw';
import { METHODS, type Method } from './options';

export interface BenchTrainOptions {
  /** A name of MODEL_SHAPES, or `config.json` fields. */
  shape: string | Record<string, unknown>;
  method?: Method;
  r?: number;
  batchSize?: number;
  seqLen?: number;
  /** Measured steps (after the warm-up steps). */
  steps?: number;
  warmupSteps?: number;
  device?: Device;
  /** Storage of the frozen linear weights for LoRA (QLoRA always uses NF4). */
  dtype?: 'float32' | 'bfloat16';
  seed?: number;
}

export interface BenchTrainResult {
  shape: string;
  modelType: string;
  method: Method;
  device: Device;
  batchSize: number;
  seqLen: number;
  steps: number;
  parameters: number;
  trainable: number;
  /** Median over the measured steps. */
  stepMs: number;
  tokensPerSecond: number;
  losses: number[];
  /** GPU: the allocator's peak during the measured steps; CPU: the process's peak resident memory. */
  peakBytes: number;
  peakOf: 'gpu-allocator' | 'process-rss';
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function resolveShape(shape: BenchTrainOptions['shape']): { name: string; config: ModelConfig } {
  if (typeof shape === 'string') {
    const fields = MODEL_SHAPES[shape];
    if (!fields) throw new LorakitTypeError('ERR_INVALID_ARG', `bench train: unknown shape '${shape}'; known: ${Object.keys(MODEL_SHAPES).join(', ')}`);
    return { name: shape, config: parseModelConfig(fields, `bench train: shape '${shape}'`) };
  }
  return { name: 'config', config: parseModelConfig(shape, 'bench train: config') };
}

// Token ids from a small LCG: cheap, seeded, and spread over the whole vocabulary.
function randomIds(count: number, vocab: number, seed: number): BigInt64Array {
  const out = new BigInt64Array(count);
  let s = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = BigInt(s % vocab);
  }
  return out;
}

export async function benchTrain(options: BenchTrainOptions): Promise<BenchTrainResult> {
  const op = 'bench train';
  const { name, config } = resolveShape(options.shape);
  const method = options.method ?? 'lora';
  if (!METHODS.includes(method as Method)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: method must be lora, qlora or full, got '${String(method)}'`);
  const B = checkNumber(op, 'batchSize', options.batchSize ?? 4, { integer: true, min: 1 });
  const T = checkNumber(op, 'seqLen', options.seqLen ?? 128, { integer: true, min: 2 });
  const steps = checkNumber(op, 'steps', options.steps ?? 5, { integer: true, min: 1 });
  const warmup = checkNumber(op, 'warmupSteps', options.warmupSteps ?? 1, { integer: true, min: 0 });
  const r = checkNumber(op, 'r', options.r ?? 16, { integer: true, min: 1 });
  const device = checkDevice(op, options.device);
  if (config.ropeTheta === null && T > config.maxPositions)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: seqLen ${T} exceeds the model's ${config.maxPositions} positions`);
  const seed = options.seed ?? 0;

  const model: CausalLM = randomModel(config, {
    device, seed, quantize: method === 'qlora', dtype: method === 'lora' ? (options.dtype ?? 'float32') : 'float32',
  });
  let optimizer: AdamW | undefined;
  try {
    if (method === 'full') model.requireFullGrad();
    else addAdapter(model, { r, loraAlpha: 2 * r, targetModules: 'all-linear', seed });
    const params = model.parameters();
    optimizer = new AdamW(params.map((p) => p.param), { lr: 1e-4, weightDecay: 0 });
    const grads = params.map((p) => p.grad);
    // checkDevice has made sure a GPU device exists.
    const gpu = device === 'cpu' ? -1 : Number(device.slice(5));

    const losses: number[] = [];
    const times: number[] = [];
    for (let s = 0; s < warmup + steps; s++) {
      if (s === warmup && gpu >= 0) native().gpu!.gpuResetPeak(gpu);
      using ids = tensor(randomIds(B * T, config.vocabSize, seed * 7919 + s), [B, T], { device });
      const t0 = performance.now();
      model.zeroGrad();
      const res = model.forwardBackward(ids, { train: true, seed: s });
      optimizer.step(grads, { maxGradNorm: 1 });
      if (gpu >= 0) native().gpu!.gpuSynchronize(gpu);
      const ms = performance.now() - t0;
      if (!Number.isFinite(res.loss)) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: the loss is ${res.loss} at step ${s + 1}`);
      if (s >= warmup) {
        times.push(ms);
        losses.push(res.loss);
      }
      // Lets a SIGINT or a progress timer in the caller run between steps.
      await new Promise<void>((done) => setImmediate(done));
    }
    const stepMs = median(times);
    const peak = gpu >= 0 ? memory().gpus[gpu]!.peakBytes : process.resourceUsage().maxRSS * 1024;
    return {
      shape: name, modelType: config.modelType, method, device, batchSize: B, seqLen: T, steps,
      parameters: parameterCounts(config).total, trainable: params.reduce((n, p) => n + p.param.numel, 0),
      stepMs, tokensPerSecond: (B * T) / (stepMs / 1000), losses,
      peakBytes: peak, peakOf: gpu >= 0 ? 'gpu-allocator' : 'process-rss',
    };
  } finally {
    optimizer?.dispose();
    model.dispose();
  }
}

