#!/usr/bin/env bash
# Compile check of csrc/gpu for CI and developers without a GPU: builds the CUDA addon (nvcc) and the HIP
# addon (hipcc, installed from Debian's packages when missing), and fails when either leaves one of
# lorakit's own symbols undefined (a declared op that no .cu file defines).
set -euo pipefail
cd "$(dirname "$0")/.."

undefined_lorakit() {
  # N-API symbols come from Node at load time; lorakit's own must all be defined in the binary.
  nm -DC --undefined-only "$1" | grep -E 'lorakit::' || true
}

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
if command -v nvcc >/dev/null 2>&1; then
  start=$SECONDS
  # A fresh build: ptxas reports only the kernels it compiles, and an incremental build compiles none.
  rm -rf build-gpu
  LORAKIT_GPU=cuda LORAKIT_CUDA_ARCHS=${LORAKIT_CUDA_ARCHS:-90} LORAKIT_PTXAS_VERBOSE=1 node scripts/build-gpu.js >/tmp/lorakit-build-cuda.log 2>&1 ||
    { tail -60 /tmp/lorakit-build-cuda.log; exit 1; }
  # ptxas's report of every kernel: a register spill in a hot kernel fails the check.
  node scripts/check-gpu-spills.mjs /tmp/lorakit-build-cuda.log
  missing=$(undefined_lorakit build-gpu/Release/lorakit_gpu.node)
  [ -z "$missing" ] || { echo "CUDA addon: undefined lorakit symbols:"; echo "$missing"; exit 1; }
  echo "gpu compile check: CUDA addon built for sm_${LORAKIT_CUDA_ARCHS:-90} in $((SECONDS - start)) s, all symbols defined"
else
  echo "gpu compile check: SKIPPED the CUDA build: nvcc is not installed"
fi

if ! command -v hipcc >/dev/null 2>&1; then
  echo "installing: hipcc libamdhip64-dev"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hipcc libamdhip64-dev >/dev/null
fi
start=$SECONDS
LORAKIT_GPU=hip LORAKIT_HIP_ARCHS="gfx90a;gfx940" LORAKIT_GPU_BUILD_DIR=build-hip HIP_PLATFORM=amd node scripts/build-gpu.js \
  >/tmp/lorakit-build-hip.log 2>&1 || { tail -60 /tmp/lorakit-build-hip.log; exit 1; }
missing=$(undefined_lorakit build-hip/Release/lorakit_gpu.node)
[ -z "$missing" ] || { echo "HIP addon: undefined lorakit symbols:"; echo "$missing"; exit 1; }
# The HIP build is a compile check only: CI has no ROCm runtime to load it with.
rm -rf prebuilds/*-hip
echo "gpu compile check: HIP addon built for gfx90a and gfx940 in $((SECONDS - start)) s, all symbols defined"
