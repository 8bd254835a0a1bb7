import { native } from './native/binding';

export interface BackendInfo {
  /** The backend ops run on. Only 'cpu' exists in this build. */
  active: 'cpu';
  cpu: {
    threads: number;
    /** The GEMM micro-kernel in use: 'avx512', 'avx2' or 'generic'. */
    gemmKernel: string;
    features: { avx2: boolean; avx512: boolean };
  };
  /** GPUs found and usable; empty when the GPU addon is absent or its probe failed. */
  gpus: { name: string; device: string }[];
  /** Why no GPU backend is active, when none is. */
  gpuUnavailableReason?: string;
}

/** What is loaded: the CPU kernels and their features, and any GPU found. */
export function backend(): BackendInfo {
  const info = native().backendInfo();
  return {
    active: 'cpu',
    cpu: { threads: info.threads, gemmKernel: info.gemmKernel, features: { avx2: info.avx2, avx512: info.avx512 } },
    gpus: [],
    gpuUnavailableReason: 'this build has no GPU addon (the CUDA/HIP backend is not part of it yet)',
  };
}
