// GEMM throughput beside numpy (OpenBLAS) on the same shapes, in the same run.
//
//   node bench/gemm.mjs      (after npm run build)
//
// numpy runs in a child python3 with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed from its environment:
// those pin old OpenBLAS builds to a safe but slow kernel on some machines. Our GEMM is timed through
// the public ops.matmul (allocation of the result included); numpy's `a @ b` allocates too.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');

// M x K x N as the issue states them: activations [M, K] times a weight giving N outputs.
export const SHAPES = [
  [2048, 768, 768],
  [2048, 768, 3072],
  [2048, 3072, 768],
];

const NUMPY = `
import json, os, sys, time
import numpy as np
info = {"numpy": np.__version__}
try:
    from threadpoolctl import threadpool_info
    info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for d in threadpool_info()]
except Exception:
    cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
    info["blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "unknown")
rows = []
for m, k, n in json.loads(sys.argv[1]):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    for _ in range(3): a @ b
    times = []
    for _ in range(15):
        t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
    times.sort()
    rows.append(2 * m * k * n / times[len(times) // 2] / 1e9)
print(json.dumps({"info": info, "gflops": rows}))
`;

export function numpyGflops(shapes) {
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  try {
    return JSON.parse(execFileSync('python3', ['-c', NUMPY, JSON.stringify(shapes)], { env }).toString());
  } catch (e) {
    return { info: { error: `numpy unavailable: ${e.message.split('\n')[0]}` }, gflops: shapes.map(() => NaN) };
  }
}

export async function run() {
  const np = numpyGflops(SHAPES);
  const rows = [];
  for (const [i, [m, k, n]] of SHAPES.entries()) {
    const a = lk.randn([m, k], { seed: 1 });
    const w = lk.randn([n, k], { seed: 2 }); // weights are stored [out, in]: the transposed-B case
    const b = lk.randn([k, n], { seed: 3 });
    const ab = a.to('bfloat16');
    const wb = w.to('bfloat16');
    const bench = new Bench({ time: 1500, warmupTime: 200 });
    bench
      .add('fp32 A·B', () => lk.ops.matmul(a, b).dispose())
      .add('fp32 A·Wᵀ', () => lk.ops.matmul(a, w, { transposeB: true }).dispose())
      .add('bf16 A·Wᵀ (fp32 out)', () => lk.ops.matmul(ab, wb, { transposeB: true, outDtype: 'float32' }).dispose());
    await bench.run();
    const flops = 2 * m * k * n;
    for (const t of bench.tasks) {
      const g = flops / (t.result.latency.mean * 1e6);
      rows.push({ name: `gemm ${m}x${k}x${n} ${t.name}`, value: g, unit: 'GFLOP/s', baseline: np.gflops[i], baselineName: 'numpy fp32', ratio: g / np.gflops[i] });
    }
    for (const t of [a, w, b, ab, wb]) t.dispose();
  }
  return { rows, info: { numpy: np.info, backend: lk.backend().cpu } };
}

export function print({ rows, info }) {
  console.log(`numpy: ${JSON.stringify(info.numpy)}`);
  console.log(`lorakit cpu: ${JSON.stringify(info.backend)}`);
  for (const r of rows)
    console.log(`${r.name.padEnd(44)} ${r.value.toFixed(1).padStart(7)} ${r.unit}   ${r.baselineName} ${r.baseline.toFixed(1).padStart(7)}   ratio ${r.ratio.toFixed(2)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
