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

suite('test/gpu on the emulated GPU addon', () => {
  beforeAll(() => {
    buildEmulator(root);
  });

  test('every GPU suite passes on the emulator, none skipped', () => {
    const addon = path.join(root, 'build-emu', 'lorakit_emu.node');
    const r = spawnSync(process.execPath, [require.resolve('jest/bin/jest'), '--ci', 'test/gpu/'], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, LORAKIT_GPU_ADDON: addon, LORAKIT_GPU_PROBE: '', LORAKIT_DEVICE: '', LORAKIT_GPU_POISON: '1', LORAKIT_GPU_TEST_QUICK: '1' },
    });
    const out = `${r.stdout}${r.stderr}`;
    // Jest's own totals read "Tests: N passed, N total" only when nothing failed or was skipped.
    const m = /Tests:\s+(\d+) passed, (\d+) total/.exec(out);
    if (r.status !== 0 || !m || m[1] !== m[2]) throw new Error(`test/gpu on the emulated addon (exit ${r.status ?? r.signal}):\n${out.slice(-6000)}`);
    expect(Number(m[1])).toBeGreaterThanOrEqual(16);
  });
});
