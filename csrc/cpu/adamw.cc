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
#include <vector>

#include "../ops.h"
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

}  // namespace

void adamw_step(const AdamWTensor* tensors, int64_t count, int64_t step, float grad_scale) {
  auto work = chunks(count, [&](int64_t t) { return tensors[t].numel; });
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
      for (int64_t i = work[c].begin; i < work[c].end; ++i) {
        float g = T.grad[i] * grad_scale;
        float p = T.param[i] * decay;
        float m = T.exp_avg[i] + w1 * (g - T.exp_avg[i]);
        float v = b2 * T.exp_avg_sq[i] + w2 * g * g;
        float denom = std::sqrt(v) / bc2_sqrt + eps;
        T.param[i] = p - step_size * (m / denom);
        T.exp_avg[i] = m;
        T.exp_avg_sq[i] = v;
      }
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
