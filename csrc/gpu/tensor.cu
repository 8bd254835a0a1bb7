// Element-wise tensor ops of the GPU backend: fill, arange, cast, the counter-based random generator,
// strided 2-D copies and axpy. Each one gives the bits csrc/cpu/tensor.cc gives: conversions work on
// raw bits with the CPU's rounding rules, products are rounded before they are added (the CPU build
// does not contract to FMA), and random numbers come from the same Philox counters. The one exception
// is rand_normal, whose double log and cos may differ from glibc's in the last bit: its floats agree
// but for the rare value that sits on a rounding boundary.
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 256;

// Element storage per dtype; the two 16-bit float formats share uint16_t and differ only in DType.
template <DType D> struct Store;
template <> struct Store<DType::F32> { using T = float; };
template <> struct Store<DType::BF16> { using T = uint16_t; };
template <> struct Store<DType::F16> { using T = uint16_t; };
template <> struct Store<DType::I32> { using T = int32_t; };
template <> struct Store<DType::I64> { using T = int64_t; };
template <> struct Store<DType::U8> { using T = uint8_t; };
template <DType D> using S = typename Store<D>::T;

// f(std::integral_constant<DType, D>{}) with D = dt: the one switch from a run-time dtype to the templates.
template <typename F>
void with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: return f(std::integral_constant<DType, DType::F32>{});
    case DType::BF16: return f(std::integral_constant<DType, DType::BF16>{});
    case DType::F16: return f(std::integral_constant<DType, DType::F16>{});
    case DType::I32: return f(std::integral_constant<DType, DType::I32>{});
    case DType::I64: return f(std::integral_constant<DType, DType::I64>{});
    case DType::U8: return f(std::integral_constant<DType, DType::U8>{});
  }
}

__host__ __device__ constexpr bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// ---- conversions, the rules of csrc/cpu/tensor.cc ---------------------------------------------------
template <DType D>
__device__ inline float to_f32(S<D> x) {
  if constexpr (D == DType::BF16) return bf16_to_f32(x);
  else if constexpr (D == DType::F16) return bits::f16_to_f32(x);  // not the hardware's: the CPU's NaNs
  else return static_cast<float>(x);  // int64 rounds once, to nearest even, as the CPU's cast does
}

// A float value stored into a float dtype: one rounding, to nearest even.
template <DType D>
__device__ inline S<D> from_f32(float f) {
  if constexpr (D == DType::BF16) return f32_to_bf16(f);
  else if constexpr (D == DType::F16) return bits::f32_to_f16(f);
  else return f;
}

// store_value of the CPU: a double into any dtype (floats through float32).
template <DType D>
__device__ inline S<D> from_f64(double v) {
  if constexpr (is_float(D)) return from_f32<D>(static_cast<float>(v));
  else return static_cast<S<D>>(v);
}

// Same dtype copies bits. Integer to integer goes through int64 and wraps. Anything to a float dtype
// rounds once from the exact source value. Float to integer truncates toward zero and saturates, and
// NaN becomes 0.
template <DType From, DType To>
__device__ inline S<To> convert(S<From> x) {
  if constexpr (From == To) {
    return x;
  } else if constexpr (!is_float(From) && !is_float(To)) {
    return static_cast<S<To>>(static_cast<int64_t>(x));
  } else if constexpr (is_float(To)) {
    return from_f32<To>(to_f32<From>(x));
  } else {
    const double v = to_f32<From>(x);
    if (isnan(v)) return 0;
    constexpr double lo = To == DType::U8 ? 0.0 : To == DType::I32 ? -2147483648.0 : -9223372036854775808.0;
    constexpr double hi = To == DType::U8 ? 255.0 : To == DType::I32 ? 2147483647.0 : 9223372036854774784.0;
    double t = trunc(v);
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    return static_cast<S<To>>(t);
  }
}

// ---- fill ------------------------------------------------------------------------------------------
// The value is converted once on the host with the CPU's own code, so the kernel only replicates bits.
// dst is element-aligned but may start anywhere in a 16-byte line (a view): the first `head` elements
// are stored one by one up to the boundary, the body in 16-byte stores, then the tail.
template <typename T>
__global__ void fill_kernel(T* dst, int64_t n, int64_t head, T value) {
  constexpr int N = Pack16<T>::N;
  Pack16<T> p;
  for (int j = 0; j < N; ++j) p.v[j] = value;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = (n - head) / N, tail = head + nvec * N;
  for (int64_t i = first; i < nvec; i += stride) store16(dst + head + i * N, p);
  for (int64_t i = first; i < head + (n - tail); i += stride) dst[i < head ? i : tail + (i - head)] = value;
}

