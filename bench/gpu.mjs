// GPU benchmarks of issue #3, each beside its baseline measured in the same run:
//   - NF4 dequantization (block 64, and with double-quantized absmax) against a device-to-device copy;
//   - QLoRA linear forward (dequantize + GEMM) against the bf16 GEMM alone, 8192x8192x8192;
//   - LoRA linear forward+backward (dx, dA, dB) against the frozen dense layer's forward + dx,
//     M=8192, 4096->4096 and 768->2304, r=16;
//   - AdamW over GPT-2-124M-shaped fp32 parameters and over the 96 tensors of a GPT-2 r=16 all-linear
//     adapter, against a copy moving the same 28 bytes per parameter;
//   - generation (#13): decode tokens/s at batch 1, 8, 32 on the shipped model and a SmolLM-135M-shaped
//     random model against the no-cache greedy loop and, with one unmerged r=16 adapter, against it merged;
//     and 32 concurrent streams over 1, 8 and 32 unmerged r=8 adapters against one merged model (goal 0.8x
//     with 32). The same functions as bench/decode.mjs and bench/serve.mjs, with the models on the device.
// The PyTorch/PEFT figures measured on the H200 (../shared/gpu/README.md) are printed beside ours as the
// peer; they come from another process, so only the in-run ratios are ours to claim.
//
//   npm run build:gpu && node bench/gpu.mjs [--out results.json]
//   node bench/gpu.mjs --smoke     (tiny shapes, one iteration: checks the script runs, e.g. on the
//                                  emulated addon in CI, so a GPU session never spends its minutes on it)
//
// Every timing launches a batch of iterations and then waits for the device, so it measures what the
// GPU sustains (host overhead included where it is the bottleneck, as for small AdamW steps).
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { Bench } from 'tinybench';
import { MODELS, BATCHES, runModel, makeAdapters, makePrompts } from './decode.mjs';
import { ADAPTER_COUNTS, STREAMS, REQUESTS, NEW_TOKENS, RANK, adapterCases, engineLoad } from './serve.mjs';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');
const { native } = require('../dist/native/binding.js');
const { gpuCount } = require('../dist/backend.js');

const PEER = {
  copy: 4.24e12, // bytes/s, device-to-device copy (read + write)
  dequantCompiled: 0.98e12,
  dequantNestedCompiled: 1.36e12,
  qloraOverGemm: 1.21,
  loraOverDense4096: 1.98,
  loraOverDense768: 4.2,
  adamwFullMs: 1.79,
  adamwLoraMs: 0.58,
};
const GOAL = { dequant: 3.6e12, qloraOverGemm: 1.1, loraOverDense4096: 1.15, loraOverDense768: 1.3, adamwFullMs: 1.0, adamwLoraMs: 0.1 };

const DEV = 'cuda';
const SMOKE = process.argv.includes('--smoke');
// Sizes: the issue's, or tiny ones for --smoke.
const S = (n) => (SMOKE ? Math.max(8, Math.ceil(n / 64)) : n);
const sync = () => native().gpu.gpuSynchronize(0);

// Median seconds per call of fn, timed over batches of `iters` calls followed by a device sync.
async function time(name, fn, iters) {
  if (SMOKE) iters = 1;
  fn();
  sync();
  const bench = SMOKE ? new Bench({ name, time: 0, warmupTime: 0, warmupIterations: 0, iterations: 1 }) : new Bench({ name, time: 800, warmupTime: 200, iterations: 5 });
  bench.add(name, () => {
    for (let i = 0; i < iters; i++) fn();
    sync();
  });
  await bench.run();
  const r = bench.getTask(name).result;
  if (r?.state !== 'completed') throw new Error(`bench/gpu: ${name} did not complete`);
  return r.latency.p50 / 1e3 / iters;
}

const rows = [];
function report(name, value, unit, baselineName, baseline, extra = {}) {
  // Ours over the baseline: above 1 is better for rates (TB/s), below 1 for times (ms).
  const ratio = value / baseline;
  rows.push({ name, value, unit, baselineName, baseline, ratio, ...extra });
  const fmt = (v) => (unit === 'TB/s' ? (v / 1e12).toFixed(2) : unit === 'ms' ? (v * 1e3).toFixed(3) : v.toFixed(3));
  console.log(
    `${name.padEnd(52)} ${fmt(value).padStart(9)} ${unit.padEnd(5)} ${baselineName.padEnd(30)} ${fmt(baseline).padStart(9)}  ratio ${ratio.toFixed(3)}` +
      Object.entries(extra).map(([k, v]) => `  ${k} ${typeof v === 'number' ? v.toFixed(3) : v}`).join(''),
  );
}

