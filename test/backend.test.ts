// The backend loader: the GPU addon is loaded only after a child process has loaded it and listed a
// device, so a crashing, deviceless or foreign addon leaves the CPU backend working and says why.
// Each case runs in a fresh Node process, since the loader decides once per process.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gpuAddonCandidates } from '../lib/native/binding';
import { tempDirs } from './helpers/tmp';

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const tmp = tempDirs('lorakit-backend-');
let dir: string;
beforeAll(() => {
  dir = tmp();
});

// Runs `body` (with L = lorakit) in a child and returns what it printed as JSON.
function child(env: Record<string, string>, body: string): Record<string, unknown> {
  const script = `const L = require(${JSON.stringify(dist)}); const out = (() => { ${body} })(); process.stdout.write(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    env: { ...process.env, LORAKIT_GPU_PROBE: '', LORAKIT_DEVICE: '', LORAKIT_GPU_ADDON: '', ...env },
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

function fakeAddon(name: string, source: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, source);
  return file;
}

// A CPU op whose answer is known: the process still computes after the GPU path failed.
const cpuWorks = `const c = L.ops.matmul(L.tensor([[1, 2], [3, 4]]), L.tensor([[5], [6]])); return { b: L.backend(), c: c.toArray() };`;

describe('GPU addon probe', () => {
  test('an addon that crashes its process is reported, and the CPU backend runs', () => {
    const file = fakeAddon('crash.js', `process.kill(process.pid, 'SIGSEGV');`);
    const r = child({ LORAKIT_GPU_ADDON: file }, cpuWorks) as { b: { active: string; gpus: unknown[]; gpuUnavailableReason: string }; c: number[][] };
    expect(r.b.active).toBe('cpu');
    expect(r.b.gpus).toEqual([]);
    expect(r.b.gpuUnavailableReason).toMatch(/GPU probe of .*crash\.js was killed by SIGSEGV/);
    expect(r.c).toEqual([[17], [39]]);
  });

  test('an addon that throws while loading is reported with its message', () => {
    const file = fakeAddon('throws.js', `throw new Error('libcudart.so.13: cannot open shared object file');`);
    const r = child({ LORAKIT_GPU_ADDON: file }, cpuWorks) as { b: { active: string; gpuUnavailableReason: string } };
    expect(r.b.active).toBe('cpu');
    expect(r.b.gpuUnavailableReason).toMatch(/GPU addon .*throws\.js failed to load: libcudart\.so\.13: cannot open shared object file/);
  });

  test('an addon that sees no device says what the runtime said', () => {
    const file = fakeAddon(
      'nodevice.js',
      `exports.gpuInfo = () => ({ platform: 'cuda', runtime: '13.0', driver: 'none', devices: [], error: 'cudaErrorInsufficientDriver: CUDA driver version is insufficient' });`,
    );
    const r = child({ LORAKIT_GPU_ADDON: file }, `${cpuWorks.replace('return {', 'let e; try { L.zeros([2], { device: "cuda" }); } catch (x) { e = x.code + " " + x.message; } return { e,')}`) as {
      b: { active: string; gpuUnavailableReason: string };
      e: string;
      c: number[][];
    };
    expect(r.b.active).toBe('cpu');
    expect(r.b.gpuUnavailableReason).toBe(
      'the cuda addon loaded but sees no device (cudaErrorInsufficientDriver: CUDA driver version is insufficient; runtime 13.0, driver none)',
    );
    expect(r.e).toMatch(/^ERR_DEVICE full: device 'cuda' is not available: no GPU backend is active \(the cuda addon loaded but sees no device/);
    expect(r.c).toEqual([[17], [39]]);
  });

  test('a module that is not a GPU addon is refused', () => {
    const file = fakeAddon('plain.js', `exports.hello = 1;`);
    const r = child({ LORAKIT_GPU_ADDON: file }, cpuWorks) as { b: { gpuUnavailableReason: string } };
    expect(r.b.gpuUnavailableReason).toMatch(/plain\.js is not a GPU addon \(it has no gpuInfo\)/);
  });

  test('LORAKIT_DEVICE=cpu skips the probe entirely', () => {
    // The addon would kill its probe; with the probe skipped nothing runs it.
    const file = fakeAddon('crash2.js', `process.kill(process.pid, 'SIGSEGV');`);
    const r = child({ LORAKIT_GPU_ADDON: file, LORAKIT_DEVICE: 'cpu' }, `return { b: L.backend(), probe: process.env.LORAKIT_GPU_PROBE };`) as {
      b: { active: string; gpuUnavailableReason: string };
      probe: string;
    };
    expect(r.b).toMatchObject({ active: 'cpu', gpuUnavailableReason: 'LORAKIT_DEVICE=cpu: the GPU probe was skipped' });
    expect(r.probe).toBe('');
  });

  test('the probe result is handed to child processes, keyed by the addon file', () => {
    const file = fakeAddon('counted.js', `require('fs').appendFileSync(${JSON.stringify(path.join(dir, 'probes.log'))}, 'x'); exports.gpuInfo = () => ({ platform: 'hip', runtime: '5.2', driver: 'none', devices: [] });`);
    const r = child({ LORAKIT_GPU_ADDON: file }, `L.backend(); return { probe: JSON.parse(process.env.LORAKIT_GPU_PROBE) };`) as {
      probe: { file: string; reason: string };
    };
    expect(r.probe.file).toBe(file);
    expect(r.probe.reason).toMatch(/the hip addon loaded but sees no device/);
    // A child given that result does not probe again.
    child({ LORAKIT_GPU_ADDON: file, LORAKIT_GPU_PROBE: JSON.stringify(r.probe) }, `return L.backend();`);
    expect(fs.readFileSync(path.join(dir, 'probes.log'), 'utf8')).toBe('x');
  });
});

// When this checkout has a built GPU addon (CI builds one with nvcc as a compile check) and the machine
// has no GPU, the real addon must load in the probe and report the runtime's reason.
const built = gpuAddonCandidates().find((f) => fs.existsSync(f));
(built ? test : test.skip)('the built GPU addon loads in the probe and reports its devices or why there are none', () => {
  const r = child({ LORAKIT_GPU_ADDON: built! }, `return L.backend();`) as { active: string; gpus: unknown[]; gpuUnavailableReason?: string; gpuRuntime?: { gemmEngine: string } };
  if (r.active === 'cpu') {
    expect(r.gpuUnavailableReason).toMatch(/^the (cuda|hip) addon loaded but sees no device \(cuda\w+: .+; runtime \d+\.\d+, driver \S+\)$/);
  } else {
    expect(r.gpus.length).toBeGreaterThan(0);
    expect(r.gpuRuntime!.gemmEngine).toMatch(/cublaslt|rocblas|fallback/);
  }
});
if (!built) console.warn('backend.test: no GPU addon is built here (run `npm run build:gpu`): the real-addon probe test is SKIPPED');
