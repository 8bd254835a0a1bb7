// The TypeScript GPU suites (test/gpu: op parity, and training on the GPU against the CPU) run here too,
// without a GPU: on build-emu/lorakit_emu.node, the GPU addon's own sources (csrc/napi with the GPU
// backend, csrc/cpu, csrc/gpu) built against the host emulator of test/emu. That exercises what the
// kernel-level parity binaries cannot: the N-API dispatch by device, storages on cuda:N, the loader, and
// the models, adapters and trainer running every op on the device. It says nothing about speed, and the
// emulator is not a GPU (see test/emu/shim/cuda_runtime.h for what it models): the same suites must still
// pass on a card.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { buildEmulator, emulatorUnavailable } from './helpers/emulator';

const root = path.resolve(__dirname, '..');
const missing = emulatorUnavailable();
if (missing) console.warn(`\n*** emulated GPU addon suites SKIPPED: ${missing}; the GPU paths of lib/ are NOT being tested ***\n`);
const suite = missing ? describe.skip : describe;

jest.setTimeout(15 * 60_000);

// A child process on the emulated addon, with no probe result or device override inherited.
const emulated = { ...process.env, LORAKIT_GPU_ADDON: path.join(root, 'build-emu', 'lorakit_emu.node'), LORAKIT_GPU_PROBE: '', LORAKIT_DEVICE: '' };

suite('test/gpu on the emulated GPU addon', () => {
  beforeAll(() => {
    buildEmulator(root);
  });

  test('every GPU suite passes on the emulator, none skipped', () => {
    const r = spawnSync(process.execPath, [require.resolve('jest/bin/jest'), '--ci', 'test/gpu/'], {
      cwd: root,
      encoding: 'utf8',
      env: { ...emulated, LORAKIT_GPU_POISON: '1', LORAKIT_GPU_TEST_QUICK: '1' },
    });
    const out = `${r.stdout}${r.stderr}`;
    // Jest's own totals read "Tests: N passed, N total" only when nothing failed or was skipped.
    const m = /Tests:\s+(\d+) passed, (\d+) total/.exec(out);
    if (r.status !== 0 || !m || m[1] !== m[2]) throw new Error(`test/gpu on the emulated addon (exit ${r.status ?? r.signal}):\n${out.slice(-6000)}`);
    expect(Number(m[1])).toBeGreaterThanOrEqual(16);
  });

  // The GPU benchmarks at tiny sizes: a script error must not cost a GPU session its minutes.
  test('bench/gpu.mjs --smoke runs every benchmark and reports each beside its baseline', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'bench', 'gpu.mjs'), '--smoke'], {
      cwd: root,
      encoding: 'utf8',
      env: emulated,
    });
    if (r.status !== 0) throw new Error(`bench/gpu.mjs --smoke exited ${r.status ?? r.signal}:\n${r.stdout}${r.stderr}`);
    for (const row of [/^device copy .* ratio \d/m, /^nf4 dequantize \d+x\d+ block 64 .* ratio \d/m, /^nf4\.dequantize double quant .* ratio \d/m,
      /^QLoRA forward .* ratio \d/m, /^LoRA fwd\+bwd .*->\d+ r=16 .* ratio \d.*goal 1\.150/m, /^LoRA fwd\+bwd .* ratio \d.*goal 1\.300/m,
      /^AdamW gpt2-124M full .*148 tensors.* ratio \d/m, /^AdamW gpt2 lora r16 all-linear .*96 tensors.* ratio \d/m])
      expect(r.stdout).toMatch(row);
  });

  test('lorakit bench train --device cuda reports the GPU allocator\'s peak and the same losses as the CPU', () => {
    const bench = (device: string) => {
      const r = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'index.js'), 'bench', 'train', '--config', 'gpt2-tiny', '--method', 'full',
        '--steps', '2', '--batch-size', '1', '--seq-len', '16', '--device', device, '--json'], {
        cwd: root, encoding: 'utf8', env: emulated,
      });
      if (r.status !== 0) throw new Error(`bench train on ${device} exited ${r.status ?? r.signal}:\n${r.stdout}${r.stderr}`);
      return JSON.parse(r.stdout) as { device: string; peakOf: string; peakBytes: number; losses: number[]; backend: string };
    };
    const gpu = bench('cuda'), cpu = bench('cpu');
    expect(gpu).toMatchObject({ device: 'cuda:0', peakOf: 'gpu-allocator', backend: 'emulator' });
    expect(gpu.peakBytes).toBeGreaterThan(0);
    gpu.losses.forEach((l, i) => expect(Math.abs(l - cpu.losses[i]!)).toBeLessThan(1e-4 * cpu.losses[i]!));
  });
});
