#!/usr/bin/env bash
# The one prepared run for a machine with a GPU (see ../shared/gpu/README.md for the lent H200): it builds
# nothing, checks the GPU addon against the CPU backend, then times it. Here, on a dev machine:
#
#   npm run build:gyp && LORAKIT_CUDA_ARCHS=90 npm run build:gpu && npx tsc -p tsconfig.json
#   bash ../shared/gpu/pack.sh --modules
#   device tool: carry [".gpu", "dist", "build/Release", "prebuilds"], command: bash .gpu/run.sh bash scripts/gpu-check.sh
#
# (prebuilds/<platform>-<arch>-cuda holds the GPU addon that build:gpu copied there; build-gpu itself is
# mostly object files and need not travel.)
#
# Logs and bench JSON go to $OUT (the device tool brings that folder back), else to ./gpu-check-out.
set -uo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || rocm-smi 2>&1 | head -5
  node -e "console.log(JSON.stringify(require('./dist').backend(), null, 1))"
} 2>&1 | tee "$out/backend.log"
# Parity (poisoned GPU memory) and the loader's checks, with the real addon.
LORAKIT_GPU_POISON=1 timeout 300 npx jest test/gpu test/backend.test.ts 2>&1 | tee "$out/parity.log" | tail -60
# The parity suite once more under compute-sanitizer, where the box has it: memcheck (out-of-bounds and
# misaligned accesses, leaks of device memory) and racecheck (shared-memory races). LORAKIT_GPU_SYNC=1
# makes a fault name its kernel. The quick sizes keep the slowed-down run short.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    LORAKIT_GPU_SYNC=1 LORAKIT_GPU_TEST_QUICK=1 timeout 600 "$sanitizer" --tool "$tool" --target-processes all --error-exitcode 99 \
      node node_modules/jest/bin/jest.js --runInBand test/gpu/parity.test.ts 2>&1 | tee "$out/sanitizer-$tool.log" | tail -30
  done
else
  echo "gpu-check: compute-sanitizer not found: the memcheck/racecheck pass is SKIPPED" | tee "$out/sanitizer-skipped.log"
fi
timeout 240 node bench/gpu.mjs --out "$out/bench-gpu.json" 2>&1 | tee "$out/bench.log"
# Issue #7's end-to-end rows: the training step on random-initialised models of the three shapes (each
# bounded, so that one slow configuration cannot eat the run).
for args in "--config gpt2-124m --method lora --batch-size 16 --seq-len 1024" \
            "--config gpt2-124m --method qlora --batch-size 16 --seq-len 1024" \
            "--config gpt2-124m --method full --batch-size 16 --seq-len 1024" \
            "--config smollm-135m --method lora --batch-size 16 --seq-len 1024" \
            "--config smollm-135m --method qlora --batch-size 16 --seq-len 1024" \
            "--config tinyllama-1.1b --method lora --batch-size 8 --seq-len 2048" \
            "--config tinyllama-1.1b --method qlora --batch-size 8 --seq-len 2048"; do
  echo "lorakit bench train $args --device cuda --steps 3"
  timeout 90 node dist/cli/index.js bench train $args --device cuda --steps 3 --json 2>&1 | tee -a "$out/bench-train.jsonl"
done
