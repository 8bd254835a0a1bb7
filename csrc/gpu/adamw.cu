// Fused multi-tensor AdamW (torch.optim.AdamW semantics) and the global gradient norm, as csrc/cpu/adamw.cc
// computes them. For each element, with g = grad * grad_scale:
//   p  <- p * (1 - lr * wd)                              decoupled weight decay
//   m  <- m + (1 - b1) * (g - m)                         torch's lerp
//   v  <- b2 * v + (1 - b2) * g * g
//   p  <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The per-tensor scalars are formed on the host in double and rounded once to float, with the CPU's
// expressions; on the device every operation rounds on its own (mul_rn, IEEE division and square root),
// so each element gets the CPU's bits.
//
// The whole tensor list is one launch: the tensors are cut into chunks of kChunk elements, one CTA per
// chunk, and a CTA finds its tensor by binary search over the first chunk of each tensor in a small
// argument array uploaded with the launch. No host synchronisation, so a step of many small tensors
// costs one launch and one small copy.
#include <cmath>
#include <vector>

#include "common.cuh"
#include "optim.h"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;

// Chunks of the tensors in list order: tensor t owns chunks [first_chunk, first_chunk + ceil(numel/kChunk)).
// Empty tensors are left out of the list, so every entry owns at least one chunk.
template <typename Args>
__device__ inline const Args& chunk_owner(const Args* args, int count, int64_t chunk) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (args[mid].first_chunk <= chunk) lo = mid;
    else hi = mid - 1;
  }
  return args[lo];
}

// ---- AdamW ----------------------------------------------------------------------------------------
struct AdamWArgs {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel, first_chunk;
  float step_size, bc2_sqrt, decay, w1, w2, b2, eps;
  int32_t vec;  // all four pointers 16-byte aligned
};

// The gradient factor: a float fixed on the host (adamw_step), or formed from the device norm with
// lib/train/adamw.ts's clip, in double:  n = norm * grad_scale, clip = min(1, max_norm / (n + 1e-6)),
// factor = float(grad_scale * clip). A non-finite n skips the step (the host path throws there).
struct GradFactor {
  float fixed;
  const double* norm;
  double grad_scale, max_norm;
};

__device__ inline bool resolve_factor(const GradFactor& f, float* factor) {
  if (!f.norm) {
    *factor = f.fixed;
    return true;
  }
  const double n = mul_rn(*f.norm, f.grad_scale);
  if (!isfinite(n)) return false;
  const double clip = f.max_norm / (n + 1e-6);
  *factor = static_cast<float>(mul_rn(f.grad_scale, clip < 1.0 ? clip : 1.0));
  return true;
}

__device__ inline void adamw_update(float& p, float grad, float& m, float& v, const AdamWArgs& a, float gs) {
  const float g = mul_rn(grad, gs);
  const float decayed = mul_rn(p, a.decay);
  m = m + mul_rn(a.w1, g - m);
  v = mul_rn(a.b2, v) + mul_rn(mul_rn(a.w2, g), g);
  const float denom = sqrtf(v) / a.bc2_sqrt + a.eps;
  p = decayed - mul_rn(a.step_size, m / denom);
}

// Elements [from, to) of one tensor, N at a time (to - from a multiple of N).
template <int N>
__device__ inline void adamw_span(const AdamWArgs& a, float gs, int64_t from, int64_t to) {
  for (int64_t i = from + N * static_cast<int64_t>(threadIdx.x); i < to; i += N * kThreads) {
    auto p = load_chunk<N>(a.param + i), m = load_chunk<N>(a.exp_avg + i), v = load_chunk<N>(a.exp_avg_sq + i);
    const auto g = load_chunk<N>(a.grad + i);
#pragma unroll
    for (int k = 0; k < N; ++k) adamw_update(p.v[k], g.v[k], m.v[k], v.v[k], a, gs);
    store_chunk<N>(a.param + i, p);
    store_chunk<N>(a.exp_avg + i, m);
    store_chunk<N>(a.exp_avg_sq + i, v);
  }
}

__global__ void __launch_bounds__(kThreads) adamw_kernel(const AdamWArgs* __restrict__ args, int count, GradFactor f) {
  float gs;
  if (!resolve_factor(f, &gs)) return;
  const AdamWArgs a = chunk_owner(args, count, blockIdx.x);
  const int64_t begin = (blockIdx.x - a.first_chunk) * kChunk;
  const int64_t end = a.numel - begin < kChunk ? a.numel : begin + kChunk;
  const int64_t tail = a.vec ? begin + ((end - begin) & ~int64_t{3}) : begin;
  adamw_span<4>(a, gs, begin, tail);
  adamw_span<1>(a, gs, tail, end);
}

