// Training-step throughput on the CPU: the GPT-2 fixture's shape scaled to 6 layers x 256 wide
// (vocab 512, 64 positions), LoRA r=16 all-linear and full fine-tuning, beside the ceiling the GEMM
// rate allows for the same step's matrix FLOPs (6 x parameters x tokens for full fine-tuning, and
// 4 x frozen + 6 x adapter parameters x tokens for LoRA, which needs no frozen-weight gradients).
//
//   node bench/train.mjs     (after npm run build)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');

const SHAPE = { layers: 6, hidden: 256, heads: 4, vocab: 512, positions: 64 };
const BATCH = 8, SEQ = 64;

function buildModel() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bench-'));
  const { layers: L, hidden: D, heads, vocab: V, positions: P } = SHAPE;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    model_type: 'gpt2', n_layer: L, n_embd: D, n_head: heads, vocab_size: V, n_positions: P, n_inner: null,
    activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, tie_word_embeddings: true,
  }));
  const w = {};
  let seed = 1;
  const rnd = (shape, std = 0.02) => lk.randn(shape, { seed: seed++, std });
  w['transformer.wte.weight'] = rnd([V, D]);
  w['transformer.wpe.weight'] = rnd([P, D]);
  w['transformer.ln_f.weight'] = lk.ones([D]);
  w['transformer.ln_f.bias'] = lk.zeros([D]);
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}`;
    for (const n of ['ln_1', 'ln_2']) {
      w[`${p}.${n}.weight`] = lk.ones([D]);
      w[`${p}.${n}.bias`] = lk.zeros([D]);
    }
    for (const [n, i, o] of [['attn.c_attn', D, 3 * D], ['attn.c_proj', D, D], ['mlp.c_fc', D, 4 * D], ['mlp.c_proj', 4 * D, D]]) {
      w[`${p}.${n}.weight`] = rnd([i, o]);
      w[`${p}.${n}.bias`] = lk.zeros([o]);
    }
  }
  lk.io.writeSafetensors(path.join(dir, 'model.safetensors'), w);
  for (const t of Object.values(w)) t.dispose();
  return dir;
}

function gemmRate() {
  // Our own GEMM on the step's most common shape: the ceiling for matrix work.
  const a = lk.randn([BATCH * SEQ, SHAPE.hidden], { seed: 7 }), b = lk.randn([4 * SHAPE.hidden, SHAPE.hidden], { seed: 8 });
  for (let i = 0; i < 3; i++) lk.ops.matmul(a, b, { transposeB: true }).dispose();
  const reps = 20, t0 = performance.now();
  for (let i = 0; i < reps; i++) lk.ops.matmul(a, b, { transposeB: true }).dispose();
  const ms = (performance.now() - t0) / reps;
  a.dispose();
  b.dispose();
  return (2 * BATCH * SEQ * SHAPE.hidden * 4 * SHAPE.hidden) / (ms * 1e6);
}

export async function run() {
  const dir = buildModel();
  const ids = lk.tensor(BigInt64Array.from({ length: BATCH * SEQ }, (_, i) => BigInt((i * 37) % SHAPE.vocab)), [BATCH, SEQ]);
  const gflops = gemmRate();
  const rows = [];
  for (const method of ['lora', 'full']) {
    const model = lk.loadModel(dir);
    if (method === 'lora') lk.lora.addAdapter(model, { r: 16, loraAlpha: 32, initLoraWeights: false });
    else model.requireFullGrad();
    const params = model.parameters();
    const opt = new lk.AdamW(params.map((p) => p.param), { lr: 1e-4 });
    const grads = params.map((p) => p.grad);
    const step = () => {
      model.zeroGrad();
      model.forwardBackward(ids, { train: true });
      opt.step(grads, { maxGradNorm: 1 });
    };
    const bench = new Bench({ time: 4000, warmupTime: 500 });
    bench.add(method, step);
    await bench.run();
    const ms = bench.tasks[0].result.latency.mean;
    const tokens = BATCH * SEQ;
    const frozen = [...model.linears.values()].reduce((s, l) => s + l.weight.numel, 0) + SHAPE.vocab * SHAPE.hidden;
    const adapter = params.reduce((s, p) => s + p.param.numel, 0);
    const flops = method === 'full' ? 6 * adapter * tokens : (4 * frozen + 6 * adapter) * tokens;
    const ceiling = (gflops * 1e9) / flops * tokens; // tokens/s if every FLOP ran at the GEMM rate
    const tps = tokens / (ms / 1000);
    rows.push({ name: `train step ${method} gpt2 6x256 B${BATCH} T${SEQ}`, value: tps, unit: 'tok/s', baseline: ceiling, baselineName: `GEMM ceiling (${gflops.toFixed(0)} GFLOP/s)`, ratio: tps / ceiling, ms });
    opt.dispose();
    model.dispose();
  }
  ids.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
  return { rows };
}

export function print({ rows }) {
  for (const r of rows)
    console.log(`${r.name.padEnd(40)} ${r.value.toFixed(0).padStart(8)} ${r.unit} (${r.ms.toFixed(1)} ms/step)   ${r.baselineName} ${r.baseline.toFixed(0).padStart(8)} tok/s   ratio ${r.ratio.toFixed(2)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