template <typename T>
void launch_fill(void* dst, int64_t n, T value) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(dst);
  int64_t head = addr % sizeof(T) ? n : static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(T));
  if (head > n) head = n;
  fill_kernel<T><<<grid_for((n - head) / Pack16<T>::N + head, kThreads), kThreads, 0, stream()>>>(
      static_cast<T*>(dst), n, head, value);
  LK_LAUNCHED("fill");
}

// ---- arange ----------------------------------------------------------------------------------------
// dst[i] = start + step * i in double, stored as the CPU's store_value does.
template <DType D>
__global__ void arange_kernel(S<D>* dst, int64_t n, double start, double step) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f64<D>(start + mul_rn(step, static_cast<double>(i)));
}

template <DType D>
void launch_arange(void* dst, int64_t n, double start, double step) {
  arange_kernel<D><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(static_cast<S<D>*>(dst), n, start, step);
  LK_LAUNCHED("arange");
}

// ---- cast ------------------------------------------------------------------------------------------
// Each thread converts E elements at a time, E chosen so that the wider side moves 16 bytes; with both
// pointers aligned to their side's access the vector path runs, otherwise E = 1.
template <DType From, DType To, int E>
__global__ void cast_kernel(const S<From>* src, S<To>* dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / E;
  for (int64_t i = first; i < nvec; i += stride) {
    const Chunk<S<From>, E> a = load_chunk<E>(src + i * E);
    Chunk<S<To>, E> b;
    for (int j = 0; j < E; ++j) b.v[j] = convert<From, To>(a.v[j]);
    store_chunk<E>(dst + i * E, b);
  }
  for (int64_t i = nvec * E + first; i < n; i += stride) dst[i] = convert<From, To>(src[i]);
}

template <DType From, DType To>
void launch_cast(const void* src, void* dst, int64_t n) {
  constexpr int E = static_cast<int>(16 / (sizeof(S<From>) > sizeof(S<To>) ? sizeof(S<From>) : sizeof(S<To>)));
  const bool vec = reinterpret_cast<uintptr_t>(src) % (E * sizeof(S<From>)) == 0 &&
                   reinterpret_cast<uintptr_t>(dst) % (E * sizeof(S<To>)) == 0;
  auto* s = static_cast<const S<From>*>(src);
  auto* d = static_cast<S<To>*>(dst);
  if (vec) cast_kernel<From, To, E><<<grid_for(n / E + 1, kThreads), kThreads, 0, stream()>>>(s, d, n);
  else cast_kernel<From, To, 1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(s, d, n);
  LK_LAUNCHED("cast");
}

// ---- random ----------------------------------------------------------------------------------------
// Element i draws from counter offset + i. Uniform: lo + (hi - lo) * u with u the top 24 bits of word 0
// over 2^24, in [0, 1). Normal: Box-Muller in double on words 0 and 1, u1 in (0, 1] so the log is finite:
//   z = sqrt(-2 ln u1) cos(2 pi u2),  x = mean + std z
__global__ void rand_uniform_kernel(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = static_cast<float>(philox(seed, offset + i).v[0] >> 8) * (1.0f / 16777216.0f);
    dst[i] = lo + mul_rn(hi - lo, u);
  }
}

__global__ void rand_normal_kernel(float* dst, int64_t n, uint64_t seed, uint64_t offset, float mean, float std) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxOut r = philox(seed, offset + i);
    const double u1 = (static_cast<double>(r.v[0] >> 8) + 1.0) / 16777216.0;
    const double u2 = static_cast<double>(r.v[1] >> 8) / 16777216.0;
    const double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    dst[i] = static_cast<float>(mean + mul_rn(static_cast<double>(std), z));
  }
}

// ---- copy2d ----------------------------------------------------------------------------------------
// dst[r, :cols] (+)= src[r, :cols] between row-major buffers with their own row strides. Rows run along
// grid y, columns (in chunks of V) along x.
template <int V>
__global__ void copy2d_kernel(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows, int64_t cols,
                              bool accumulate) {
  const int64_t chunks = cols / V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float* s = src + r * src_ld;
    float* d = dst + r * dst_ld;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      Chunk<float, V> v = load_chunk<V>(s + c * V);
      if (accumulate) {
        const Chunk<float, V> old = load_chunk<V>(d + c * V);
        for (int j = 0; j < V; ++j) v.v[j] = old.v[j] + v.v[j];
      }
      store_chunk<V>(d + c * V, v);
    }
  }
}

