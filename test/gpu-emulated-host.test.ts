// How the GPU backend meets a user's machine, on the host emulator of test/emu (no GPU needed):
//  - where the vendor GEMM library is looked for (the loader path, CUDA_HOME/CUDA_PATH, pip wheels of the
//    active Python environments, $CONDA_PREFIX/lib; ROCM_PATH for rocBLAS), what the engine report and
//    stderr say, and LORAKIT_REQUIRE_GPU_BLAS=1: library folders are laid out in a temp dir with files
//    standing for the libraries (the emulator opens its fake cuBLASLt/rocBLAS for them, and only for them);
//  - a driver older than the addon's runtime (the emulator plays one with LORAKIT_EMU_DRIVER_VERSION);
//  - a device whose architecture the binary has no code for (LORAKIT_EMU_ARCH);
//  - an asynchronous kernel fault (LORAKIT_EMU_FAULT), named where it happened under LORAKIT_GPU_SYNC=1;
// and, where nvcc is installed, the register-spill check CI runs on ptxas's report; where hipcc is, the LDS
// that AMD builds of attention take per workgroup.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildEmulator, emulatorUnavailable } from './helpers/emulator';

const root = path.resolve(__dirname, '..');
const missing = emulatorUnavailable();
if (missing)
  console.warn(`\n*** GPU host-integration suite SKIPPED: ${missing}; library discovery, driver and arch reports, LORAKIT_GPU_SYNC are NOT being tested ***\n`);
const suite = missing ? describe.skip : describe;

jest.setTimeout(10 * 60_000);

// The first bytes that make a file stand for a fake library in the emulator (test/emu/shim/emu_runtime.cc).
const FAKE = 'lorakit emulator fake library\n';
let dir: string;

function lay(rel: string): string {
  const file = path.join(dir, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, FAKE);
  return file;
}

// The variables discovery reads, cleared, so that the machine's own settings do not leak in; HOME points at
// an empty folder (~/.local is searched too) and the emulated loader path is empty unless a case sets it.
function isolated(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const v of ['CUDA_HOME', 'CUDA_PATH', 'VIRTUAL_ENV', 'CONDA_PREFIX', 'ROCM_PATH', 'HIP_PATH', 'LORAKIT_REQUIRE_GPU_BLAS', 'LORAKIT_GPU_SYNC'])
    delete base[v];
  return { ...base, HOME: path.join(dir, 'home'), LORAKIT_EMU_LD_PATH: '', ...env };
}

interface Probe {
  engine?: string;
  libraryCalls?: number;
  ok: boolean;
  detail: string;
  stderr: string;
}

