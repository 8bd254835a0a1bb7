// LayerNorm and RMSNorm over the last dimension, forward and backward, as csrc/cpu/norm.cc computes them.
//
// LayerNorm:  xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps) (biased variance),  y = xhat * w + b
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w;   dw += sum_rows dy * xhat;  db += sum_rows dy
// RMSNorm:    xhat = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps),  y = xhat * w
//   dx = rstd * (g - xhat * mean(g * xhat));   dw += sum_rows dy * xhat
// Row statistics accumulate in double like the CPU's, so they agree with it to the last float bit but
// for the rare double sum whose different order rounds across a float boundary; the element-wise parts
// round operation by operation as the CPU does. One block owns a row; rows whose length and pointers
// allow it move 16 bytes per access (V = 4).
#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 256;
// The weight gradient splits the rows into at most this many slices, sums each slice per column into
// scratch, then adds the slices up in slice order: deterministic, and the same on every device.
constexpr int64_t kSlices = 256;

template <int V>
__global__ void norm_forward_kernel(NormArgs a, bool centered) {
  const int64_t chunks = a.dim / V;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const float* x = a.x + r * a.dim;
    float* y = a.y + r * a.dim;
    double mean = 0.0;
    if (centered) {
      double s = 0.0;
      for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
        const Chunk<float, V> xv = load_chunk<V>(x + c * V);
        for (int j = 0; j < V; ++j) s += xv.v[j];
      }
      mean = block_sum_d(s) / static_cast<double>(a.dim);
    }
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const Chunk<float, V> xv = load_chunk<V>(x + c * V);
      for (int j = 0; j < V; ++j) ss += (xv.v[j] - mean) * (xv.v[j] - mean);
    }
    const double var = block_sum_d(ss) / static_cast<double>(a.dim);
    const float rstd = static_cast<float>(1.0 / sqrt(var + a.eps));
    const float m = static_cast<float>(mean);
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const Chunk<float, V> xv = load_chunk<V>(x + c * V), wv = load_chunk<V>(a.w + c * V);
      Chunk<float, V> yv;
      for (int j = 0; j < V; ++j) yv.v[j] = mul_rn((xv.v[j] - m) * rstd, wv.v[j]);
      if (a.b) {
        const Chunk<float, V> bv = load_chunk<V>(a.b + c * V);
        for (int j = 0; j < V; ++j) yv.v[j] += bv.v[j];
      }
      store_chunk<V>(y + c * V, yv);
    }
    if (threadIdx.x == 0) {
      if (a.mean) a.mean[r] = m;
      a.rstd[r] = rstd;
    }
  }
}

// dx per row: the two row means of g and g * xhat in double, then the element-wise formula in float.
template <int V>
__global__ void norm_backward_dx_kernel(NormArgs a, bool centered) {
  const int64_t chunks = a.dim / V;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const float* x = a.x + r * a.dim;
    const float* dy = a.dy + r * a.dim;
    const float m = centered ? a.mean[r] : 0.f, rs = a.rstd[r];
    double sg = 0.0, sgx = 0.0;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const Chunk<float, V> xv = load_chunk<V>(x + c * V), dv = load_chunk<V>(dy + c * V), wv = load_chunk<V>(a.w + c * V);
      for (int j = 0; j < V; ++j) {
        const double g = static_cast<double>(dv.v[j]) * wv.v[j];
        sg += g;
        sgx += g * ((xv.v[j] - m) * rs);
      }
    }
    const double n = static_cast<double>(a.dim);
    const float mg = centered ? static_cast<float>(block_sum_d(sg) / n) : 0.f;
    const float mgx = static_cast<float>(block_sum_d(sgx) / n);
    float* dx = a.dx + r * a.dim;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const Chunk<float, V> xv = load_chunk<V>(x + c * V), dv = load_chunk<V>(dy + c * V), wv = load_chunk<V>(a.w + c * V);
      Chunk<float, V> out;
      for (int j = 0; j < V; ++j)
        out.v[j] = rs * (mul_rn(dv.v[j], wv.v[j]) - mg - mul_rn((xv.v[j] - m) * rs, mgx));
      store_chunk<V>(dx + c * V, out);
    }
  }
}

