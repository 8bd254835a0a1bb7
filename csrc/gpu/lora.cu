// Fused LoRA linear layer on the GPU, forward and backward, with the semantics of csrc/cpu/lora.cc: GEMM
// calls on the rank-r intermediate, so that W + s*B*A is never formed, plus three small kernels.
//
// forward:   y  = x W^T + b + s * xa B^T,         xa = dropout(x) A^T            [m, r], saved
// backward:  g  = dy B                                                           [m, r]
//            dx = dy W + s * (g A) * mask/(1-p)
//            dA = s * g^T dropout(x),   dB = s * dy^T xa,   db = sum_rows dy,   dW = dy^T x
//
// The dropout mask is regenerated from (seed, i*in + j), the CPU's element index, so both backends drop
// the same elements. The rank-r intermediates (xa, g) are float32, and dropout(x) is materialised as
// float32, the values the CPU multiplies.
//
// The low-rank term is a second GEMM accumulating into y (beta = 1); with k = r it is memory-bound, and
// its cost is one more read and write of y (8*m*out bytes). The alternative is a single GEMM over the
// concatenated reduction, y = [x | s*xa] [W | B]^T + b, which saves that pass for a copy of x into an
// [m, in+r] buffer every step (4*m*in bytes for bfloat16 x) and a concatenated weight (W copied once, B's
// r columns every step). But one GEMM takes one dtype across its reduction: with bfloat16 W, xa and B
// would be rounded to bfloat16, a low-rank term the CPU computes in float32; with float32 throughout, W's
// traffic doubles and the bfloat16 tensor cores go unused. The two-GEMM form keeps the CPU's float32
// low-rank term; what the concatenation would save is to be measured on the card.
//
// Scratch: gemm() uses kScratchWeight, kScratchA, kScratchB and kScratchWorkspace; this file keeps its own
// buffers (g, and the [m, in] float32 buffer for dropout(x) or the masked dx term) in kScratchReduce.
#include "common.cuh"

namespace lorakit {
LORAKIT_DECLARE_OPS(gpu)
}

namespace lorakit::gpu {
namespace {

void run_gemm(int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b, float* c, float alpha, float beta,
              const float* bias = nullptr) {
  gemm(gemm_args(m, n, k, a, b, c, alpha, beta, bias));
}

// One Philox call yields the 16-bit dropout draws of the 8 elements 8q .. 8q+7 (dropout_keep in
// common.cuh), so the dropout kernels give each thread one such group: a single Philox evaluation, and
// two 16-byte float32 stores or loads per group.
__device__ inline bool kept(const PhiloxOut& r, int u, uint32_t threshold) {
  const uint32_t word = r.v[u >> 1];
  return ((u & 1) ? (word >> 16) : (word & 0xffffu)) >= threshold;
}

// out[i, j] = keep(i*in + j) ? x[i, j] / (1 - p) : 0, out float32 [m, in] packed.
__global__ void dropout_kernel(const void* x, DType dt, int64_t ldx, int64_t m, int64_t in, uint64_t seed,
                               uint32_t threshold, float keep_scale, float* out) {
  const int64_t total = m * in, groups = (total + 7) / 8;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < groups;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxOut r = philox(seed, static_cast<uint64_t>(q));
    const int64_t e0 = q * 8;
    const int len = total - e0 < 8 ? static_cast<int>(total - e0) : 8;
    int64_t i = e0 / in, j = e0 - i * in;
    Pack16<float> v[2];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      float t = 0.f;
      if (u < len) {
        if (kept(r, u, threshold)) t = load_as_f32(x, dt, i * ldx + j) * keep_scale;
        if (++j == in) {
          j = 0;
          ++i;
        }
      }
      v[u / 4].v[u % 4] = t;
    }
    if (len == 8) {
      store16(out + e0, v[0]);
      store16(out + e0 + 4, v[1]);
    } else {
      for (int u = 0; u < len; ++u) out[e0 + u] = v[u / 4].v[u % 4];
    }
  }
}

// dx[e] += t[e] / (1 - p) where element e was kept; dropped elements of dx are left as they are. The
// product is rounded before the add, as on the CPU.
__global__ void dropout_add_kernel(const float* t, float* dx, int64_t total, uint64_t seed, uint32_t threshold,
                                   float keep_scale, bool vec) {
  const int64_t groups = (total + 7) / 8;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < groups;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxOut r = philox(seed, static_cast<uint64_t>(q));
    const int64_t e0 = q * 8;
    if (vec && total - e0 >= 8) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        Pack16<float> d = load16(dx + e0 + 4 * h);
        const Pack16<float> s = load16(t + e0 + 4 * h);
#pragma unroll
        for (int u = 0; u < 4; ++u)
          if (kept(r, 4 * h + u, threshold)) d.v[u] += mul_rn(s.v[u], keep_scale);
        store16(dx + e0 + 4 * h, d);
      }
    } else {
      const int len = total - e0 < 8 ? static_cast<int>(total - e0) : 8;
      for (int u = 0; u < len; ++u)
        if (kept(r, u, threshold)) dx[e0 + u] += mul_rn(t[e0 + u], keep_scale);
    }
  }
}