template <int V>
void launch_copy2d(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows, int64_t cols, bool accumulate) {
  const dim3 grid(grid_for(cols / V, kThreads, 1024), static_cast<unsigned>(rows < 65535 ? rows : 65535));
  copy2d_kernel<V><<<grid, kThreads, 0, stream()>>>(src, src_ld, dst, dst_ld, rows, cols, accumulate);
  LK_LAUNCHED("copy2d");
}

// ---- axpy ------------------------------------------------------------------------------------------
// y += alpha * x. When x and y sit at the same offset in their 16-byte lines, the elements before the
// first boundary go one by one and the rest in 16-byte chunks; otherwise everything is scalar.
__global__ void axpy_kernel(float alpha, const float* x, float* y, int64_t n, int64_t head) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = (n - head) / 4, tail = head + nvec * 4;
  for (int64_t i = first; i < nvec; i += stride) {
    const Chunk<float, 4> a = load_chunk<4>(x + head + i * 4);
    Chunk<float, 4> b = load_chunk<4>(y + head + i * 4);
    for (int j = 0; j < 4; ++j) b.v[j] += mul_rn(alpha, a.v[j]);
    store_chunk<4>(y + head + i * 4, b);
  }
  for (int64_t i = first; i < head + (n - tail); i += stride) {
    const int64_t k = i < head ? i : tail + (i - head);
    y[k] += mul_rn(alpha, x[k]);
  }
}

}  // namespace

void fill(void* dst, DType dt, int64_t n, double value) {
  if (n <= 0) return;
  switch (dt) {
    case DType::F32: return launch_fill(dst, n, static_cast<float>(value));
    case DType::BF16: return launch_fill(dst, n, f32_to_bf16(static_cast<float>(value)));
    case DType::F16: return launch_fill(dst, n, bits::f32_to_f16(static_cast<float>(value)));
    case DType::I32: return launch_fill(dst, n, static_cast<int32_t>(value));
    case DType::I64: return launch_fill(dst, n, static_cast<int64_t>(value));
    case DType::U8: return launch_fill(dst, n, static_cast<uint8_t>(value));
  }
}

void arange(void* dst, DType dt, int64_t n, double start, double step) {
  if (n <= 0) return;
  with_dtype(dt, [&](auto d) { launch_arange<decltype(d)::value>(dst, n, start, step); });
}

void cast(const void* src, DType from, void* dst, DType to, int64_t n) {
  if (n <= 0) return;
  with_dtype(from, [&](auto f) {
    with_dtype(to, [&](auto t) { launch_cast<decltype(f)::value, decltype(t)::value>(src, dst, n); });
  });
}

void rand_uniform(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi) {
  if (n <= 0) return;
  rand_uniform_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, n, seed, offset, lo, hi);
  LK_LAUNCHED("rand_uniform");
}

void rand_normal(float* dst, int64_t n, uint64_t seed, uint64_t offset, float mean, float std) {
  if (n <= 0) return;
  rand_normal_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, n, seed, offset, mean, std);
  LK_LAUNCHED("rand_normal");
}

void copy2d(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows, int64_t cols, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  const bool vec = cols % 4 == 0 && src_ld % 4 == 0 && dst_ld % 4 == 0 && is_aligned16(src) && is_aligned16(dst);
  if (vec) launch_copy2d<4>(src, src_ld, dst, dst_ld, rows, cols, accumulate);
  else launch_copy2d<1>(src, src_ld, dst, dst_ld, rows, cols, accumulate);
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const uintptr_t ax = reinterpret_cast<uintptr_t>(x), ay = reinterpret_cast<uintptr_t>(y);
  int64_t head = ((ax ^ ay) & 15) || (ay & 3) ? n : static_cast<int64_t>(((16 - (ay & 15)) & 15) / 4);
  if (head > n) head = n;
  axpy_kernel<<<grid_for((n - head) / 4 + head, kThreads), kThreads, 0, stream()>>>(alpha, x, y, n, head);
  LK_LAUNCHED("axpy");
}

}  // namespace lorakit::gpu
