// The model loop on a GPU: a 50-step LoRA run (and a short QLoRA run) of the shipped model on cuda and on
// the CPU, step by step, must give the same loss curve within float32 reordering noise. Skipped, saying
// so, without a GPU backend.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backend, tensor, train } from '../../lib';
import { MODEL_SHAPES, randomModel } from '../../lib/models/random';
import { normRelErr } from '../helpers/reference';
import { gpuCount } from '../../lib/backend';
import { defaultJob } from '../../lib/cli/commands/train';

const available = gpuCount() > 0;
if (!available) console.warn(`\n*** GPU training test SKIPPED: no GPU backend is active (${backend().gpuUnavailableReason}) ***\n`);
const suite = available ? describe : describe.skip;

// LORAKIT_GPU_TEST_QUICK=1 (the host emulator's run, where a GPU step takes seconds): a few small steps
// and a short eval set instead of the full 50-step job.
const quick = process.env.LORAKIT_GPU_TEST_QUICK === '1';

async function curve(device: 'cpu' | 'cuda', method: 'lora' | 'qlora', steps: number): Promise<{ losses: number[]; norms: number[]; evals: number[] }> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), `lorakit-gpu-train-${device}-`));
  try {
    const job = defaultJob(out);
    if (quick) {
      const evalFile = path.join(out, 'eval.jsonl');
      fs.writeFileSync(evalFile, fs.readFileSync(job.evalData!, 'utf8').split('\n').slice(0, 6).join('\n') + '\n');
      Object.assign(job, { batchSize: 2, seqLen: 32, evalData: evalFile, retainData: undefined });
    }
    const h = train({ ...job, method, steps, device, progress: 'none', evalEvery: steps });
    const losses: number[] = [], norms: number[] = [];
    h.on('step', (s) => {
      losses.push(s.loss);
      norms.push(s.gradNorm);
    });
    const r = await h.done;
    return { losses, norms, evals: r.evals.map((e) => e.loss) };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

suite('training on the GPU follows the CPU', () => {
  for (const [method, steps] of quick ? ([['lora', 3], ['qlora', 2]] as const) : ([['lora', 50], ['qlora', 10]] as const))
    test(`${method}: ${steps} steps, loss curve, gradient norms and evals`, async () => {
      const cpu = await curve('cpu', method, steps);
      const gpu = await curve('cuda', method, steps);
      expect(gpu.losses).toHaveLength(steps);
      gpu.losses.forEach((l, i) => expect(Math.abs(l - cpu.losses[i]!)).toBeLessThanOrEqual(2e-3 * Math.max(1, cpu.losses[i]!)));
      gpu.norms.forEach((n, i) => expect(Math.abs(n - cpu.norms[i]!)).toBeLessThanOrEqual(1e-2 * cpu.norms[i]! + 1e-6));
      gpu.evals.forEach((e, i) => expect(Math.abs(e - cpu.evals[i]!)).toBeLessThanOrEqual(2e-3 * Math.max(1, cpu.evals[i]!)));
    });

  // Full fine-tuning of both architectures (GPT-2's Conv1D weights are transposed at load), with the
  // classifier in blocks of rows: every gradient on the GPU against the CPU's.
  for (const shape of ['gpt2-tiny', 'llama-tiny'])
    test(`${shape}: full fine-tuning gradients, blocked classifier`, () => {
      const step = (device: 'cpu' | 'cuda') => {
        using m = randomModel(MODEL_SHAPES[shape]!, { seed: 4, device });
        m.requireFullGrad();
        m.headChunkElements = 7 * m.config.vocabSize;
        using ids = tensor(Array.from({ length: 2 * 24 }, (_, i) => BigInt((i * 37 + 3) % m.config.vocabSize)), [2, 24], { dtype: 'int64', device });
        const r = m.forwardBackward(ids);
        return { loss: r.loss, grads: m.parameters().map((p) => [p.name, Float64Array.from(p.grad.toFloat32Array())] as const) };
      };
      const cpu = step('cpu'), gpu = step('cuda');
      expect(Math.abs(gpu.loss - cpu.loss)).toBeLessThan(1e-5 * cpu.loss);
      gpu.grads.forEach(([name, g], i) => {
        expect(name).toBe(cpu.grads[i]![0]);
        const err = normRelErr(g, cpu.grads[i]![1]);
        if (!(err < 1e-4)) throw new Error(`${shape}: gradient of ${name} differs by ${err}`);
      });
    });
});
