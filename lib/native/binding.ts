/**
 * The one typed interface of the native module, and its loader. Nothing outside lib/ sees these types:
 * the public classes wrap them.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NoBinaryError, fromNative } from '../errors';

/** Native bytes on one device; freed explicitly by `free()`. */
export interface AddonStorage {
  readonly bytes: number;
  readonly device: string;
  upload(src: ArrayBufferView): void;
  download(dst: ArrayBufferView): void;
  free(): void;
}

export interface AddonNF4 {
  packed: AddonStorage;
  absmax: AddonStorage;
  blockSize: number;
}

/** A row-major [rows, cols] matrix as stored; `trans` makes the op use its transpose. */
export interface AddonOperand {
  s?: AddonStorage;
  dtype?: number;
  rows: number;
  cols: number;
  trans?: boolean;
  nf4?: AddonNF4;
}

export interface AddonLoraCommon {
  m: number;
  in: number;
  out: number;
  r: number;
  scale: number;
  dropout: number;
  seed: number;
  a: AddonStorage;
  b: AddonStorage;
}

export interface AddonAdamWTensor {
  param: AddonStorage;
  grad: AddonStorage;
  expAvg: AddonStorage;
  expAvgSq: AddonStorage;
  numel: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface AddonBackendInfo {
  threads: number;
  gemmKernel: string;
  avx2: boolean;
  avx512: boolean;
  gpu: boolean;
}

export interface AddonGpuDevice {
  name: string;
  arch: string;
  totalBytes: number;
  multiprocessors: number;
  warpSize: number;
}

export interface AddonGpuInfo {
  /** 'emulator': the host emulator of test/emu, which runs the GPU kernels on the CPU (tests only). */
  platform: 'cuda' | 'hip' | 'emulator';
  runtime: string;
  driver: string;
  devices: AddonGpuDevice[];
  gemmEngine?: string;
  /** Why no device is visible (the runtime's error), when none is. */
  error?: string;
  /** The architectures the binary has code for, comma-separated (HIP builds: 'gfx90a,gfx942,gfx1100'). */
  builtArchs?: string;
}

/**
 * The devices of `info` that the binary has no code for: a HIP binary runs only on the architectures it was
 * compiled for ('gfx942:sramecc+:xnack-' is gfx942 with feature flags). CUDA binaries carry PTX that the
 * driver compiles for newer GPUs, so they list no architectures and nothing is reported for them.
 */
export function devicesWithoutCode(info: AddonGpuInfo): number[] {
  if (!info.builtArchs) return [];
  const built = info.builtArchs.split(',').map((a) => a.trim());
  return info.devices.flatMap((d, i) => (d.arch.startsWith('gfx') && !built.includes(d.arch.split(':')[0]!) ? [i] : []));
}

/** What only the GPU addon exports (csrc/napi/gpu.cc). */
export interface AddonGpu {
  gpuInfo(): AddonGpuInfo;
  gpuMemory(device: number): { allocatedBytes: number; cachedBytes: number; peakBytes: number };
  gpuSynchronize(device: number): void;
  gpuEmptyCache(device: number): void;
  gpuResetPeak(device: number): void;
  /** Switches device's GEMM to the hand-written kernel (true) or back to the library; returns the engine now in use. */
  setGemmFallback(device: number, on: boolean): string;
}

/** One adapter of loraSegments: rows [start, end) get scale · (x Aᵀ) Bᵀ with a [r, in] and b [out, r] float32. */
export interface AddonLoraSegment {
  start: number;
  end: number;
  r: number;
  a: AddonStorage;
  b: AddonStorage;
  /** b transposed, [r, out]: the CPU's faster layout, when the caller keeps one. */
  bt?: AddonStorage;
  scale: number;
}

type S = AddonStorage;
type Opt = AddonStorage | null | undefined;

export interface Addon {
  layerNormForward(a: { x: S; w: S; b?: Opt; y: S; mean: S; rstd: S; rows: number; dim: number; eps: number }): void;
  layerNormBackward(a: { dy: S; x: S; w: S; mean: S; rstd: S; dx?: Opt; dw?: Opt; db?: Opt; rows: number; dim: number }): void;
  rmsNormForward(a: { x: S; w: S; y: S; rstd: S; rows: number; dim: number; eps: number }): void;
  rmsNormBackward(a: { dy: S; x: S; w: S; rstd: S; dx?: Opt; dw?: Opt; rows: number; dim: number }): void;
  rope(a: { x: S; tokens: number; heads: number; headDim: number; seq: number; pos?: Opt; theta: number; inverse: boolean }): void;
  attentionForward(a: { q: S; k: S; v: S; out: S; lse: S; starts?: Opt; batch: number; seq: number; hq: number; hkv: number; d: number; scale: number }): void;
  attentionBackward(a: {
    q: S; k: S; v: S; out: S; lse: S; dout: S; dq: S; dk: S; dv: S; starts?: Opt;
    batch: number; seq: number; hq: number; hkv: number; d: number; scale: number;
  }): void;
  geluForward(a: { x: S; y: S; n: number }): void;
  geluBackward(a: { dy: S; x: S; dx: S; n: number }): void;
  swigluForward(a: { gate: S; up: S; y: S; n: number }): void;
  swigluBackward(a: { dy: S; gate: S; up: S; dgate: S; dup: S; n: number }): void;
  embeddingForward(a: { ids: S; table: S; out: S; n: number; dim: number; vocab: number }): void;
  embeddingBackward(a: { ids: S; dout: S; dtable: S; n: number; dim: number; vocab: number }): void;
  crossEntropy(a: { logits: S; labels: S; rows: number; vocab: number; ignoreIndex: number; gradScale: number; wantGrad: boolean }): { loss: number; count: number };
  copy2d(a: { src: S; srcLd: number; srcOffset: number; dst: S; dstLd: number; dstOffset: number; rows: number; cols: number; accumulate: boolean }): void;
  axpy(a: { x: S; y: S; alpha: number; n: number }): void;
  /** Generation (#13): rows of k and v into pool slots (a negative slot skips its row); pools of dtype code `dtype`. */
  kvWrite(a: { k: S; v: S; slots: S; kPool: S; vPool: S; n: number; width: number; poolSlots: number; dtype: number }): void;
  pagedAttention(a: {
    q: S; kPool: S; vPool: S; blockTable: S; seq: S; ctx: S; out: S; dtype: number;
    n: number; hq: number; hkv: number; d: number; blockSize: number; maxBlocks: number; numSeqs: number; poolSlots: number; scale: number;
  }): void;
  loraSegments(a: { x: S; y: S; m: number; in: number; out: number; ldx: number; ldy: number; segments: AddonLoraSegment[] }): void;

