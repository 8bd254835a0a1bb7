// The model loop on a GPU: a 50-step LoRA run (and a short QLoRA run) of the shipped model on cuda and on
// the CPU, step by step, must give the same loss curve within float32 reordering noise. Skipped, saying
// so, without a GPU backend.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backend, train } from '../../lib';
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
});
