// The fused LoRA layer's forward + backward (dx, dA, dB) against the frozen dense layer's forward + dx,
// in the same run: the LoRA overhead a training step pays per adapted linear.
//
//   node bench/lora.mjs      (after npm run build)
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');

// GPT-2's fused c_attn at 2048 tokens: 768 -> 2304, r = 16 (the issue's target shape).
export const CASES = [{ m: 2048, inF: 768, out: 2304, r: 16 }];

export async function run() {
  const rows = [];
  for (const { m, inF, out, r } of CASES) {
    const x = lk.randn([m, inF], { seed: 1 });
    const dy = lk.randn([m, out], { seed: 2 });
    const weight = lk.randn([out, inF], { seed: 3, std: 0.02 });
    const bias = lk.zeros([out]);
    const params = { weight, bias, loraA: lk.randn([r, inF], { seed: 4, std: 0.02 }), loraB: lk.randn([out, r], { seed: 5, std: 0.02 }), scale: 2 };
    const nf4w = lk.nf4.quantize(weight, { blockSize: 64, doubleQuant: true });
    const qparams = { ...params, weight: nf4w };
    const dense = () => {
      lk.ops.matmul(x, weight, { transposeB: true, bias }).dispose();
      lk.ops.matmul(dy, weight).dispose();
    };
    const loraStep = (p) => () => {
      const { y, xa } = lk.lora.linearForward(x, p);
      const g = lk.lora.linearBackward(dy, x, xa, p, { biasGrad: false });
      for (const t of [y, xa, g.dx, g.dLoraA, g.dLoraB]) t.dispose();
    };
    const bench = new Bench({ time: 2000, warmupTime: 300 });
    bench.add('dense fwd+dx', dense).add('lora fwd+bwd', loraStep(params)).add('qlora (nf4 dq) fwd+bwd', loraStep(qparams));
    await bench.run();
    const [d, l, q] = bench.tasks.map((t) => t.result.latency.mean);
    const name = `${m}x${inF}->${out} r=${r}`;
    rows.push({ name: `lora fwd+bwd ${name}`, value: l, unit: 'ms', baseline: d, baselineName: 'dense fwd+dx', ratio: l / d });
    rows.push({ name: `qlora fwd+bwd ${name}`, value: q, unit: 'ms', baseline: d, baselineName: 'dense fwd+dx', ratio: q / d });
    for (const t of [x, dy, weight, bias, params.loraA, params.loraB]) t.dispose();
    nf4w.dispose();
  }
  return { rows };
}

export function print({ rows }) {
  for (const r of rows)
    console.log(`${r.name.padEnd(40)} ${r.value.toFixed(2).padStart(8)} ${r.unit}   ${r.baselineName} ${r.baseline.toFixed(2).padStart(8)} ms   ratio ${r.ratio.toFixed(3)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
