#!/usr/bin/env node
// `npm run build:gpu`: builds the GPU addon (CMake, LORAKIT_GPU=cuda|hip|auto from the environment, auto
// by default) into build-gpu/, then copies it to prebuilds/<platform>-<arch>-<cuda|hip>/ where
// lib/native/binding.ts looks for it. LORAKIT_CUDA_ARCHS (for example "90") narrows a CUDA build to the
// named architectures; LORAKIT_HIP_ARCHS does the same for HIP (default gfx90a;gfx942).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const which = (cmd) => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
};

let kind = (process.env.LORAKIT_GPU || 'auto').toLowerCase();
if (!['auto', 'cuda', 'hip'].includes(kind)) {
  console.error(`build:gpu: LORAKIT_GPU must be auto, cuda or hip, got '${kind}'`);
  process.exit(1);
}
if (kind === 'auto') kind = which('nvcc') ? 'cuda' : which('hipcc') ? 'hip' : '';
if (!kind) {
  console.error('build:gpu: neither nvcc (CUDA) nor hipcc (HIP) is on PATH; install one, or set LORAKIT_GPU');
  process.exit(1);
}

const out = path.join(root, process.env.LORAKIT_GPU_BUILD_DIR || 'build-gpu');
const args = ['compile', '--out', out, `--CDLORAKIT_GPU=${kind}`];
if (process.env.LORAKIT_CUDA_ARCHS) args.push(`--CDLORAKIT_CUDA_ARCHS=${process.env.LORAKIT_CUDA_ARCHS.replace(/,/g, ';')}`);
if (process.env.LORAKIT_HIP_ARCHS) args.push(`--CDLORAKIT_HIP_ARCHS=${process.env.LORAKIT_HIP_ARCHS.replace(/,/g, ';')}`);
if (kind === 'hip') args.push('--CDCMAKE_CXX_COMPILER=hipcc');
if (kind === 'cuda' && !process.env.CUDACXX && !which('nvcc') && fs.existsSync('/usr/local/cuda/bin/nvcc'))
  args.push('--CDCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc');

console.log(`build:gpu: ${kind} build into ${path.relative(root, out)}`);
const env = { ...process.env };
if (kind === 'hip') env.HIP_PLATFORM = env.HIP_PLATFORM || 'amd';
execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), ...args], { stdio: 'inherit', cwd: root, env });

const src = path.join(out, 'Release', 'lorakit_gpu.node');
if (!fs.existsSync(src)) {
  console.error(`build:gpu: the build finished without ${path.relative(root, src)}`);
  process.exit(1);
}
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}-${kind}`);
fs.mkdirSync(dir, { recursive: true });
const dst = path.join(dir, `lorakit.${kind}.node`);
const tmp = `${dst}.tmp-${process.pid}`;
fs.copyFileSync(src, tmp);
fs.renameSync(tmp, dst);
console.log(`build:gpu: wrote ${path.relative(root, dst)} (${fs.statSync(dst).size} bytes)`);
