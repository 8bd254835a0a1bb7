// The CUDA runtime and device built-ins that csrc/gpu uses, emulated on the host so that the parity suite
// (test/emu/parity.cc) can run the real kernels on a machine without a GPU. csrc/gpu/common.cuh includes
// this header when LORAKIT_EMU is defined; test/emu/build.mjs compiles every csrc/gpu/*.cu against it after
// rewriting kernel launches and shared-memory declarations (see there).
//
// The execution model, implemented in emu_runtime.cc:
//  - A block runs as blockDim cooperative threads (fibers) on one OS thread. A thread runs until it
//    reaches __syncthreads, a warp collective or its end; then the scheduler resumes another, in the order
//    LORAKIT_EMU_SCHEDULE names: "shuffle" (the default: a random order at every sweep, so that code reading
//    what another thread wrote without a barrier in between sees the wrong value), "warps" (one warp at a
//    time, as far as the barriers let it run ahead of the others), "forward" or "reverse".
//  - Warps are warpSize consecutive threads (LORAKIT_EMU_WARP: 32, or 64 as on CDNA). A shuffle is a warp
//    barrier: every live lane deposits its value, and the values move once all have arrived. Reading a lane
//    that does not exist or has exited, a warp whose lanes wait at different collectives, a mask that
//    leaves out a lane taking part, a __syncthreads reached from different lines, and a deadlock are
//    reported as a launch failure, not guessed at.
//  - Blocks run one after another, in the schedule's order. __shared__ variables are poisoned when a
//    block first reaches them (0xff bytes in even blocks, 0x7f in odd ones) and counted against the shared
//    memory a block may have; dynamic shared memory is a fresh poisoned buffer ending at an inaccessible
//    page. Launch configurations are checked as the device checks them (cudaGetLastError reports them).
//  - Streams are queues: kernels and copies run when the host synchronises (cudaStreamSynchronize, an event,
//    a copy into pageable host memory), so a result read before its synchronisation is stale, and copies
//    from pinned memory read their source only then. Work on the legacy default stream runs at once and is
//    recorded as a hazard (see emu_control.h).
//  - Device memory is host memory that host code cannot touch outside runtime calls and kernels; each
//    allocation ends at an inaccessible page, and freed ones stay inaccessible for a while. The host
//    dereferencing a device pointer, a kernel running past an allocation or using a freed one stops the
//    process with a report naming the kernel, block and thread.
#pragma once

#include <dlfcn.h>
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "float16.h"  // csrc/float16.h: bit_cast, the one definition csrc uses

// ---- qualifiers -------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// build.mjs rewrites every __shared__ declaration of csrc/gpu into a static one registered with
// ::emu::shared_var; this definition only serves code it did not rewrite (and then nothing is poisoned).
#define __shared__ static

// ---- vector types -----------------------------------------------------------------------------------
// Aggregates with CUDA's alignment, so that reinterpret_casts to them keep their alignment requirements.
#define LORAKIT_EMU_VEC(T, N, A, ...)                                       \
  struct __attribute__((aligned(A))) T##N {                                 \
    __VA_ARGS__;                                                            \
  };
LORAKIT_EMU_VEC(float, 2, 8, float x, y)
LORAKIT_EMU_VEC(float, 4, 16, float x, y, z, w)
LORAKIT_EMU_VEC(int, 2, 8, int x, y)
LORAKIT_EMU_VEC(int, 4, 16, int x, y, z, w)
LORAKIT_EMU_VEC(uint, 2, 8, unsigned x, y)
LORAKIT_EMU_VEC(uint, 4, 16, unsigned x, y, z, w)
LORAKIT_EMU_VEC(double, 2, 16, double x, y)
#undef LORAKIT_EMU_VEC
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// ---- runtime types ----------------------------------------------------------------------------------
// Codes as the CUDA runtime numbers them.
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventBlockingSync = 1, cudaEventDisableTiming = 2;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int multiProcessorCount;
  int major, minor;
  int l2CacheSize;
  char gcnArchName[256];
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
template <typename T>
cudaError_t cudaMallocHost(T** p, size_t bytes) {
  return cudaMallocHost(reinterpret_cast<void**>(p), bytes);
}
template <typename T>
cudaError_t cudaFuncSetAttribute(T* fn, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), attr, value);
}

