// Rotary position embedding and causal grouped-query attention, forward and backward.
//
// RoPE (rotate-half layout, as Hugging Face's Llama): for i < d/2, with a = pos * theta^(-2i/d),
//   y[i] = x[i] cos a - x[i + d/2] sin a,   y[i + d/2] = x[i + d/2] cos a + x[i] sin a
// The backward pass applies the transpose (sin negated).
//
// Attention, per batch b and query head h (kv head h / (hq / hkv)), causal within a document
// (j from the start of t's document, 0 without packing):
//   s_tj = scale * q_t . k_j (start_t <= j <= t),  p_tj = exp(s_tj - lse_t),  out_t = sum_j p_tj v_j
// Backward, with D_t = dout_t . out_t:
//   ds_tj = p_tj (dout_t . v_j - D_t);  dq_t = scale sum_j ds_tj k_j;  dk_j += scale ds_tj q_t;  dv_j += p_tj dout_t
// The score row is materialised (seq floats per thread): the CPU path targets short sequences; the
// GPU path is the flash-style kernel. Work is split over (batch, kv head) so a kv head's gradients are
// accumulated by one thread, in order: deterministic for any thread count.
#include <cmath>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace lorakit::cpu {

void rope(const RopeArgs& a) {
  const int64_t half = a.head_dim / 2;
  // Frequencies in float32 the way transformers computes them: 1 / theta^(2i/d).
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0f / std::pow(a.theta, static_cast<float>(2 * i) / static_cast<float>(a.head_dim));
  const float sign = a.inverse ? -1.f : 1.f;
  parallel_for(a.tokens, [&](int64_t t0, int64_t t1, int) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = t0; t < t1; ++t) {
      const float pos = static_cast<float>(a.pos ? a.pos[t] : t % a.seq);
      for (int64_t i = 0; i < half; ++i) {
        const float ang = pos * inv[i];
        c[i] = std::cos(ang);
        s[i] = sign * std::sin(ang);
      }
      for (int64_t h = 0; h < a.heads; ++h) {
        float* x = a.x + (t * a.heads + h) * a.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[i] - x2 * s[i];
          x[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  });
}

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void attention_forward(const AttentionArgs& a) {
  const int64_t group = a.hq / a.hkv, T = a.seq, D = a.d;
  parallel_for(a.batch * a.hq, [&](int64_t u0, int64_t u1, int) {
    std::vector<float> p(static_cast<size_t>(T));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / a.hq, h = u % a.hq, kh = h / group;
      for (int64_t t = 0; t < T; ++t) {
        const float* q = a.q + ((b * T + t) * a.hq + h) * D;
        const int64_t j0 = a.starts ? a.starts[b * T + t] : 0;
        float mx = -INFINITY;
        for (int64_t j = j0; j <= t; ++j) {
          p[j] = a.scale * dot(q, a.k + ((b * T + j) * a.hkv + kh) * D, D);
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = j0; j <= t; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        float* o = a.out + ((b * T + t) * a.hq + h) * D;
        for (int64_t i = 0; i < D; ++i) o[i] = 0.f;
        for (int64_t j = j0; j <= t; ++j) {
          const float w = p[j] * inv;
          const float* v = a.v + ((b * T + j) * a.hkv + kh) * D;
          for (int64_t i = 0; i < D; ++i) o[i] += w * v[i];
        }
        a.lse[(b * a.hq + h) * T + t] = mx + static_cast<float>(std::log(sum));
      }
    }
  });
}

void attention_backward(const AttentionArgs& a) {
  const int64_t group = a.hq / a.hkv, T = a.seq, D = a.d;
  parallel_for(a.batch * a.hkv, [&](int64_t u0, int64_t u1, int) {
    std::vector<float> p(static_cast<size_t>(T)), ds(static_cast<size_t>(T));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / a.hkv, kh = u % a.hkv;
      for (int64_t j = 0; j < T; ++j) {
        float* dk = a.dk + ((b * T + j) * a.hkv + kh) * D;
        float* dv = a.dv + ((b * T + j) * a.hkv + kh) * D;
        for (int64_t i = 0; i < D; ++i) dk[i] = dv[i] = 0.f;
      }
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t row = (b * T + t) * a.hq + h;
          const float* q = a.q + row * D;
          const float* dout = a.dout + row * D;
          const float lse = a.lse[(b * a.hq + h) * T + t];
          const float Dt = dot(dout, a.out + row * D, D);
          float* dq = a.dq + row * D;
          for (int64_t i = 0; i < D; ++i) dq[i] = 0.f;
          const int64_t j0 = a.starts ? a.starts[b * T + t] : 0;
          for (int64_t j = j0; j <= t; ++j) {
            const float* k = a.k + ((b * T + j) * a.hkv + kh) * D;
            const float* v = a.v + ((b * T + j) * a.hkv + kh) * D;
            const float pj = std::exp(a.scale * dot(q, k, D) - lse);
            const float dsj = pj * (dot(dout, v, D) - Dt) * a.scale;
            float* dk = a.dk + ((b * T + j) * a.hkv + kh) * D;
            float* dv = a.dv + ((b * T + j) * a.hkv + kh) * D;
            for (int64_t i = 0; i < D; ++i) {
              dq[i] += dsj * k[i];
              dk[i] += dsj * q[i];
              dv[i] += pj * dout[i];
            }
          }
        }
      }
    }
  });
}

}  // namespace lorakit::cpu