  Storage: new (bytes: number, device: string) => AddonStorage;
  fill(a: { dst: AddonStorage; dtype: number; n: number; value: number }): void;
  arange(a: { dst: AddonStorage; dtype: number; n: number; start: number; step: number }): void;
  cast(a: { src: AddonStorage; from: number; dst: AddonStorage; to: number; n: number }): void;
  randUniform(a: { dst: AddonStorage; n: number; seed: number; offset: number; p0: number; p1: number }): void;
  randNormal(a: { dst: AddonStorage; n: number; seed: number; offset: number; p0: number; p1: number }): void;
  gemm(a: {
    a: AddonOperand;
    b: AddonOperand;
    c: AddonStorage;
    m: number;
    n: number;
    k: number;
    alpha: number;
    beta: number;
    bias?: AddonStorage | null;
  }): void;
  loraForward(
    a: AddonLoraCommon & { x: AddonOperand; w: AddonOperand; bias?: AddonStorage | null; y: AddonStorage; xa: AddonStorage },
  ): void;
  loraBackward(
    a: AddonLoraCommon & {
      dy: AddonOperand;
      x: AddonOperand;
      w: AddonOperand;
      xa: AddonStorage;
      accumulate: boolean;
      dx?: AddonStorage | null;
      da?: AddonStorage | null;
      db?: AddonStorage | null;
      dbias?: AddonStorage | null;
      dw?: AddonStorage | null;
    },
  ): void;
  nf4Quantize(a: { src: AddonStorage; dtype: number; n: number; blockSize: number; packed: AddonStorage; absmax: AddonStorage }): void;
  nf4Dequantize(a: AddonNF4 & { n: number; dst: AddonStorage; dtype: number }): void;
  /** The index of the first NaN or infinity of a float storage, or -1. */
  firstNonFinite(a: { src: AddonStorage; dtype: number; n: number }): number;
  absmaxQuantize(a: { absmax: AddonStorage; n: number; codes: AddonStorage; scales: AddonStorage }): number;
  absmaxDequantize(a: { codes: AddonStorage; scales: AddonStorage; offset: number; n: number; absmax: AddonStorage }): void;
  /** The NF4 code book of csrc/bnb_codes.h, index = 4-bit code: a fresh copy on each call. */
  nf4CodeBook(): Float32Array;
  adamwStep(a: { tensors: AddonAdamWTensor[]; step: number; gradScale: number }): void;
  /** The clipped step: the global norm of the scaled gradients, the clip factor, and whether it updated (a non-finite norm does not). */
  adamwStep(a: { tensors: AddonAdamWTensor[]; step: number; gradScale: number; maxGradNorm: number }): { gradNorm: number; clipScale: number; updated: boolean };
  gradNorm(a: { grads: { s: AddonStorage; numel: number }[] }): number;
  backendInfo(): AddonBackendInfo;
  setGemmKernel(name: string): boolean;
  memory(): { hostBytes: number; hostCachedBytes: number };
  /** Top-k left singular vectors u [m, k] (float64, row-major) and values s [k] of float32 w [m, n]. */
  svdLeft(a: { w: S; m: number; n: number; k: number; u: S; s: S }): void;
  /** Present in the GPU addon only. */
  gpu?: AddonGpu;
}

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

/** Which addon loaded, and why a GPU addon did not when it did not. */
export interface LoadedBackend {
  kind: 'cpu' | 'cuda' | 'hip' | 'emulator';
  /** The addon file in use, when known. */
  file?: string;
  gpu?: AddonGpuInfo;
  gpuUnavailableReason?: string;
}

let addon: Addon | undefined;
let loaded: LoadedBackend | undefined;

/**
 * Loads the native module once per process. The GPU addon (a superset of the CPU one: it holds both
 * backends) is preferred when present, but only after a child process has loaded it and listed at least
 * one device: a broken driver or a missing runtime then costs a message in backend(), never this
 * process. LORAKIT_DEVICE=cpu skips the probe and loads the CPU addon.
 */
export function native(): Addon {
  if (addon) return addon;
  const gpu = process.env.LORAKIT_DEVICE === 'cpu' ? undefined : chooseGpuAddon();
  if (gpu?.file && gpu.info) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = wrapErrors(require(gpu.file) as Addon);
      loaded = { kind: gpu.info.platform, file: gpu.file, gpu: gpu.info };
      return addon;
    } catch (e) {
      gpu.reason = `the GPU addon ${gpu.file} passed its probe but failed to load here: ${(e as Error).message}`;
    }
  }
  addon = loadCpu();
  loaded = {
    kind: 'cpu',
    file: cpuAddonFile(),
    gpuUnavailableReason:
      process.env.LORAKIT_DEVICE === 'cpu' ? 'LORAKIT_DEVICE=cpu: the GPU probe was skipped' : (gpu?.reason ?? 'unknown'),
  };
  return addon;
}

