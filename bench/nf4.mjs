// NF4 dequantization throughput beside a plain memcpy of the same output size, in one run.
//
//   node bench/nf4.mjs        (after npm run build:gyp && npx tsc -p tsconfig.json)
//
// GB/s counts bytes written plus bytes read. A memcpy of the output size reads and writes it once; a
// dequantization writes the output and reads the packed codes and the absmax (with doubleQuant it also
// reads the 8-bit absmax codes and their scales, and writes then reads back the decoded float32 absmax).
// "nf4.dequantize" rows go through the public API, so they include allocating the output and the first
// touch of its pages; "kernel" rows write into a preallocated output, like the memcpy does.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');
const { native } = require('../dist/native/binding.js');
const { DTYPE_CODE } = require('../dist/tensor/dtype.js');

const ROWS = 4096;
const COLS = 4096;
const BLOCK = 64;

function gbps(bytes, ms) {
  return bytes / (ms * 1e6);
}

export async function run() {
  const n = ROWS * COLS;
  const x = lk.randn([ROWS, COLS], { seed: 1 });
  const plain = lk.nf4.quantize(x, { blockSize: BLOCK });
  const nested = lk.nf4.quantize(x, { blockSize: BLOCK, doubleQuant: true });
  x.dispose();
  const absmaxBytes = plain.absmax.nbytes;
  const readPlain = plain.packed.nbytes + absmaxBytes;
  const readNested = nested.packed.nbytes + nested.absmaxCodes.nbytes + nested.absmaxScales.nbytes + absmaxBytes;

  const outputs = { float32: lk.Tensor.empty([ROWS, COLS], 'float32'), bfloat16: lk.Tensor.empty([ROWS, COLS], 'bfloat16') };
  const kernel = (dtype) => {
    const dst = outputs[dtype].storage();
    const args = { packed: plain.packed.storage(), absmax: plain.absmax.storage(), blockSize: BLOCK, n, dst, dtype: DTYPE_CODE[dtype] };
    return () => native().nf4Dequantize(args);
  };
  const api = (q, dtype) => () => lk.nf4.dequantize(q, { dtype }).dispose();

  const cases = [];
  for (const dtype of ['float32', 'bfloat16']) {
    const outBytes = n * (dtype === 'float32' ? 4 : 2);
    const src = Buffer.alloc(outBytes, 1);
    const dst = Buffer.alloc(outBytes);
    const memcpy = `memcpy ${outBytes >> 20} MiB`;
    cases.push(
      { name: memcpy, fn: () => src.copy(dst), bytes: 2 * outBytes },
      { name: `kernel -> ${dtype}`, fn: kernel(dtype), bytes: outBytes + readPlain, baseline: memcpy },
      { name: `nf4.dequantize -> ${dtype}`, fn: api(plain, dtype), bytes: outBytes + readPlain, baseline: memcpy },
      {
        name: `nf4.dequantize(doubleQuant) -> ${dtype}`,
        fn: api(nested, dtype),
        bytes: outBytes + readNested + absmaxBytes,
        baseline: memcpy,
      },
    );
  }

  const bench = new Bench({ name: 'nf4 dequantize 4096x4096, blockSize 64', time: 1500, warmupTime: 300 });
  for (const c of cases) bench.add(c.name, c.fn);
  await bench.run();

  const gbpsOf = new Map();
  for (const c of cases) {
    const task = bench.getTask(c.name);
    if (task?.result?.state !== 'completed') throw new Error(`bench/nf4: ${c.name} did not complete`);
    gbpsOf.set(c.name, gbps(c.bytes, task.result.latency.p50));
  }
  const rows = cases
    .filter((c) => c.baseline)
    .map((c) => {
      const value = gbpsOf.get(c.name);
      const baseline = gbpsOf.get(c.baseline);
      return { name: c.name, value, unit: 'GB/s', baseline, baselineName: c.baseline, ratio: value / baseline };
    });

  plain.dispose();
  nested.dispose();
  outputs.float32.dispose();
  outputs.bfloat16.dispose();
  return rows;
}

export function print(rows) {
  for (const r of rows)
    console.log(`${r.name.padEnd(40)} ${r.value.toFixed(2).padStart(7)} ${r.unit}   ${r.baselineName} ${r.baseline.toFixed(2).padStart(6)} ${r.unit}   ratio ${r.ratio.toFixed(3)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(`threads: ${lk.backend().cpu.threads}`);
  print(await run());
}