// One product through gemm.cu's library path in a parity binary (cuBLASLt spelling, or rocBLAS in parity-w32).
function blasProbe(binary: 'parity-cublaslt' | 'parity-w32', env: Record<string, string>): Probe {
  const r = spawnSync(path.join(root, 'build-emu', binary), ['blas-probe'], { cwd: root, encoding: 'utf8', env: isolated(env) });
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const c = lines.find((l) => l.op === 'blas-probe') as { ok: boolean; detail?: string } | undefined;
  if (!c) throw new Error(`${binary} blas-probe printed no case (exit ${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  const p = (lines.find((l) => 'blasProbe' in l)?.blasProbe ?? {}) as { engine?: string; libraryCalls?: number };
  return { ...p, ok: c.ok, detail: c.detail ?? '', stderr: r.stderr };
}

// A Node child on the emulated GPU addon; returns what `body` (with L = lorakit) returned.
function emulated(env: Record<string, string>, body: string): Record<string, unknown> {
  const script = `const L = require(${JSON.stringify(path.join(root, 'dist'))}); const out = (() => { ${body} })(); process.stdout.write(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: {
      ...isolated(env),
      LORAKIT_GPU_ADDON: path.join(root, 'build-emu', 'lorakit_emu.node'),
      LORAKIT_GPU_PROBE: '',
      LORAKIT_DEVICE: '',
    },
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

suite('the GPU backend on users\' machines (emulated)', () => {
  beforeAll(() => {
    buildEmulator(root);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gpu-host-'));
    fs.mkdirSync(path.join(dir, 'home'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('vendor GEMM library discovery', () => {
    test('the loader path comes first, and the report and stderr say so', () => {
      lay('ld/libcublasLt.so.13');
      lay('cuda/lib64/libcublasLt.so.13');
      const p = blasProbe('parity-cublaslt', { LORAKIT_EMU_LD_PATH: path.join(dir, 'ld'), CUDA_HOME: path.join(dir, 'cuda') });
      expect(p).toMatchObject({ ok: true, engine: 'cublaslt (libcublasLt.so.13 from the loader path)', libraryCalls: 1 });
      expect(p.stderr.match(/^lorakit: GPU GEMMs use .*$/gm)).toEqual(['lorakit: GPU GEMMs use cuBLASLt (libcublasLt.so.13 from the loader path)']);
    });

    test.each([
      ['CUDA_HOME/lib64', 'CUDA_HOME', 'toolkit', 'toolkit/lib64/libcublasLt.so.12'],
      ['CUDA_PATH/lib', 'CUDA_PATH', 'toolkit2', 'toolkit2/lib/libcublasLt.so.12'],
      ['a virtualenv\'s pip wheel', 'VIRTUAL_ENV', 'venv', 'venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12'],
      ['a virtualenv\'s CUDA 13 wheel', 'VIRTUAL_ENV', 'venv13', 'venv13/lib/python3.12/site-packages/nvidia/cu13/lib/libcublasLt.so.13'],
      ['a conda env\'s pip wheel', 'CONDA_PREFIX', 'conda1', 'conda1/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so.13'],
      ['a conda env\'s lib', 'CONDA_PREFIX', 'conda2', 'conda2/lib/libcublasLt.so.12'],
    ])('off the loader path, cuBLASLt is found in %s', (_what, variable, prefix, rel) => {
      const file = lay(rel);
      const p = blasProbe('parity-cublaslt', { [variable]: path.join(dir, prefix) });
      const soname = path.basename(file);
      expect(p).toMatchObject({ ok: true, engine: `cublaslt (${soname} from ${file})`, libraryCalls: 1 });
      expect(p.stderr).toContain(`lorakit: GPU GEMMs use cuBLASLt (${soname} from ${file})`);
    });

    test('pip wheels under ~/.local are found too', () => {
      const file = lay('home/.local/lib/python3.10/site-packages/nvidia/cublas/lib/libcublasLt.so.12');
      try {
        expect(blasProbe('parity-cublaslt', {})).toMatchObject({ ok: true, engine: `cublaslt (libcublasLt.so.12 from ${file})`, libraryCalls: 1 });
      } finally {
        fs.rmSync(path.join(dir, 'home', '.local'), { recursive: true });
      }
    });

    test('rocBLAS is found under ROCM_PATH/lib', () => {
      const file = lay('rocm/lib/librocblas.so');
      expect(blasProbe('parity-w32', { ROCM_PATH: path.join(dir, 'rocm') })).toMatchObject({
        ok: true,
        engine: `rocblas (librocblas.so from ${file})`,
        libraryCalls: 1,
      });
    });

    test('without a library: the hand-written kernel computes it, and the report and one stderr warning say where it looked', () => {
      const p = blasProbe('parity-cublaslt', { CUDA_HOME: path.join(dir, 'nowhere') });
      expect(p).toMatchObject({ ok: true, libraryCalls: 0 });
      expect(p.engine).toMatch(/^fallback \(libcublasLt\.so\.13, libcublasLt\.so\.12 not found in the loader path, .*nowhere\/lib64, .*nowhere\/lib, \/usr\/local\/cuda\/lib64/);
      const warnings = p.stderr.match(/^lorakit: WARNING: cuBLASLt not found: GPU GEMMs run on lorakit's own kernel, 30-50x slower .*LORAKIT_REQUIRE_GPU_BLAS=1 makes this an error\.$/gm);
      expect(warnings).toHaveLength(1);
    });

    test('LORAKIT_REQUIRE_GPU_BLAS=1 makes a missing library an error naming where it looked', () => {
      const p = blasProbe('parity-cublaslt', { LORAKIT_REQUIRE_GPU_BLAS: '1', CUDA_HOME: path.join(dir, 'nowhere') });
      expect(p.ok).toBe(false);
      expect(p.detail).toMatch(/threw ERR_GPU: LORAKIT_REQUIRE_GPU_BLAS=1, but the vendor GEMM library was not found: libcublasLt\.so\.13, libcublasLt\.so\.12 not found in the loader path, .*nowhere\/lib64/);
      // ... and is no error where the library is there.
      lay('req/lib64/libcublasLt.so.13');
      expect(blasProbe('parity-cublaslt', { LORAKIT_REQUIRE_GPU_BLAS: '1', CUDA_HOME: path.join(dir, 'req') })).toMatchObject({ ok: true, libraryCalls: 1 });
    });
  });

  test('a driver older than the addon\'s runtime: the GPU is reported unavailable with both versions and what to do', () => {
    const r = emulated({ LORAKIT_EMU_DRIVER_VERSION: '12040' }, `return L.backend();`) as { active: string; gpuUnavailableReason: string };
    expect(r.active).toBe('cpu');
    expect(r.gpuUnavailableReason).toMatch(
      /^the emulator addon loaded but sees no device \(cudaErrorInsufficientDriver: .*; the driver supports CUDA 12\.4 but this addon carries the emulator 12\.8 runtime .*R580.*build the addon against the toolkit this driver supports \(CUDA 12\.4 or newer, ROCm 6 or newer\) with `npm run build:gpu`; runtime 12\.8, driver 12\.4\)$/,
    );
    // A new enough driver: the device is there.
    const ok = emulated({ LORAKIT_EMU_DRIVER_VERSION: '12080' }, `return L.backend();`) as { active: string; gpus: unknown[] };
    expect(ok.active).toBe('emulator');
    expect(ok.gpus).toHaveLength(1);
  });

  test('an AMD device the binary has no code for is named, with the build that fixes it; a covered one is marked so', () => {
    const r = emulated({ LORAKIT_EMU_ARCH: 'gfx1201' }, `return L.backend();`) as { active: string; gpuUnavailableReason: string };
    expect(r.active).toBe('cpu');
    expect(r.gpuUnavailableReason).toMatch(
      /^the emulator addon .*lorakit_emu\.node has code for gfx90a, gfx942, gfx1100 only, but the device is lorakit emulator .*\(gfx1201\): build it for them with ROCm 6 or newer: LORAKIT_HIP_ARCHS="gfx1201" npm run build:gpu$/,
    );
    const ok = emulated({ LORAKIT_EMU_ARCH: 'gfx942:sramecc+:xnack-' }, `return L.backend();`) as {
      active: string;
      gpus: { arch: string; archInBuild: boolean }[];
      gpuRuntime: { builtArchs: string[] };
    };
    expect(ok.active).toBe('emulator');
    expect(ok.gpus).toEqual([expect.objectContaining({ arch: 'gfx942:sramecc+:xnack-', archInBuild: true })]);
    expect(ok.gpuRuntime.builtArchs).toEqual(['gfx90a', 'gfx942', 'gfx1100']);
  });

  test('an asynchronous kernel fault surfaces at a later op, and under LORAKIT_GPU_SYNC=1 at the op that launched the kernel', () => {
    // Two products (the hand-written GEMM kernel faults), then a download that synchronises.
    const body = `let at = 'start', error = '';
      try {
        const a = L.tensor([[1, 2], [3, 4]]).to('cuda');
        at = 'first matmul'; const c = L.ops.matmul(a, a);
        at = 'second matmul'; const d = L.ops.matmul(c, a);
        at = 'download'; d.toArray(); at = 'done';
      } catch (e) { error = e.code + ' ' + e.message; }
      return { at, error };`;
    const late = emulated({ LORAKIT_EMU_FAULT: 'gemm_tiled_kernel' }, body) as { at: string; error: string };
    expect(late.at).toBe('download');
    expect(late.error).toMatch(/^ERR_GPU emulator error cudaErrorIllegalAddress \(.*injected by LORAKIT_EMU_FAULT\)\) in cudaMemcpyAsync.*rerun with LORAKIT_GPU_SYNC=1 to have the error name the kernel/);
    expect(late.error).not.toContain('gemm_tiled_kernel');
    const named = emulated({ LORAKIT_EMU_FAULT: 'gemm_tiled_kernel', LORAKIT_GPU_SYNC: '1' }, body) as { at: string; error: string };
    expect(named.at).toBe('first matmul');
    expect(named.error).toMatch(/^ERR_GPU emulator error cudaErrorIllegalAddress \(.*\) in gemm_tiled_kernel, synchronised right after it by LORAKIT_GPU_SYNC=1 at gemm\.cu:\d+$/);
    // Without a fault, LORAKIT_GPU_SYNC=1 changes no result.
    const clean = emulated({ LORAKIT_GPU_SYNC: '1' }, `const a = L.tensor([[1, 2], [3, 4]]).to('cuda'); return L.ops.matmul(a, a).toArray();`);
    expect(clean).toEqual([[7, 10], [15, 22]]);
  });
});

// The spill check on real ptxas reports: attention.cu (its backward kernels spilled at 128 registers until
// their launch bounds asked for one block per SM) must pass, and a kernel forced to spill must fail it.
function nvccPath(): string {
  for (const f of ['nvcc', '/usr/local/cuda/bin/nvcc'])
    try {
      execFileSync(f, ['--version'], { stdio: 'ignore' });
      return f;
    } catch {
      // not this one
    }
  return '';
}
const nvcc = nvccPath();
if (!nvcc) console.warn('\n*** spill check test SKIPPED: nvcc is not installed; the ptxas spill report is NOT being checked ***\n');
(nvcc ? describe : describe.skip)('the ptxas spill check (nvcc)', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-spills-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const ptxas = (src: string, extra: string[]) => {
    const r = spawnSync(nvcc, ['-std=c++17', '-O3', '--expt-relaxed-constexpr', '-arch=sm_90', '-Xptxas', '-v', '-Icsrc', '-Icsrc/gpu', ...extra, '-c', src, '-o', path.join(tmp, 'k.o')], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`nvcc ${src} failed:\n${r.stderr}`);
    const log = path.join(tmp, `${path.basename(src)}.log`);
    fs.writeFileSync(log, `${r.stdout}${r.stderr}`);
    return log;
  };
  const check = (log: string, hot: string) =>
    spawnSync(process.execPath, [path.join(root, 'scripts', 'check-gpu-spills.mjs'), '--hot', hot, log], { cwd: root, encoding: 'utf8' });

  test('attention.cu\'s kernels do not spill at sm_90', () => {
    const r = check(ptxas('csrc/gpu/attention.cu', []), 'attention_forward_kernel,attention_dq_kernel,attention_dkdv_kernel');
    expect(r.stdout).toMatch(/check-gpu-spills: 10 instantiations of 4 kernels, 0 spilling, 0 of them hot/);
    expect(r.status).toBe(0);
  });

  test('a hot kernel that spills, or a hot kernel missing from the report, fails the check', () => {
    const src = path.join(tmp, 'spilly.cu');
    // 64 live floats (every index known at compile time) under a 32-register cap: ptxas must spill them.
    fs.writeFileSync(src, `__global__ void spilly_kernel(const float* x, float* y, int n) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = x[(threadIdx.x + i * 7) % n];
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + r) % 64] + 1.f;
  float s = 0;
#pragma unroll
  for (int i = 0; i < 64; ++i) s += acc[i] * acc[63 - i];
  y[threadIdx.x] = s;
}
`);
    const log = ptxas(src, ['-maxrregcount=32']);
    const hot = check(log, 'spilly_kernel');
    expect(hot.status).toBe(1);
    expect(hot.stdout).toMatch(/^SPILL \(hot\) spilly_kernel sm_90: [1-9]\d* bytes stored, [1-9]\d* loaded/m);
    const cold = check(log, '');
    expect(cold.stdout).toMatch(/^spill spilly_kernel sm_90/m);
    expect(cold.status).toBe(0);
    const renamed = check(log, 'no_such_kernel');
    expect(renamed.stderr).toMatch(/hot kernel no_such_kernel is not in the ptxas report/);
    expect(renamed.status).toBe(1);
  });
});

// On AMD a compute unit has 64 KiB of LDS: the attention kernels of an AMD build (their own tile sizes,
// run on the emulator by test/gpu-emulated.test.ts's parity-w64-lds) must take at most 32 KiB per
// workgroup for d <= 128, so that two workgroups fit; paged attention (decode.cu) at most 32 KiB for every
// head dim it takes. hipcc's resource report says what each one takes.
function hipccPath(): string {
  try {
    execFileSync('hipcc', ['--version'], { stdio: 'ignore' });
    return 'hipcc';
  } catch {
    return '';
  }
}
const hipcc = hipccPath();
if (!hipcc) console.warn('\n*** AMD LDS tests SKIPPED: hipcc is not installed; the LDS size of AMD attention kernels is NOT being checked ***\n');

// LDS bytes per workgroup of every kernel of one csrc/gpu source, by mangled name, built for gfx90a.
function ldsOf(source: string): Map<string, number> {
  const obj = path.join(os.tmpdir(), `lorakit-lds-${process.pid}.o`);
  const r = spawnSync(hipcc, ['-x', 'hip', '--offload-arch=gfx90a', '-std=c++17', '-O3', '-Rpass-analysis=kernel-resource-usage', '-D__HIP_PLATFORM_AMD__',
    '-Icsrc', '-Icsrc/gpu', '-c', source, '-o', obj], {
    cwd: root, encoding: 'utf8', env: { ...process.env, HIP_PLATFORM: 'amd' },
  });
  fs.rmSync(obj, { force: true });
  if (r.status !== 0) throw new Error(`hipcc ${source} failed:\n${r.stderr.slice(-4000)}`);
  // "Function Name: <mangled>" then, a few remarks later, "LDS Size [bytes/block]: N".
  const lds = new Map<string, number>();
  let fn = '';
  for (const line of r.stderr.split('\n')) {
    const name = /Function Name: (\S+)/.exec(line);
    if (name) fn = name[1]!;
    const size = /LDS Size \[bytes\/block\]: (\d+)/.exec(line);
    if (size && fn) lds.set(fn, Number(size[1]));
  }
  return lds;
}

(hipcc ? test : test.skip)('AMD builds of attention take at most 32 KiB of LDS per workgroup for d <= 128 (hipcc, gfx90a)', () => {
  const kernels = [...ldsOf('csrc/gpu/attention.cu')].filter(([f]) => /attention_(forward|dq|dkdv)_kernelILi(64|128|256)E/.test(f));
  expect(kernels).toHaveLength(9);
  for (const [f, bytes] of kernels) {
    const d = Number(/kernelILi(\d+)E/.exec(f)![1]);
    if (d <= 128) expect([f, bytes <= 32 * 1024]).toEqual([f, true]);
    // d = 256 backward cannot shrink further (one row and one column per thread group already); it must
    // still fit the 64 KiB a workgroup may take.
    else expect([f, bytes <= 48 * 1024]).toEqual([f, true]);
  }
});

(hipcc ? test : test.skip)('AMD builds of paged attention take at most 32 KiB of LDS per workgroup up to d = 256 (hipcc, gfx90a)', () => {
  // Float32 and bfloat16 pools, head-dim buckets 64, 128 and 256.
  const kernels = [...ldsOf('csrc/gpu/decode.cu')].filter(([f]) => /paged_attention_kernelI[ft]Li(64|128|256)E/.test(f));
  expect(kernels).toHaveLength(6);
  for (const [f, bytes] of kernels) expect([f, bytes <= 32 * 1024]).toEqual([f, true]);
});
