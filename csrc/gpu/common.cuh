// What every kernel file of the GPU backend includes: the CUDA/HIP compatibility names, error checks
// that throw lorakit::Error (never abort), the per-device stream and scratch memory, launch helpers,
// bf16/fp16 conversions done on raw bits (the same round-to-nearest-even as csrc/cpu), warp- and
// block-wide reductions that work for any wavefront width (32 on NVIDIA, 64 on CDNA), and 16-byte
// vector loads for memory-bound kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC__)
#define LORAKIT_HIP 1
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
// The CUDA names this backend uses, mapped onto HIP's (same signatures).
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaErrorMemoryAllocation hipErrorOutOfMemory
#define cudaErrorNoDevice hipErrorNoDevice
#define cudaErrorInsufficientDriver hipErrorInsufficientDriver
#define cudaGetErrorName hipGetErrorName
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemcpy hipMemcpy
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaStream_t hipStream_t
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaEvent_t hipEvent_t
#define cudaEventCreate hipEventCreate
#define cudaEventRecord hipEventRecord
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventElapsedTime hipEventElapsedTime
#define cudaEventDestroy hipEventDestroy
#define cudaSetDevice hipSetDevice
#define cudaGetDevice hipGetDevice
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaMemGetInfo hipMemGetInfo
#define cudaDriverGetVersion hipDriverGetVersion
#define cudaRuntimeGetVersion hipRuntimeGetVersion
#define cudaDeviceSynchronize hipDeviceSynchronize
#define __shfl_xor_sync(mask, v, lane) __shfl_xor((v), (lane))
#define __shfl_sync(mask, v, lane) __shfl((v), (lane))
#elif defined(LORAKIT_EMU)
// The host emulator of the parity tests (test/emu): CUDA's names on the CPU, neither LORAKIT_CUDA nor
// LORAKIT_HIP, so only the portable paths are compiled.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#define LORAKIT_CUDA 1
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "../float16.h"
#include "../ops.h"
#include "../philox.h"

namespace lorakit::gpu {

// ---- errors ---------------------------------------------------------------------------------------
// Every runtime call goes through LK_CHECK; a failure becomes lorakit::Error with the error's name,
// the call, and where it was made. Out-of-memory gets its own code so JavaScript can tell it apart.
[[noreturn]] void fail(cudaError_t e, const char* what, const char* file, int line);
inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) fail(e, what, file, line);
}
#define LK_CHECK(call) ::lorakit::gpu::check((call), #call, __FILE__, __LINE__)
// After every kernel launch (and vendor-library call): a bad configuration is reported at the launch, not
// at the next sync. A fault inside a kernel is asynchronous and would surface at the next synchronisation,
// usually in an unrelated op; LORAKIT_GPU_SYNC=1 synchronises here too, so the error names this kernel.
void launched(const char* kernel, const char* file, int line);
#define LK_LAUNCHED(name) ::lorakit::gpu::launched(name, __FILE__, __LINE__)

// ---- stream, device facts, scratch ----------------------------------------------------------------
// The current device's one stream: every kernel and copy of the backend runs on it, in order.
cudaStream_t stream();
int sm_count();
// A device buffer that grows on demand and is reused across calls (the QLoRA dequantization target,
// GEMM workspaces, packed argument lists). `slot` separates users that are live at the same time
// within one op; nothing may hold a scratch pointer across ops.
void* scratch(int slot, size_t bytes);
enum ScratchSlot : int { kScratchWeight = 0, kScratchA = 1, kScratchB = 2, kScratchArgs = 3, kScratchReduce = 4,
                         kScratchWorkspace = 5, kScratchNorm = 6, kScratchCount = 7 };

// Copies a small host struct array into the args scratch slot and returns its device address.
void* upload_args(const void* host, size_t bytes);

// ---- launch helpers -------------------------------------------------------------------------------
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535LL * 32) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g < cap ? g : cap);
}