void launch_adamw(const AdamWTensor* tensors, int64_t count, int64_t step, const GradFactor& f) {
  std::vector<AdamWArgs> args;
  args.reserve(static_cast<size_t>(count > 0 ? count : 0));
  int64_t chunks = 0;
  for (int64_t t = 0; t < count; ++t) {
    const AdamWTensor& T = tensors[t];
    if (T.numel <= 0) continue;
    // The CPU's expressions, in double, each rounded once to float (as torch does with Python numbers).
    const double bc1 = 1.0 - std::pow(T.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(T.beta2, static_cast<double>(step));
    AdamWArgs a;
    a.param = T.param;
    a.grad = T.grad;
    a.exp_avg = T.exp_avg;
    a.exp_avg_sq = T.exp_avg_sq;
    a.numel = T.numel;
    a.first_chunk = chunks;
    a.step_size = static_cast<float>(T.lr / bc1);
    a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    a.decay = static_cast<float>(1.0 - T.lr * T.weight_decay);
    a.w1 = static_cast<float>(1.0 - T.beta1);
    a.w2 = static_cast<float>(1.0 - T.beta2);
    a.b2 = static_cast<float>(T.beta2);
    a.eps = static_cast<float>(T.eps);
    a.vec = is_aligned16(T.param) && is_aligned16(T.grad) && is_aligned16(T.exp_avg) && is_aligned16(T.exp_avg_sq);
    args.push_back(a);
    chunks += (T.numel + kChunk - 1) / kChunk;
  }
  if (args.empty()) return;
  const auto* dev = static_cast<const AdamWArgs*>(upload_args(args.data(), args.size() * sizeof(AdamWArgs)));
  adamw_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(dev, static_cast<int>(args.size()), f);
  LK_LAUNCHED("adamw_step");
}

// ---- global gradient norm -------------------------------------------------------------------------
// sqrt(sum of g^2) in double: one partial sum per chunk (thread-strided, then a block tree), then one CTA
// adds the partials in a fixed order. Deterministic for a given GPU and independent of its size; the CPU
// adds in another order, so the two agree to the last few bits of a double, not bit for bit.
struct SumSqArgs {
  const float* grad;
  int64_t numel, first_chunk;
  int32_t vec;
};

// The product of two floats is exact in double, so whether it is fused into the add changes nothing.
template <int N>
__device__ inline double sumsq_span(const float* g, int64_t from, int64_t to) {
  double s = 0.0;
  for (int64_t i = from + N * static_cast<int64_t>(threadIdx.x); i < to; i += N * kThreads) {
    const auto x = load_chunk<N>(g + i);
#pragma unroll
    for (int k = 0; k < N; ++k) s += static_cast<double>(x.v[k]) * x.v[k];
  }
  return s;
}

__global__ void __launch_bounds__(kThreads) sumsq_kernel(const SumSqArgs* __restrict__ args, int count,
                                                          double* __restrict__ partial) {
  const SumSqArgs a = chunk_owner(args, count, blockIdx.x);
  const int64_t begin = (blockIdx.x - a.first_chunk) * kChunk;
  const int64_t end = a.numel - begin < kChunk ? a.numel : begin + kChunk;
  const int64_t tail = a.vec ? begin + ((end - begin) & ~int64_t{3}) : begin;
  const double s = block_sum_d(sumsq_span<4>(a.grad, begin, tail) + sumsq_span<1>(a.grad, tail, end));
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

constexpr int kFinishThreads = 1024;

__global__ void __launch_bounds__(kFinishThreads) norm_finish_kernel(const double* __restrict__ partial, int64_t chunks,
                                                                      double* __restrict__ norm) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < chunks; i += kFinishThreads) s += partial[i];
  s = block_sum_d(s);
  if (threadIdx.x == 0) *norm = sqrt(s);
}

}  // namespace

void adamw_step(const AdamWTensor* tensors, int64_t count, int64_t step, float grad_scale) {
  launch_adamw(tensors, count, step, GradFactor{grad_scale, nullptr, 0.0, 0.0});
}

void adamw_step_device_scale(const AdamWTensor* tensors, int64_t count, int64_t step, double grad_scale,
                             const double* norm, double max_norm) {
  launch_adamw(tensors, count, step, GradFactor{0.f, norm, grad_scale, max_norm});
}

void grad_norm_device(const float* const* grads, const int64_t* numels, int64_t count, double* norm) {
  std::vector<SumSqArgs> args;
  args.reserve(static_cast<size_t>(count > 0 ? count : 0));
  int64_t chunks = 0;
  for (int64_t t = 0; t < count; ++t) {
    if (numels[t] <= 0) continue;
    args.push_back({grads[t], numels[t], chunks, is_aligned16(grads[t])});
    chunks += (numels[t] + kChunk - 1) / kChunk;
  }
  if (args.empty()) {
    LK_CHECK(cudaMemsetAsync(norm, 0, sizeof(double), stream()));  // +0.0
    return;
  }
  const auto* dev = static_cast<const SumSqArgs*>(upload_args(args.data(), args.size() * sizeof(SumSqArgs)));
  auto* partial = static_cast<double*>(scratch(kScratchReduce, static_cast<size_t>(chunks) * sizeof(double)));
  sumsq_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(dev, static_cast<int>(args.size()), partial);
  LK_LAUNCHED("grad_norm");
  norm_finish_kernel<<<1, kFinishThreads, 0, stream()>>>(partial, chunks, norm);
  LK_LAUNCHED("grad_norm_finish");
}

double grad_norm(const float* const* grads, const int64_t* numels, int64_t count) {
  auto* d = static_cast<double*>(scratch(kScratchWorkspace, sizeof(double)));
  grad_norm_device(grads, numels, count, d);
  double norm = 0.0;
  LK_CHECK(cudaMemcpyAsync(&norm, d, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  LK_CHECK(cudaStreamSynchronize(stream()));
  return norm;
}

double* norm_slot() { return static_cast<double*>(scratch(kScratchNorm, sizeof(double))); }

}  // namespace lorakit::gpu
