#!/usr/bin/env node
// Register-spill check of the CUDA kernels, from ptxas's verbose report (`nvcc -Xptxas -v`; the CUDA build
// prints it with LORAKIT_PTXAS_VERBOSE=1, as scripts/check-gpu-build.sh does):
//
//   node scripts/check-gpu-spills.mjs [--hot name,name,...] build.log...
//
// Prints every kernel instantiation that spills (per architecture), and exits 1 when a hot kernel spills
// or does not appear in the logs at all (a renamed kernel must not drop out of the check unnoticed). A
// spill in a hot kernel turns register traffic into local-memory traffic on every thread of the
// training step's busiest loops; elsewhere it is reported only.
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

// The kernels that carry the training step: attention, the GEMM fallback, LoRA's dropout, NF4
// dequantization, the optimizer, normalisation, RoPE, activations and the loss; and a generation step's
// paged attention and per-segment adapters.
export const HOT_KERNELS = [
  'attention_forward_kernel', 'attention_dq_kernel', 'attention_dkdv_kernel', 'gemm_tiled_kernel', 'dropout_add_kernel',
  'nf4_dequantize_kernel', 'adamw_kernel', 'norm_forward_kernel', 'norm_backward_dx_kernel', 'rope_kernel',
  'elementwise_kernel', 'ce_rows_kernel', 'paged_attention_kernel', 'lora_shrink_kernel', 'lora_expand_kernel',
];

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// Every __global__ function named in csrc/gpu, so that mangled names can be mapped back to them.
function kernelNames() {
  const names = new Set();
  const dir = path.join(root, 'csrc/gpu');
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.cu'))) {
    const src = readFileSync(path.join(dir, f), 'utf8');
    for (const m of src.matchAll(/__global__\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?void\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?([A-Za-z_]\w*)\s*\(/g))
      names.add(m[1]);
  }
  return [...names];
}

// [{ kernel, mangled, arch, spillStores, spillLoads }] from ptxas -v output.
export function parseReport(text, names) {
  const out = [];
  const entries = new Map();  // mangled -> arch, from "Compiling entry function"
  let pending;
  for (const line of text.split('\n')) {
    const entry = /Compiling entry function '([^']+)' for '(\w+)'/.exec(line);
    if (entry) entries.set(entry[1], entry[2]);
    const props = /Function properties for (\S+)/.exec(line);
    if (props) pending = props[1];
    const spill = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (spill && pending) {
      // Itanium mangling spells a name as its length then the name: "21attention_dkdv_kernel".
      const plain = /^_Z(\d+)/.exec(pending);  // a function at global scope: _Z<length><name>...
      const kernel = names.find((n) => pending.includes(`${n.length}${n}`)) ??
        (plain ? pending.slice(plain[0].length, plain[0].length + Number(plain[1])) : pending);
      if (entries.has(pending))
        out.push({ kernel, mangled: pending, arch: entries.get(pending), spillStores: Number(spill[2]), spillLoads: Number(spill[3]) });
      pending = undefined;
    }
  }
  return out;
}

function main(argv) {
  let hot = HOT_KERNELS;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--hot') hot = (argv[++i] ?? '').split(',').filter(Boolean);
    else files.push(argv[i]);
  }
  if (!files.length) {
    console.error('check-gpu-spills: usage: check-gpu-spills.mjs [--hot name,...] ptxas-log...');
    return 2;
  }
  const rows = parseReport(files.map((f) => readFileSync(f, 'utf8')).join('\n'), kernelNames());
  let failed = false;
  for (const name of hot)
    if (!rows.some((r) => r.kernel === name)) {
      console.error(`check-gpu-spills: hot kernel ${name} is not in the ptxas report (renamed, or the build was not verbose?)`);
      failed = true;
    }
  const spilling = rows.filter((r) => r.spillStores > 0 || r.spillLoads > 0);
  for (const r of spilling) {
    const isHot = hot.includes(r.kernel);
    if (isHot) failed = true;
    console.log(`${isHot ? 'SPILL (hot)' : 'spill'} ${r.kernel} ${r.arch}: ${r.spillStores} bytes stored, ${r.spillLoads} loaded (${r.mangled})`);
  }
  const kernels = new Set(rows.map((r) => r.kernel)).size;
  console.log(`check-gpu-spills: ${rows.length} instantiations of ${kernels} kernels, ${spilling.length} spilling, ` +
    `${spilling.filter((r) => hot.includes(r.kernel)).length} of them hot`);
  return failed ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exit(main(process.argv.slice(2)));
