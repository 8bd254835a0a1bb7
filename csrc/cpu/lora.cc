// Fused LoRA linear layer, forward and backward, built from GEMM calls on the rank-r intermediate so
// that W + s*B*A is never formed.
//
// forward:   y  = x W^T + b + s * xa B^T,         xa = dropout(x) A^T            [m, r], saved
// backward:  g  = dy B                                                           [m, r]
//            dx = dy W + s * (g A) * mask/(1-p)
//            dA = s * g^T dropout(x),   dB = s * dy^T xa,   db = sum_rows dy,   dW = dy^T x
// The dropout mask is regenerated from (seed, element index) rather than stored.
#include <vector>

#include "../ops.h"
#include "dtype.h"
#include "parallel.h"
#include "../philox.h"

namespace lorakit::cpu {
namespace {

void run_gemm(int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b, float* c, float alpha, float beta,
              const float* bias = nullptr) {
  gemm(gemm_args(m, n, k, a, b, c, alpha, beta, bias));
}

// dropout(x) as float32: x * keep / (1 - p).
std::vector<float> dropped(const Operand& x, int64_t m, int64_t in, float p, uint64_t seed) {
  std::vector<float> out(static_cast<size_t>(m * in));
  const float keep_scale = 1.f / (1.f - p);
  const uint32_t threshold = dropout_threshold(p);
  parallel_for(m, [&](int64_t r0, int64_t r1, int) {
    for (int64_t i = r0; i < r1; ++i) {
      float* row = out.data() + i * in;
      load_f32(elem_ptr(x.data, x.dtype, i * x.ld), x.dtype, in, row);
      for (int64_t j = 0; j < in; ++j)
        row[j] = dropout_keep(seed, static_cast<uint64_t>(i * in + j), threshold) ? row[j] * keep_scale : 0.f;
    }
  });
  return out;
}

}  // namespace

void lora_forward(const LoraForwardArgs& L) {
  run_gemm(L.m, L.out, L.in, L.x, transposed(L.w), L.y, 1.f, 0.f, L.bias);
  std::vector<float> xd;
  Operand xin = L.x;
  if (L.dropout > 0.f) {
    xd = dropped(L.x, L.m, L.in, L.dropout, L.seed);
    xin = f32_operand(xd.data(), L.in, false);
  }
  run_gemm(L.m, L.r, L.in, xin, f32_operand(L.a, L.in, true), L.xa, 1.f, 0.f);
  run_gemm(L.m, L.out, L.r, f32_operand(L.xa, L.r, false), f32_operand(L.b, L.r, true), L.y, L.scale, 1.f);
}

void lora_backward(const LoraBackwardArgs& L) {
  const float acc = L.accumulate ? 1.f : 0.f;
  const Operand dyT = transposed(L.dy);
  std::vector<float> g;
  if (L.dx || L.da) {
    g.resize(static_cast<size_t>(L.m * L.r));
    run_gemm(L.m, L.r, L.out, L.dy, f32_operand(L.b, L.r, false), g.data(), 1.f, 0.f);
  }
  if (L.dx) {
    run_gemm(L.m, L.in, L.out, L.dy, L.w, L.dx, 1.f, 0.f);
    if (L.dropout == 0.f) {
      run_gemm(L.m, L.in, L.r, f32_operand(g.data(), L.r, false), f32_operand(L.a, L.in, false), L.dx, L.scale, 1.f);
    } else {
      std::vector<float> t(static_cast<size_t>(L.m * L.in));
      run_gemm(L.m, L.in, L.r, f32_operand(g.data(), L.r, false), f32_operand(L.a, L.in, false), t.data(), L.scale, 0.f);
      const float keep_scale = 1.f / (1.f - L.dropout);
      const uint32_t threshold = dropout_threshold(L.dropout);
      parallel_for(L.m * L.in, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i)
          if (dropout_keep(L.seed, static_cast<uint64_t>(i), threshold)) L.dx[i] += t[i] * keep_scale;
      });
    }
  }
  if (L.da) {
    std::vector<float> xd;
    Operand xin = L.x;
    if (L.dropout > 0.f) {
      xd = dropped(L.x, L.m, L.in, L.dropout, L.seed);
      xin = f32_operand(xd.data(), L.in, false);
    }
    run_gemm(L.r, L.in, L.m, f32_operand(g.data(), L.r, true), xin, L.da, L.scale, acc);
  }
  if (L.db) run_gemm(L.out, L.r, L.m, dyT, f32_operand(L.xa, L.r, false), L.db, L.scale, acc);
  if (L.dw) run_gemm(L.out, L.in, L.m, dyT, L.x, L.dw, 1.f, acc);
  if (L.dbias) {
    // Column sums in row order, in double: deterministic and independent of the thread count.
    parallel_for(L.out, [&](int64_t c0, int64_t c1, int) {
      std::vector<double> sum(static_cast<size_t>(c1 - c0), 0.0);
      std::vector<float> row(static_cast<size_t>(c1 - c0));
      for (int64_t i = 0; i < L.m; ++i) {
        load_f32(elem_ptr(L.dy.data, L.dy.dtype, i * L.dy.ld + c0), L.dy.dtype, c1 - c0, row.data());
        for (int64_t j = 0; j < c1 - c0; ++j) sum[j] += row[j];
      }
      for (int64_t j = c0; j < c1; ++j) L.dbias[j] = static_cast<float>(sum[j - c0]) + (L.accumulate ? L.dbias[j] : 0.f);
    });
  }
}

}  // namespace lorakit::cpu