void launch_dropout(const Operand& x, int64_t m, int64_t in, float p, uint64_t seed, float* out) {
  if (m * in == 0) return;
  dropout_kernel<<<grid_for((m * in + 7) / 8, 256), 256, 0, stream()>>>(x.data, x.dtype, x.ld, m, in, seed,
                                                                        dropout_threshold(p), 1.f / (1.f - p), out);
  LK_LAUNCHED("dropout_kernel");
}

// db[c] = sum_i dy[i, c] (+ db[c] when accumulating), summed in double like the CPU. Deterministic: a block
// owns 32 columns, each of its 16 row lanes sums a fixed strided set of rows, and lane 0 adds the 16
// partials in order. Threads of a row lane read 32 consecutive elements of a row.
constexpr int kSumCols = 32, kSumLanes = 16;

__global__ void __launch_bounds__(kSumCols * kSumLanes)
    column_sum_kernel(const void* dy, DType dt, int64_t ld, int64_t m, int64_t cols, bool accumulate, float* db) {
  __shared__ double part[kSumLanes][kSumCols];
  const int tx = threadIdx.x % kSumCols, ty = threadIdx.x / kSumCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kSumCols + tx;
  double s = 0.0;
  if (c < cols)
    for (int64_t i = ty; i < m; i += kSumLanes) s += load_as_f32(dy, dt, i * ld + c);
  part[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < cols) {
    double total = 0.0;
    for (int l = 0; l < kSumLanes; ++l) total += part[l][tx];
    db[c] = static_cast<float>(total) + (accumulate ? db[c] : 0.f);
  }
}

}  // namespace

void lora_forward(const LoraForwardArgs& L) {
  run_gemm(L.m, L.out, L.in, L.x, transposed(L.w), L.y, 1.f, 0.f, L.bias);
  Operand xin = L.x;
  if (L.dropout > 0.f) {
    float* xd = static_cast<float*>(scratch(kScratchReduce, static_cast<size_t>(L.m * L.in) * 4));
    launch_dropout(L.x, L.m, L.in, L.dropout, L.seed, xd);
    xin = f32_operand(xd, L.in, false);
  }
  run_gemm(L.m, L.r, L.in, xin, f32_operand(L.a, L.in, true), L.xa, 1.f, 0.f);
  run_gemm(L.m, L.out, L.r, f32_operand(L.xa, L.r, false), f32_operand(L.b, L.r, true), L.y, L.scale, 1.f);
}

void lora_backward(const LoraBackwardArgs& L) {
  const float acc = L.accumulate ? 1.f : 0.f;
  const Operand dyT = transposed(L.dy);
  // One scratch buffer: g [m, r] first (padded to keep what follows 16-byte aligned), then an [m, in]
  // float32 region used by the masked dx term and afterwards by dropout(x) for dA.
  const bool want_g = L.dx || L.da;
  const bool masked_dx = L.dx && L.dropout != 0.f, dropped_x = L.da && L.dropout > 0.f;
  const int64_t g_elems = want_g ? (L.m * L.r + 63) / 64 * 64 : 0;
  const int64_t work_elems = masked_dx || dropped_x ? L.m * L.in : 0;
  float* g = nullptr;
  float* work = nullptr;
  if (g_elems + work_elems > 0) {
    g = static_cast<float*>(scratch(kScratchReduce, static_cast<size_t>(g_elems + work_elems) * 4));
    work = g + g_elems;
  }
  if (want_g) run_gemm(L.m, L.r, L.out, L.dy, f32_operand(L.b, L.r, false), g, 1.f, 0.f);
  if (L.dx) {
    run_gemm(L.m, L.in, L.out, L.dy, L.w, L.dx, 1.f, 0.f);
    if (!masked_dx) {
      run_gemm(L.m, L.in, L.r, f32_operand(g, L.r, false), f32_operand(L.a, L.in, false), L.dx, L.scale, 1.f);
    } else {
      run_gemm(L.m, L.in, L.r, f32_operand(g, L.r, false), f32_operand(L.a, L.in, false), work, L.scale, 0.f);
      const int64_t total = L.m * L.in;
      if (total > 0) {
        dropout_add_kernel<<<grid_for((total + 7) / 8, 256), 256, 0, stream()>>>(
            work, L.dx, total, L.seed, dropout_threshold(L.dropout), 1.f / (1.f - L.dropout), is_aligned16(L.dx));
        LK_LAUNCHED("dropout_add_kernel");
      }
    }
  }
  if (L.da) {
    Operand xin = L.x;
    if (dropped_x) {
      launch_dropout(L.x, L.m, L.in, L.dropout, L.seed, work);
      xin = f32_operand(work, L.in, false);
    }
    run_gemm(L.r, L.in, L.m, f32_operand(g, L.r, true), xin, L.da, L.scale, acc);
  }
  if (L.db) run_gemm(L.out, L.r, L.m, dyT, f32_operand(L.xa, L.r, false), L.db, L.scale, acc);
  if (L.dw) run_gemm(L.out, L.in, L.m, dyT, L.x, L.dw, 1.f, acc);
  if (L.dbias && L.out > 0) {
    column_sum_kernel<<<static_cast<unsigned>((L.out + kSumCols - 1) / kSumCols), kSumCols * kSumLanes, 0,
                        stream()>>>(L.dy.data, L.dy.dtype, L.dy.ld, L.m, L.out, L.accumulate, L.dbias);
    LK_LAUNCHED("column_sum_kernel");
  }
}

}  // namespace lorakit::gpu
