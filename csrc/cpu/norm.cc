// LayerNorm and RMSNorm over the last dimension, forward and backward.
//
// LayerNorm:  xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps) (biased variance),  y = xhat * w + b
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w;   dw += sum_rows dy * xhat;  db += sum_rows dy
// RMSNorm:    xhat = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps),  y = xhat * w
//   dx = rstd * (g - xhat * mean(g * xhat));   dw += sum_rows dy * xhat
// Row statistics accumulate in double. Weight gradients are reduced per column in row order, so they
// are the same for any thread count.
#include <cmath>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace lorakit::cpu {
namespace {

void forward(const NormArgs& a, bool centered) {
  parallel_for(a.rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = a.x + r * a.dim;
      float* y = a.y + r * a.dim;
      double mean = 0.0;
      if (centered) {
        for (int64_t i = 0; i < a.dim; ++i) mean += x[i];
        mean /= static_cast<double>(a.dim);
      }
      double var = 0.0;
      for (int64_t i = 0; i < a.dim; ++i) var += (x[i] - mean) * (x[i] - mean);
      var /= static_cast<double>(a.dim);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + a.eps));
      const float m = static_cast<float>(mean);
      for (int64_t i = 0; i < a.dim; ++i) {
        float v = (x[i] - m) * rstd * a.w[i];
        y[i] = a.b ? v + a.b[i] : v;
      }
      if (a.mean) a.mean[r] = m;
      a.rstd[r] = rstd;
    }
  });
}

void backward(const NormArgs& a, bool centered) {
  auto mean_of = [&](int64_t r) { return centered ? a.mean[r] : 0.f; };
  if (a.dx) {
    parallel_for(a.rows, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* x = a.x + r * a.dim;
        const float* dy = a.dy + r * a.dim;
        const float m = mean_of(r), rs = a.rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (int64_t i = 0; i < a.dim; ++i) {
          double g = static_cast<double>(dy[i]) * a.w[i];
          sg += g;
          sgx += g * ((x[i] - m) * rs);
        }
        const double n = static_cast<double>(a.dim);
        const float mg = centered ? static_cast<float>(sg / n) : 0.f, mgx = static_cast<float>(sgx / n);
        float* dx = a.dx + r * a.dim;
        for (int64_t i = 0; i < a.dim; ++i) dx[i] = rs * (dy[i] * a.w[i] - mg - (x[i] - m) * rs * mgx);
      }
    });
  }
  if (a.dw || a.db) {
    parallel_for(a.dim, [&](int64_t c0, int64_t c1, int) {
      std::vector<double> sw(static_cast<size_t>(c1 - c0), 0.0), sb(static_cast<size_t>(c1 - c0), 0.0);
      for (int64_t r = 0; r < a.rows; ++r) {
        const float* x = a.x + r * a.dim;
        const float* dy = a.dy + r * a.dim;
        const float m = mean_of(r), rs = a.rstd[r];
        for (int64_t i = c0; i < c1; ++i) {
          sw[i - c0] += static_cast<double>(dy[i]) * ((x[i] - m) * rs);
          sb[i - c0] += dy[i];
        }
      }
      for (int64_t i = c0; i < c1; ++i) {
        if (a.dw) a.dw[i] += static_cast<float>(sw[i - c0]);
        if (a.db) a.db[i] += static_cast<float>(sb[i - c0]);
      }
    });
  }
}

}  // namespace

void layernorm_forward(const NormArgs& a) { forward(a, true); }
void layernorm_backward(const NormArgs& a) { backward(a, true); }
void rmsnorm_forward(const NormArgs& a) { forward(a, false); }
void rmsnorm_backward(const NormArgs& a) { backward(a, false); }

}  // namespace lorakit::cpu
