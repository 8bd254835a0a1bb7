// Runs every benchmark and prints each result beside its baseline with the ratio.
//
//   npm run bench                 (after npm run build)
//   npm run bench -- gemm lora    (a subset)
//
// Each suite measures its baseline in the same run: numpy/OpenBLAS for GEMM, the frozen dense layer
// for the LoRA layer, memcpy for NF4 dequantization, and memcpy of the bytes AdamW must touch for the
// optimizer, the no-cache greedy loop and a merged adapter for decoding, and one merged model for
// multi-adapter serving. Record new figures, with the date and the machine, in bench/RESULTS.md. The GPU suites are
// bench/gpu.mjs (run on a machine with a GPU; scripts/gpu-check.sh runs them with the parity suite).
import * as os from 'node:os';

const SUITES = ['gemm', 'lora', 'nf4', 'adamw', 'train', 'decode', 'serve'];
const wanted = process.argv.slice(2).filter((a) => SUITES.includes(a));
const selected = wanted.length ? wanted : SUITES;

console.log(`# lorakit benchmarks, ${new Date().toISOString().slice(0, 10)}, ${os.cpus()[0]?.model ?? 'unknown CPU'} x${os.cpus().length}, node ${process.version}`);
for (const name of selected) {
  console.log(`\n## ${name}`);
  const mod = await import(`./${name}.mjs`);
  const result = await mod.run();
  if (mod.print) mod.print(result);
  else
    for (const r of result.rows ?? result)
      console.log(`${r.name.padEnd(44)} ${r.value.toFixed(2).padStart(9)} ${r.unit}   baseline ${r.baseline.toFixed(2).padStart(9)}   ratio ${r.ratio.toFixed(3)}`);
}
