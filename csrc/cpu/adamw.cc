// Fused multi-tensor AdamW (torch.optim.AdamW semantics) and the global gradient norm.
//
// For each element, with g = grad * grad_scale (grad_scale folds clip-by-norm into the same pass):
//   p  <- p * (1 - lr * wd)                              decoupled weight decay
//   m  <- m + (1 - b1) * (g - m)                         torch's lerp
//   v  <- b2 * v + (1 - b2) * g * g
//   p  <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The bias corrections are computed in double, as Python computes them in torch.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../ops.h"
#include "gemm.h"
#include "parallel.h"

namespace lorakit::cpu {
namespace {

// All tensors are cut into fixed-size chunks so one parallel_for covers the whole list, and so the
// norm's partial sums (one per chunk) are the same whatever the thread count.
constexpr int64_t kChunk = 1 << 15;

struct Chunk {
  int64_t tensor, begin, end;
};

template <typename Numel>
std::vector<Chunk> chunks(int64_t count, Numel numel) {
  std::vector<Chunk> out;
  for (int64_t t = 0; t < count; ++t)
    for (int64_t b = 0; b < numel(t); b += kChunk) out.push_back({t, b, std::min(numel(t), b + kChunk)});
  return out;
}

// One chunk's update. Plain loops over restrict pointers so the compiler vectorises them for the ISA of
// each caller below (the same IEEE operations in the same order, so every variant gives the same bits).
inline __attribute__((always_inline)) void update(float* __restrict param, const float* __restrict grad, float* __restrict m_,
                                                  float* __restrict v_, int64_t n, float grad_scale, float step_size, float bc2_sqrt,
                                                  float decay, float w1, float w2, float b2, float eps) {
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i] * grad_scale;
    float p = param[i] * decay;
    float m = m_[i] + w1 * (g - m_[i]);
    float v = b2 * v_[i] + w2 * g * g;
    float denom = std::sqrt(v) / bc2_sqrt + eps;
    param[i] = p - step_size * (m / denom);
    m_[i] = m;
    v_[i] = v;
  }
}

#define LORAKIT_ADAMW_VARIANT(NAME, TARGET)                                                                         \
  TARGET void NAME(float* param, const float* grad, float* m, float* v, int64_t n, float gs, float ss, float bc2, \
                   float decay, float w1, float w2, float b2, float eps) {                                        \
    update(param, grad, m, v, n, gs, ss, bc2, decay, w1, w2, b2, eps);                                            \
  }
LORAKIT_ADAMW_VARIANT(update_avx512, __attribute__((target("avx512f"))))
LORAKIT_ADAMW_VARIANT(update_avx2, __attribute__((target("avx2"))))
LORAKIT_ADAMW_VARIANT(update_generic, )
#undef LORAKIT_ADAMW_VARIANT

}  // namespace

void adamw_step(const AdamWTensor* tensors, int64_t count, int64_t step, float grad_scale) {
  auto work = chunks(count, [&](int64_t t) { return tensors[t].numel; });
  const std::string kernel = gemm_kernel();
  auto* fn = kernel == "avx512" ? update_avx512 : kernel == "avx2" ? update_avx2 : update_generic;
  parallel_for(static_cast<int64_t>(work.size()), [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const AdamWTensor& T = tensors[work[c].tensor];
      // Scalars are formed in double and rounded once to float, as torch does with Python numbers.
      const double bc1 = 1.0 - std::pow(T.beta1, static_cast<double>(step));
      const double bc2 = 1.0 - std::pow(T.beta2, static_cast<double>(step));
      const float step_size = static_cast<float>(T.lr / bc1);
      const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      const float decay = static_cast<float>(1.0 - T.lr * T.weight_decay);
      const float w1 = static_cast<float>(1.0 - T.beta1), w2 = static_cast<float>(1.0 - T.beta2);
      const float b2 = static_cast<float>(T.beta2), eps = static_cast<float>(T.eps);
      const int64_t b = work[c].begin, n = work[c].end - b;
      fn(T.param + b, T.grad + b, T.exp_avg + b, T.exp_avg_sq + b, n, grad_scale, step_size, bc2_sqrt, decay, w1, w2, b2, eps);
    }
  });
}

double grad_norm(const float* const* grads, const int64_t* numels, int64_t count) {
  auto work = chunks(count, [&](int64_t t) { return numels[t]; });
  std::vector<double> partial(work.size(), 0.0);
  parallel_for(static_cast<int64_t>(work.size()), [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* g = grads[work[c].tensor];
      double s = 0.0;
      for (int64_t i = work[c].begin; i < work[c].end; ++i) s += static_cast<double>(g[i]) * g[i];
      partial[c] = s;
    }
  });
  double total = 0.0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

}  // namespace lorakit::cpu