// ---- the emulator's internals that the macros below reach ------------------------------------------
namespace emu {

struct ThreadId {
  uint3 idx;
};
extern ThreadId* current;  // the device thread now running
extern uint3 block_index;
extern dim3 block_dim, grid_dim;
int warp_size();

// Where a kernel is launched from: written by build.mjs's launch rewrite.
struct Site {
  const char* kernel;
  const char* file;
  int line;
};
// Validates the configuration (a bad one becomes cudaGetLastError's error, as on a device) and queues the
// kernel on the stream; `thread` runs one device thread of it.
void submit(const Site& site, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, std::function<void()> thread);

// `kernel<<<grid, block, smem, stream>>>(args...)` becomes
// `::emu::launch(site, grid, block, smem, stream)([](auto&&... a) { kernel(a...); }, args...)`: the
// arguments are evaluated once and copied at the launch, as a device launch copies them, and each thread
// calls the kernel with its own copies, so templates deduce exactly as in the original call.
struct Launch {
  Site site;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <typename F, typename... A>
  void operator()(F call, A&&... args) const {
    auto params = std::make_shared<std::tuple<std::decay_t<A>...>>(std::forward<A>(args)...);
    submit(site, grid, block, smem, stream, [call, params] {
      auto copy = *params;
      std::apply(call, copy);
    });
  }
};
inline Launch launch(const Site& site, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return {site, grid, block, smem, stream};
}

// Registers a __shared__ variable of the running block: poisoned the first time the block reaches it, and
// counted against the shared memory a block may use.
void shared_var(void* p, size_t bytes);
// The running launch's dynamic shared memory (build.mjs rewrites `extern __shared__ T name[];` to use it).
void* dynamic_shared();

// Vendor libraries (gemm.cu dlopens cuBLASLt / rocBLAS): only fakes the test registers resolve, never
// whatever happens to be installed on the machine.
void* dl_open(const char* name, int flags);
void* dl_sym(void* handle, const char* name);
int dl_close(void* handle);
char* dl_error();

}  // namespace emu

#define threadIdx (static_cast<const uint3&>(::emu::current->idx))
#define blockIdx (static_cast<const uint3&>(::emu::block_index))
#define blockDim (static_cast<const dim3&>(::emu::block_dim))
#define gridDim (static_cast<const dim3&>(::emu::grid_dim))

#define dlopen ::emu::dl_open
#define dlsym ::emu::dl_sym
#define dlclose ::emu::dl_close
#define dlerror ::emu::dl_error

// A run-time value, as in CUDA (and in HIP on recent ROCm): defined in the emulator's runtime, so nothing
// can treat it as a compile-time constant.
extern const int warpSize;