async function dequant() {
  const R = S(8192), C = S(8192), n = R * C;
  const w = lk.randn([R, C], { seed: 1, device: DEV, dtype: 'bfloat16' });
  const plain = lk.nf4.quantize(w, { blockSize: 64 });
  const nested = lk.nf4.quantize(w, { blockSize: 64, doubleQuant: true });
  const out = lk.Tensor.empty([R, C], 'bfloat16', DEV);
  const copySrc = lk.Tensor.empty([R, C], 'bfloat16', DEV);
  const copy = await time('copy', () => native().cast({ src: copySrc.storage(), from: 1, dst: out.storage(), to: 1, n }), 20);
  const copyRate = (4 * n) / copy;
  report(`device copy ${(2 * n) >> 20} MiB (bf16 -> bf16)`, copyRate, 'TB/s', 'H200 copy ceiling (README)', PEER.copy);
  const kernel = await time('dequant', () => native().nf4Dequantize({ packed: plain.packed.storage(), absmax: plain.absmax.storage(), blockSize: 64, n, dst: out.storage(), dtype: 1 }), 20);
  const bytes = 2 * n + n / 2 + (n / 64) * 4;
  report(`nf4 dequantize ${R}x${C} block 64 -> bf16`, bytes / kernel, 'TB/s', 'device copy (this run)', copyRate, {
    goal: GOAL.dequant / 1e12, torchCompile: PEER.dequantCompiled / 1e12,
  });
  const nestedBytes = bytes + n / 64 + (n / 64 / 256) * 4 + (n / 64) * 4;
  const nestedT = await time('dequant dq', () => lk.nf4.dequantize(nested, { dtype: 'bfloat16' }).dispose(), 20);
  report('nf4.dequantize double quant -> bf16 (API)', nestedBytes / nestedT, 'TB/s', 'device copy (this run)', copyRate, {
    goal: GOAL.dequant / 1e12, torchCompile: PEER.dequantNestedCompiled / 1e12,
  });
  for (const t of [w, out, copySrc]) t.dispose();
  plain.dispose();
  nested.dispose();
}

async function qlora() {
  const N = S(8192);
  const x = lk.randn([N, N], { seed: 2, device: DEV, dtype: 'bfloat16' });
  const w = lk.randn([N, N], { seed: 3, device: DEV, dtype: 'bfloat16', std: 0.02 });
  const q = lk.nf4.quantize(w, { blockSize: 64, doubleQuant: true });
  const gemm = await time('gemm', () => lk.ops.matmul(x, w, { transposeB: true }).dispose(), 5);
  const fused = await time('qlora', () => lk.ops.matmul(x, q, { transposeB: true }).dispose(), 5);
  const flops = 2 * N ** 3;
  console.log(`bf16 GEMM ${N}³ (fp32 out): ${(flops / gemm / 1e12).toFixed(0)} TFLOP/s (cuBLAS bf16 16384x8192x8192 on the H200: 754)`);
  report(`QLoRA forward ${N}³ (dequant + GEMM)`, fused, 'ms', 'bf16 GEMM alone (this run)', gemm, { goal: GOAL.qloraOverGemm, torchCompile: PEER.qloraOverGemm });
  for (const t of [x, w]) t.dispose();
  q.dispose();
}

async function loraLayer(inFull, outFull, goal, peer) {
  const M = S(8192), r = 16, inF = S(inFull), outF = S(outFull);
  const x = lk.randn([M, inF], { seed: 4, device: DEV, dtype: 'bfloat16' });
  const dy = lk.randn([M, outF], { seed: 5, device: DEV, dtype: 'bfloat16' });
  const w = lk.randn([outF, inF], { seed: 6, device: DEV, dtype: 'bfloat16', std: 0.02 });
  const a = lk.randn([r, inF], { seed: 7, device: DEV, std: 0.02 });
  const b = lk.randn([outF, r], { seed: 8, device: DEV, std: 0.02 });
  const params = { weight: w, loraA: a, loraB: b, scale: 2 };
  const dense = await time('dense', () => {
    lk.ops.matmul(x, w, { transposeB: true }).dispose();
    lk.ops.matmul(dy, w).dispose();
  }, 5);
  const fused = await time('lora', () => {
    const f = lk.lora.linearForward(x, params);
    const g = lk.lora.linearBackward(dy, x, f.xa, params);
    for (const t of [f.y, f.xa, g.dx, g.dLoraA, g.dLoraB]) t?.dispose();
  }, 5);
  report(`LoRA fwd+bwd M=${M} ${inF}->${outF} r=16`, fused, 'ms', 'frozen dense fwd + dx (this run)', dense, { goal, peft: peer });
  for (const t of [x, dy, w, a, b]) t.dispose();
}

// GPT-2 124M: wte, wpe, 12 x (ln1 w/b, c_attn w/b, attn c_proj w/b, ln2 w/b, c_fc w/b, mlp c_proj w/b), ln_f w/b.
function gpt2Shapes() {
  const s = [[50257, 768], [1024, 768]];
  for (let l = 0; l < 12; l++) s.push([768], [768], [768, 2304], [2304], [768, 768], [768], [768], [768], [768, 3072], [3072], [3072, 768], [768]);
  s.push([768], [768]);
  return s;
}
function gpt2LoraShapes() {
  const s = [];
  for (let l = 0; l < 12; l++)
    for (const [i, o] of [[768, 2304], [768, 768], [768, 3072], [3072, 768]]) s.push([16, i], [o, 16]);
  return s;
}

