import { devicesWithoutCode, loadedBackend, native } from './native/binding';

export { gpuCount } from './native/binding';

export interface GpuDevice {
  /** The name tensors use: 'cuda:0', 'cuda:1', ... (also on AMD GPUs, as in PyTorch). */
  device: string;
  name: string;
  /** 'sm_90' on NVIDIA, 'gfx942' on AMD. */
  arch: string;
  totalBytes: number;
  multiprocessors: number;
  warpSize: number;
  /**
   * False for a device the loaded binary has no code for (a HIP build without its gfx architecture): no
   * op can run on it; rebuild with LORAKIT_HIP_ARCHS naming it. Absent when the binary lists no
   * architectures (CUDA builds, whose PTX the driver compiles for newer GPUs).
   */
  archInBuild?: boolean;
}

export interface BackendInfo {
  /**
   * The backend that GPU tensors run on: 'cuda' or 'hip' when the GPU addon loaded, else 'cpu'
   * ('emulator' only when a test loads the host emulator of the GPU kernels).
   */
  active: 'cpu' | 'cuda' | 'hip' | 'emulator';
  /** The addon file in use, when known. */
  addon?: string;
  cpu: {
    threads: number;
    /** The GEMM micro-kernel in use: 'avx512', 'avx2' or 'generic'. */
    gemmKernel: string;
    features: { avx2: boolean; avx512: boolean };
  };
  /** GPUs found and usable; empty when the GPU addon is absent or its probe failed. */
  gpus: GpuDevice[];
  /** With a GPU: the runtime and driver versions, and which engine serves dense GEMMs. */
  gpuRuntime?: {
    platform: 'cuda' | 'hip' | 'emulator';
    runtime: string;
    driver: string;
    /** 'cublaslt (libcublasLt.so.12 from /usr/local/cuda-12.4/lib64/libcublasLt.so.12)', or 'fallback (why)'. */
    gemmEngine: string;
    /** The architectures the binary has code for, where it lists them (HIP builds). */
    builtArchs?: string[];
  };
  /** Why no GPU backend is active, when none is. */
  gpuUnavailableReason?: string;
}

/** What is loaded: the CPU kernels and their features, and any GPU found (never a silent fallback). */
export function backend(): BackendInfo {
  const info = native().backendInfo();
  const loaded = loadedBackend();
  const cpu = { threads: info.threads, gemmKernel: info.gemmKernel, features: { avx2: info.avx2, avx512: info.avx512 } };
  if (loaded.kind === 'cpu' || !loaded.gpu)
    return { active: 'cpu', addon: loaded.file, cpu, gpus: [], gpuUnavailableReason: loaded.gpuUnavailableReason };
  const g = native().gpu!.gpuInfo();
  const lacking = devicesWithoutCode(g);
  return {
    active: loaded.kind,
    addon: loaded.file,
    cpu,
    gpus: g.devices.map((d, i) => ({ device: `cuda:${i}`, ...d, ...(g.builtArchs ? { archInBuild: !lacking.includes(i) } : {}) })),
    gpuRuntime: {
      platform: g.platform,
      runtime: g.runtime,
      driver: g.driver,
      gemmEngine: g.gemmEngine ?? 'unknown',
      ...(g.builtArchs ? { builtArchs: g.builtArchs.split(',') } : {}),
    },
  };
}
