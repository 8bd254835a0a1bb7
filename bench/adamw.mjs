// The fused AdamW step (with clipping, so the gradient norm pass is included) over GPT-2-shaped
// parameter lists, beside a memcpy that moves the bytes the update itself must move (read param, grad,
// m, v; write param, m, v: 28 bytes per parameter; the norm reads the gradients once more), in the same
// run.
//
//   node bench/adamw.mjs     (after npm run build)
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');

// GPT-2 124M's 148 tensors, and the 96 tensors of an r=16 all-linear LoRA adapter on it.
function gpt2Full() {
  const shapes = [[50257, 768], [1024, 768]];
  for (let l = 0; l < 12; l++)
    shapes.push([768], [768], [768, 2304], [2304], [768, 768], [768], [768], [768], [768, 3072], [3072], [3072, 768], [768]);
  shapes.push([768], [768]);
  return shapes;
}
function gpt2Lora(r = 16) {
  const shapes = [];
  for (let l = 0; l < 12; l++)
    for (const [i, o] of [[768, 2304], [768, 768], [768, 3072], [3072, 768]]) shapes.push([r, i], [o, r]);
  return shapes;
}

export async function run() {
  const rows = [];
  for (const [name, shapes] of [['gpt2-124M full', gpt2Full()], ['gpt2 lora r16 all-linear', gpt2Lora()]]) {
    const params = shapes.map((s, i) => lk.randn(s, { seed: i, std: 0.02 }));
    const grads = shapes.map((s, i) => lk.randn(s, { seed: 1000 + i, std: 1e-3 }));
    const opt = new lk.AdamW(params, { lr: 1e-4, weightDecay: 0.01 });
    const n = params.reduce((a, p) => a + p.numel, 0);
    const src = new Float32Array((n * 28) / 8); // copying 14 B/param reads 14 and writes 14
    const dst = new Float32Array(src.length);
    const bench = new Bench({ time: 2000, warmupTime: 200 });
    bench.add('adamw step', () => opt.step(grads, { maxGradNorm: 1 })).add('memcpy moving 28 B/param', () => dst.set(src));
    await bench.run();
    const [step, copy] = bench.tasks.map((t) => t.result.latency.mean);
    rows.push({ name: `adamw ${name} (${(n / 1e6).toFixed(2)}M params, ${shapes.length} tensors)`, value: step, unit: 'ms', baseline: copy, baselineName: 'memcpy moving 28 B/param', ratio: step / copy });
    opt.dispose();
    for (const t of [...params, ...grads]) t.dispose();
  }
  return { rows };
}

export function print({ rows }) {
  for (const r of rows)
    console.log(`${r.name.padEnd(56)} ${r.value.toFixed(2).padStart(8)} ${r.unit}   ${r.baselineName} ${r.baseline.toFixed(2).padStart(8)} ms   ratio ${r.ratio.toFixed(2)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
