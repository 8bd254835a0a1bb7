#!/usr/bin/env node
// `npm run build:gpu`: builds the GPU addon (CMake, LORAKIT_GPU=cuda|hip|auto from the environment, auto
// by default) into build-gpu/, then copies it to prebuilds/<platform>-<arch>-<cuda|hip>/ where
// lib/native/binding.ts looks for it. LORAKIT_CUDA_ARCHS (for example "90") narrows a CUDA build to the
// named architectures (CUDA 12.4 or newer; the default list is CMakeLists.txt's); LORAKIT_HIP_ARCHS names
// the HIP build's (default gfx90a;gfx942;gfx1100; gfx942 needs ROCm 6 or newer). The toolkit is the one
// on PATH, else CUDA_HOME/CUDA_PATH or /usr/local/cuda for CUDA, ROCM_PATH or /opt/rocm for HIP.
// LORAKIT_PTXAS_VERBOSE=1 makes a CUDA build print ptxas's per-kernel register and spill report.
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
// A toolkit outside PATH, where users' installs put it.
const cudaBin = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter(Boolean).map((d) => path.join(d, 'bin', 'nvcc'));
const rocmBin = [process.env.ROCM_PATH, '/opt/rocm'].filter(Boolean).map((d) => path.join(d, 'bin', 'hipcc'));
const nvcc = which('nvcc') ? 'nvcc' : cudaBin.find((f) => fs.existsSync(f));
const hipcc = which('hipcc') ? 'hipcc' : rocmBin.find((f) => fs.existsSync(f));
if (kind === 'auto') kind = nvcc ? 'cuda' : hipcc ? 'hip' : '';
if (!kind) {
  console.error('build:gpu: neither nvcc (CUDA) nor hipcc (HIP) is on PATH; install one, or set LORAKIT_GPU');
  process.exit(1);
}

const out = path.join(root, process.env.LORAKIT_GPU_BUILD_DIR || 'build-gpu');
const args = ['compile', '--out', out, `--CDLORAKIT_GPU=${kind}`];
if (process.env.LORAKIT_CUDA_ARCHS) args.push(`--CDLORAKIT_CUDA_ARCHS=${process.env.LORAKIT_CUDA_ARCHS.replace(/,/g, ';')}`);
if (process.env.LORAKIT_HIP_ARCHS) args.push(`--CDLORAKIT_HIP_ARCHS=${process.env.LORAKIT_HIP_ARCHS.replace(/,/g, ';')}`);
if (kind === 'hip') args.push(`--CDCMAKE_CXX_COMPILER=${hipcc || 'hipcc'}`);
if (kind === 'cuda' && !process.env.CUDACXX && nvcc && nvcc !== 'nvcc') args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`);
if (kind === 'cuda' && process.env.LORAKIT_PTXAS_VERBOSE === '1') args.push('--CDLORAKIT_PTXAS_VERBOSE=ON');

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
