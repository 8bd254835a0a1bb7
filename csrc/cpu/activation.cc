// Element-wise activations, forward and backward.
//
// gelu_new (GPT-2): y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// SwiGLU (Llama MLP): y = silu(gate) * up,  silu(g) = g * sigmoid(g)
//   dgate = dy * up * sigmoid(g) (1 + g (1 - sigmoid(g))),  dup = dy * silu(g)
#include <cmath>

#include "../ops.h"
#include "parallel.h"

namespace lorakit::cpu {
namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
}  // namespace

void gelu_tanh_forward(const float* x, float* y, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + std::tanh(kSqrt2OverPi * (v + kGeluC * v * v * v)));
    }
  });
}

void gelu_tanh_backward(const float* dy, const float* x, float* dx, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float v = x[i], th = std::tanh(kSqrt2OverPi * (v + kGeluC * v * v * v));
      const float grad = 0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * kSqrt2OverPi * (1.f + 3.f * kGeluC * v * v);
      dx[i] = dy[i] * grad;
    }
  });
}

void swiglu_forward(const float* gate, const float* up, float* y, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) y[i] = gate[i] * sigmoid(gate[i]) * up[i];
  });
}

void swiglu_backward(const float* dy, const float* gate, const float* up, float* dgate, float* dup, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i], sg = sigmoid(g);
      dgate[i] = dy[i] * up[i] * sg * (1.f + g * (1.f - sg));
      dup[i] = dy[i] * g * sg;
    }
  });
}

}  // namespace lorakit::cpu