// ---- numeric conversions on raw bits --------------------------------------------------------------
// bfloat16 is float32's upper half, so the integer rounding of ../float16.h is also the fastest;
// float16 below uses the hardware conversion (tensor.cu, which must match the CPU's NaNs, does not).
using bits::bf16_to_f32;
using bits::f32_to_bf16;
__device__ inline float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ inline uint16_t f32_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }

// Load element i of a float32/bfloat16/float16 array as float.
__device__ inline float load_as_f32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// ---- reductions, for any warp width ---------------------------------------------------------------
// warpSize is 32 on NVIDIA and 64 on CDNA; nothing below assumes either. Shared arrays are sized for the
// worst case (1024 threads / 32 lanes = 32 warps).
// Max and sum over an aligned group of `lanes` lanes (a power of two that divides the warp width); every
// lane of the group must call them, and every lane gets the result.
__device__ inline float lanes_max(float v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <typename T>
__device__ inline T lanes_sum(T v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) { return lanes_max(v, warpSize); }
__device__ inline double warp_sum_d(double v) { return lanes_sum(v, warpSize); }
// Block-wide reduction: `warp` reduces within each warp, then once more over the warps' results (`idle`
// for the lanes past the last warp). Every thread of the block must call it, and every thread gets the
// result.
template <typename T, typename Warp>
__device__ inline T block_reduce(T v, T idle, Warp warp) {
  __shared__ T part[32];
  const int lane = threadIdx.x % warpSize, wid = threadIdx.x / warpSize, nw = (blockDim.x + warpSize - 1) / warpSize;
  v = warp(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  T t = lane < nw ? part[lane] : idle;
  return warp(t);
}
__device__ inline float block_max(float v) {
  return block_reduce(v, -INFINITY, [](float x) { return warp_max(x); });
}
__device__ inline double block_sum_d(double v) {
  return block_reduce(v, 0.0, [](double x) { return warp_sum_d(x); });
}

// ---- 16-byte vectors --------------------------------------------------------------------------------
// Memory-bound kernels move 16 bytes per thread per access when the pointers allow it (is_aligned16).
template <typename T>
struct alignas(16) Pack16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};
template <typename T>
__device__ inline Pack16<T> load16(const T* p) {
  return *reinterpret_cast<const Pack16<T>*>(p);
}
template <typename T>
__device__ inline void store16(T* p, const Pack16<T>& x) {
  *reinterpret_cast<Pack16<T>*>(p) = x;
}
__host__ __device__ inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// N consecutive elements as one access of N * sizeof(T) bytes (the address must be aligned to that).
// Kernels templated on N get their vector path and, with N = 1, their scalar path from one body.
template <typename T, int N>
struct alignas(sizeof(T) * N) Chunk {
  T v[N];
};
template <int N, typename T>
__device__ inline Chunk<T, N> load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk<T, N>*>(p);
}
template <int N, typename T>
__device__ inline void store_chunk(T* p, const Chunk<T, N>& x) {
  *reinterpret_cast<Chunk<T, N>*>(p) = x;
}

// ---- arithmetic rounded one operation at a time ----------------------------------------------------
// The CPU backend is built with -ffp-contract=off, so a * b + c rounds twice there. Kernels that must
// reproduce its bits take every product that feeds an addition from mul_rn: nvcc never fuses the
// __*_rn intrinsics, and clang fuses a multiply and an add only when both may be contracted, which the
// pragma forbids for the multiply.
__device__ inline float mul_rn(float a, float b) {
#ifdef LORAKIT_HIP
#pragma clang fp contract(off)
  return a * b;
#else
  return __fmul_rn(a, b);
#endif
}
__device__ inline double mul_rn(double a, double b) {
#ifdef LORAKIT_HIP
#pragma clang fp contract(off)
  return a * b;
#else
  return __dmul_rn(a, b);
#endif
}

}  // namespace lorakit::gpu