/** What native() loaded (loading it if it has not been). */
export function loadedBackend(): LoadedBackend {
  native();
  return loaded!;
}

/** The number of usable GPUs (0 on the CPU backend). */
export function gpuCount(): number {
  const l = loadedBackend();
  return l.kind === 'cpu' ? 0 : (l.gpu?.devices.length ?? 0);
}

function loadCpu(): Addon {
  try {
    // LORAKIT_ADDON names an addon file explicitly (a development build); otherwise node-gyp-build picks
    // a local build, then the prebuild for this platform.
    const explicit = process.env.LORAKIT_ADDON;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => unknown;
    return wrapErrors((explicit ? require(path.resolve(explicit)) : load(PACKAGE_ROOT)) as Addon);
  } catch (e) {
    throw new NoBinaryError(
      `lorakit could not load its native addon for ${process.platform}-${process.arch} (Node ${process.version}): ` +
        `${(e as Error).message}\nBuild it from source with \`npm run build:gyp\` in ${PACKAGE_ROOT} ` +
        `(needs python3, make and a C++17 compiler), or \`npx cmake-js compile\` for the full build.`,
    );
  }
}

function cpuAddonFile(): string | undefined {
  if (process.env.LORAKIT_ADDON) return path.resolve(process.env.LORAKIT_ADDON);
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('node-gyp-build') as { path(dir: string): string }).path(PACKAGE_ROOT);
  } catch {
    return undefined;
  }
}

/** The GPU addon files to try, in order: an explicit one, a local build, then the prebuilds. */
export function gpuAddonCandidates(): string[] {
  const explicit = process.env.LORAKIT_GPU_ADDON;
  if (explicit) return [path.resolve(explicit)];
  const plat = `${process.platform}-${process.arch}`;
  return [
    path.join(PACKAGE_ROOT, 'build-gpu', 'Release', 'lorakit_gpu.node'),
    path.join(PACKAGE_ROOT, 'prebuilds', `${plat}-cuda`, 'lorakit.cuda.node'),
    path.join(PACKAGE_ROOT, 'prebuilds', `${plat}-hip`, 'lorakit.hip.node'),
  ];
}

// The probe's result travels to child processes (sweeps, workers) through this variable, so a process
// tree probes once. It is keyed by the addon file, so a rebuilt or different addon is probed again.
const PROBE_ENV = 'LORAKIT_GPU_PROBE';