// ---- synchronisation and warp collectives -------------------------------------------------------------
// Macros, so that each call knows its source line: the threads of a block must meet at the same
// __syncthreads, and the lanes of a warp at the same collective (the compiler may duplicate a call, so
// code addresses would not do).
namespace emu {
struct Where {
  const char* file;
  int line;
};
void syncthreads(Where at);
enum class Shfl : int { Idx, Up, Down, Xor };
uint64_t shuffle(uint64_t bits, Shfl kind, int arg, int width, unsigned mask, Where at);
uint64_t vote(bool pred, unsigned mask, Where at);  // one bit per lane of the warp
void syncwarp(unsigned mask, Where at);

template <typename T>
inline T shuffle_as(Where at, Shfl kind, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(bits, kind, arg, width, mask, at);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
template <typename T>
inline T shfl(Where at, unsigned mask, T v, int src, int width = warpSize) {
  return shuffle_as(at, Shfl::Idx, mask, v, src, width);
}
template <typename T>
inline T shfl_up(Where at, unsigned mask, T v, unsigned delta, int width = warpSize) {
  return shuffle_as(at, Shfl::Up, mask, v, static_cast<int>(delta), width);
}
template <typename T>
inline T shfl_down(Where at, unsigned mask, T v, unsigned delta, int width = warpSize) {
  return shuffle_as(at, Shfl::Down, mask, v, static_cast<int>(delta), width);
}
template <typename T>
inline T shfl_xor(Where at, unsigned mask, T v, int lane_mask, int width = warpSize) {
  return shuffle_as(at, Shfl::Xor, mask, v, lane_mask, width);
}
inline void syncwarp_at(Where at, unsigned mask = 0xffffffffu) { syncwarp(mask, at); }
}  // namespace emu

#define LORAKIT_EMU_HERE (::emu::Where{__FILE__, __LINE__})
#define __syncthreads() ::emu::syncthreads(LORAKIT_EMU_HERE)
#define __syncwarp(...) ::emu::syncwarp_at(LORAKIT_EMU_HERE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(LORAKIT_EMU_HERE, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl_up(LORAKIT_EMU_HERE, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl_down(LORAKIT_EMU_HERE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl_xor(LORAKIT_EMU_HERE, __VA_ARGS__)
// One bit per lane; 64 bits wide so that a 64-lane warp fits (HIP's __ballot is 64-bit).
#define __ballot_sync(mask, pred) ::emu::vote((pred) != 0, (mask), LORAKIT_EMU_HERE)
#define __any_sync(mask, pred) (::emu::vote((pred) != 0, (mask), LORAKIT_EMU_HERE) != 0)
#define __all_sync(mask, pred) (::emu::vote((pred) == 0, (mask), LORAKIT_EMU_HERE) == 0)
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- atomics ----------------------------------------------------------------------------------------
// Device threads never run at the same time, so a read-modify-write is atomic as written. The types are
// those CUDA has overloads for.
namespace emu {
template <typename T>
constexpr bool atomic_int = std::is_same<T, int>::value || std::is_same<T, unsigned>::value ||
                            std::is_same<T, unsigned long long>::value || std::is_same<T, long long>::value;
}
template <typename T, typename U>
T atomicAdd(T* p, U v) {
  static_assert(::emu::atomic_int<T> || std::is_same<T, float>::value || std::is_same<T, double>::value,
                "atomicAdd: no CUDA overload for this type");
  const T old = *p;
  *p = old + static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicSub(T* p, U v) {
  static_assert(std::is_same<T, int>::value || std::is_same<T, unsigned>::value, "atomicSub: int or unsigned");
  const T old = *p;
  *p = old - static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicMin(T* p, U v) {
  static_assert(::emu::atomic_int<T>, "atomicMin: integer types only");
  const T old = *p;
  if (static_cast<T>(v) < old) *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicMax(T* p, U v) {
  static_assert(::emu::atomic_int<T>, "atomicMax: integer types only");
  const T old = *p;
  if (static_cast<T>(v) > old) *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicExch(T* p, U v) {
  const T old = *p;
  *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U, typename V>
T atomicCAS(T* p, U compare, V v) {
  static_assert(::emu::atomic_int<T>, "atomicCAS: integer types only");
  const T old = *p;
  if (old == static_cast<T>(compare)) *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicOr(T* p, U v) {
  const T old = *p;
  *p = old | static_cast<T>(v);
  return old;
}
template <typename T, typename U>
T atomicAnd(T* p, U v) {
  const T old = *p;
  *p = old & static_cast<T>(v);
  return old;
}

// ---- math and bit intrinsics -------------------------------------------------------------------------
// Device math (expf, exp, tanh, fmaf, ...) is the host's libm from <math.h>. The _rn arithmetic is plain
// arithmetic: build.mjs compiles with -ffp-contract=off, so nothing is fused behind the code's back. The
// fast approximations are the accurate functions; the tolerances of the parity suite cover either.
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x != x ? 0.f : x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

inline unsigned __float_as_uint(float f) { return lorakit::bits::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return lorakit::bits::bit_cast<float>(u); }
inline int __float_as_int(float f) { return lorakit::bits::bit_cast<int>(f); }
inline float __int_as_float(int i) { return lorakit::bits::bit_cast<float>(i); }
inline long long __double_as_longlong(double d) { return lorakit::bits::bit_cast<long long>(d); }
inline double __longlong_as_double(long long u) { return lorakit::bits::bit_cast<double>(u); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
