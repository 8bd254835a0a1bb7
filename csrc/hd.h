// LK_HD marks the functions that both backends compile from one definition: __host__ __device__ under nvcc
// and hipcc, nothing for the host compiler (csrc/cpu, and the GPU emulator of test/emu).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LK_HD __host__ __device__
#else
#define LK_HD
#endif