// dw/db, first pass: slice blockIdx.y of the rows, one column per thread (coalesced across the warp),
// summed in row order into part_w/part_b[slice, column].
__global__ void norm_backward_dw_slices_kernel(NormArgs a, bool centered, int64_t rows_per_slice, double* part_w,
                                               double* part_b) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= a.dim) return;
  const int64_t r0 = blockIdx.y * rows_per_slice, r1 = r0 + rows_per_slice < a.rows ? r0 + rows_per_slice : a.rows;
  double sw = 0.0, sb = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const float m = centered ? a.mean[r] : 0.f, rs = a.rstd[r];
    const float dy = a.dy[r * a.dim + col];
    sw += static_cast<double>(dy) * ((a.x[r * a.dim + col] - m) * rs);
    sb += dy;
  }
  part_w[blockIdx.y * a.dim + col] = sw;
  part_b[blockIdx.y * a.dim + col] = sb;
}

// Second pass: the slices of each column in slice order, added into dw/db (never overwritten).
__global__ void norm_backward_dw_sum_kernel(NormArgs a, int64_t slices, const double* part_w, const double* part_b) {
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < a.dim;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sw = 0.0, sb = 0.0;
    for (int64_t s = 0; s < slices; ++s) {
      sw += part_w[s * a.dim + col];
      sb += part_b[s * a.dim + col];
    }
    if (a.dw) a.dw[col] += static_cast<float>(sw);
    if (a.db) a.db[col] += static_cast<float>(sb);
  }
}

bool vectorizable(const NormArgs& a, const float* const* ptrs, int count) {
  if (a.dim % 4 != 0) return false;
  for (int i = 0; i < count; ++i)
    if (ptrs[i] && !is_aligned16(ptrs[i])) return false;
  return true;
}

void forward(const NormArgs& a, bool centered) {
  if (a.rows <= 0) return;
  const float* ptrs[] = {a.x, a.y, a.w, a.b};
  const unsigned grid = grid_for(a.rows, 1);
  if (vectorizable(a, ptrs, 4)) norm_forward_kernel<4><<<grid, kThreads, 0, stream()>>>(a, centered);
  else norm_forward_kernel<1><<<grid, kThreads, 0, stream()>>>(a, centered);
  LK_LAUNCHED("norm_forward");
}

void backward(const NormArgs& a, bool centered) {
  if (a.dx && a.rows > 0) {
    const float* ptrs[] = {a.x, a.dy, a.w, a.dx};
    const unsigned grid = grid_for(a.rows, 1);
    if (vectorizable(a, ptrs, 4)) norm_backward_dx_kernel<4><<<grid, kThreads, 0, stream()>>>(a, centered);
    else norm_backward_dx_kernel<1><<<grid, kThreads, 0, stream()>>>(a, centered);
    LK_LAUNCHED("norm_backward_dx");
  }
  if ((a.dw || a.db) && a.dim > 0) {
    // With no rows the slices are empty and the second pass adds +0.0, as the CPU's loop does.
    const int64_t per = a.rows > 0 ? (a.rows + kSlices - 1) / kSlices : 1;
    const int64_t slices = a.rows > 0 ? (a.rows + per - 1) / per : 0;
    double* part_w = slices > 0 ? static_cast<double*>(scratch(kScratchReduce, sizeof(double) * 2 * slices * a.dim)) : nullptr;
    double* part_b = part_w + slices * a.dim;
    if (slices > 0) {
      const dim3 grid(static_cast<unsigned>((a.dim + kThreads - 1) / kThreads), static_cast<unsigned>(slices));
      norm_backward_dw_slices_kernel<<<grid, kThreads, 0, stream()>>>(a, centered, per, part_w, part_b);
      LK_LAUNCHED("norm_backward_dw_slices");
    }
    norm_backward_dw_sum_kernel<<<grid_for(a.dim, kThreads), kThreads, 0, stream()>>>(a, slices, part_w, part_b);
    LK_LAUNCHED("norm_backward_dw_sum");
  }
}

}  // namespace

void layernorm_forward(const NormArgs& a) { forward(a, true); }
void layernorm_backward(const NormArgs& a) { backward(a, true); }
void rmsnorm_forward(const NormArgs& a) { forward(a, false); }
void rmsnorm_backward(const NormArgs& a) { backward(a, false); }

}  // namespace lorakit::gpu