async function adamw(name, shapes, goalMs, peerMs) {
  if (SMOKE) shapes = shapes.map((s) => s.map(S));
  const params = shapes.map((s, i) => lk.randn(s, { seed: i, device: DEV, std: 0.02 }));
  const grads = shapes.map((s, i) => lk.randn(s, { seed: 1000 + i, device: DEV, std: 0.01 }));
  const numel = params.reduce((n, p) => n + p.numel, 0);
  const opt = new lk.AdamW(params, { lr: 1e-4, weightDecay: 0.01 });
  const step = await time(name, () => opt.step(grads), 50);
  // A copy that moves the bytes AdamW must (read p, g, m, v; write p, m, v: 28 bytes per parameter).
  const big = lk.Tensor.empty([Math.ceil((numel * 28) / 8)], 'float32', DEV);
  const big2 = lk.Tensor.empty([Math.ceil((numel * 28) / 8)], 'float32', DEV);
  const copy = await time(`${name} copy`, () => native().cast({ src: big.storage(), from: 0, dst: big2.storage(), to: 0, n: big.numel }), 50);
  report(`AdamW ${name} (${(numel / 1e6).toFixed(2)}M params, ${shapes.length} tensors)`, step, 'ms', 'copy moving 28 B/param', copy, {
    goalMs, torchFusedMs: peerMs,
  });
  opt.dispose();
  for (const t of [...params, ...grads, big, big2]) t.dispose();
}

// --smoke: the shipped model alone (a 135M model on the emulated addon would take the CI minutes).
const GEN_MODELS = SMOKE ? MODELS.slice(0, 1) : MODELS;

// 64 new tokens for both models: the device runs the 135M model's no-cache floor at that length in
// seconds, and the CPU suite's 8 would leave the engine's rate mostly prefill.
async function decode() {
  for (const spec of GEN_MODELS) {
    const rows = await runModel(spec, { device: DEV, batches: SMOKE ? [1, 2] : BATCHES, newTokens: SMOKE ? 2 : 64 });
    for (const r of rows)
      report(`decode ${r.model.split(' ')[0]} B=${r.batch} +${r.newTokens} ${r.name}`, r.value, 'tok/s', `${r.baselineName} (this run)`, r.baseline, {
        decodeOnly: r.decode, baselineDecodeOnly: r.decodeBaseline, decodeRatio: r.decodeRatio, same: r.same,
      });
  }
}

async function serving() {
  const o = SMOKE ? { counts: [2], streams: 2, requests: 1, newTokens: 2 } : { counts: ADAPTER_COUNTS, streams: STREAMS, requests: REQUESTS, newTokens: NEW_TOKENS };
  for (const spec of GEN_MODELS) {
    const { model, tokenizer } = spec.make(DEV);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gpu-serve-'));
    try {
      const dirs = makeAdapters(model, tmp, Math.max(...o.counts), RANK);
      const prompts = makePrompts(model, tokenizer, o.streams * o.requests);
      const cases = await adapterCases(model, tokenizer, dirs, (engine) => ({ load: (name, x) => engineLoad(engine, prompts, { ...x, adapterOf: name }), close: async () => {} }), o);
      for (const n of o.counts)
        report(`serve ${spec.name.split(' ')[0]} ${o.streams} streams, ${n} adapters r=${RANK}`, cases[n].tps, 'tok/s', 'one merged model (this run)', cases.merged.tps, {
          goal: n === 32 ? 0.8 : '-', p50ms: cases[n].p50, p99ms: cases[n].p99, mergedP50ms: cases.merged.p50, mergedP99ms: cases.merged.p99,
        });
    } finally {
      model.dispose();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
}

async function main() {
  if (gpuCount() === 0) {
    console.error(`bench/gpu: no GPU backend is active (${lk.backend().gpuUnavailableReason}); nothing measured`);
    process.exit(2);
  }
  const info = lk.backend();
  console.log(`${new Date().toISOString()}  ${info.gpus.map((g) => `${g.name} (${g.arch}, ${g.multiprocessors} SMs)`).join(', ')}`);
  console.log(`runtime ${info.gpuRuntime.platform} ${info.gpuRuntime.runtime}, driver ${info.gpuRuntime.driver}, GEMM engine: ${info.gpuRuntime.gemmEngine}`);
  await dequant();
  await qlora();
  await loraLayer(4096, 4096, GOAL.loraOverDense4096, PEER.loraOverDense4096);
  await loraLayer(768, 2304, GOAL.loraOverDense768, PEER.loraOverDense768);
  await adamw('gpt2-124M full', gpt2Shapes(), GOAL.adamwFullMs, PEER.adamwFullMs);
  await adamw('gpt2 lora r16 all-linear', gpt2LoraShapes(), GOAL.adamwLoraMs, PEER.adamwLoraMs);
  await decode();
  await serving();
  const i = process.argv.indexOf('--out');
  if (i > 0) fs.writeFileSync(process.argv[i + 1], JSON.stringify({ date: new Date().toISOString(), backend: info, rows }, null, 2));
}

await main();