interface ProbeResult {
  file: string;
  mtimeMs: number;
  info?: AddonGpuInfo;
  reason?: string;
}

function chooseGpuAddon(): { file?: string; info?: AddonGpuInfo; reason: string } {
  const file = gpuAddonCandidates().find((f) => fs.existsSync(f));
  if (!file)
    return { reason: 'no GPU addon is installed (build one with `npm run build:gpu` on a machine with CUDA or ROCm)' };
  const mtimeMs = fs.statSync(file).mtimeMs;
  let result: ProbeResult | undefined;
  try {
    const cached = JSON.parse(process.env[PROBE_ENV] ?? 'null') as ProbeResult | null;
    if (cached && cached.file === file && cached.mtimeMs === mtimeMs) result = cached;
  } catch {
    // An unreadable cached probe is probed again.
  }
  if (!result) {
    result = { file, mtimeMs, ...probe(file) };
    process.env[PROBE_ENV] = JSON.stringify(result);
  }
  return { file, info: result.info, reason: result.reason ?? '' };
}

/** Loads `file` in a child process and asks it for its devices. */
export function probe(file: string, timeoutMs = 60_000): { info?: AddonGpuInfo; reason?: string } {
  // Exit 3 (with the message on stderr) means the addon threw while loading; anything else that ends the
  // child early (a signal, an abort in a driver) is reported as it happened.
  const script =
    'let a; try { a = require(process.argv[1]); } catch (e) { process.stderr.write(String(e && e.message).split("\\n")[0]); process.exit(3); }' +
    'const i = a.gpuInfo ? a.gpuInfo() : null;' +
    'process.stdout.write(JSON.stringify(i));';
  const r = spawnSync(process.execPath, ['-e', script, file], {
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, [PROBE_ENV]: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail = (s: string | null) => (s ?? '').trim().split('\n').slice(-3).join(' | ');
  if (r.error) return { reason: `the GPU probe of ${file} could not run: ${r.error.message}` };
  if (r.signal) return { reason: `the GPU probe of ${file} was killed by ${r.signal}${tail(r.stderr) ? `: ${tail(r.stderr)}` : ''}` };
  if (r.status === 3) return { reason: `the GPU addon ${file} failed to load: ${tail(r.stderr)}` };
  if (r.status !== 0) return { reason: `the GPU probe of ${file} exited with status ${r.status}: ${tail(r.stderr)}` };
  let info: AddonGpuInfo | null;
  try {
    info = JSON.parse(r.stdout) as AddonGpuInfo | null;
  } catch {
    return { reason: `the GPU probe of ${file} printed something unreadable: ${tail(r.stdout)}` };
  }
  if (!info) return { reason: `${file} is not a GPU addon (it has no gpuInfo)` };
  if (info.devices.length === 0)
    return {
      reason: `the ${info.platform} addon loaded but sees no device (${info.error ?? 'no error reported'}; runtime ${info.runtime}, driver ${info.driver})`,
    };
  // A device the binary has no code for could run none of its kernels: with no other device, the GPU
  // backend is unusable, and says what to build.
  const lacking = devicesWithoutCode(info);
  if (lacking.length === info.devices.length) {
    const archs = [...new Set(lacking.map((i) => info.devices[i]!.arch.split(':')[0]))].join(';');
    return {
      reason:
        `the ${info.platform} addon ${file} has code for ${info.builtArchs!.split(',').join(', ')} only, but the device` +
        `${lacking.length > 1 ? 's are' : ' is'} ${lacking.map((i) => `${info.devices[i]!.name} (${info.devices[i]!.arch})`).join(', ')}: ` +
        `build it for them with ROCm 6 or newer: LORAKIT_HIP_ARCHS="${archs}" npm run build:gpu`,
    };
  }
  return { info };
}

// Every native function rethrows its errors as lorakit's classes with the caller's stack. The GPU-only
// functions are gathered under `gpu`.
const GPU_FUNCTIONS = ['gpuInfo', 'gpuMemory', 'gpuSynchronize', 'gpuEmptyCache', 'gpuResetPeak', 'setGemmFallback'];

function wrapErrors(raw: Addon): Addon {
  const out: Record<string, unknown> = {};
  const gpu: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    let v = value;
    if (typeof value === 'function' && name !== 'Storage') {
      v = (...args: unknown[]) => {
        try {
          return (value as (...a: unknown[]) => unknown)(...args);
        } catch (e) {
          throw fromNative(e, new Error().stack);
        }
      };
    }
    if (GPU_FUNCTIONS.includes(name)) gpu[name] = v;
    else out[name] = v;
  }
  if (Object.keys(gpu).length) out.gpu = gpu;
  return out as unknown as Addon;
}
