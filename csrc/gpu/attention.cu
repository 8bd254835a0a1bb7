// Causal grouped-query attention, forward and backward, flash-style: the seq x seq score matrix never
// exists. Each block holds one tile of it in shared memory and folds key tiles in with an online softmax.
//
// Per batch b and query head h (kv head h / (hq / hkv)), with start_t the first key of t's document
// (0 without packing), exactly as csrc/cpu/attention.cc:
//   s_tj = scale * q_t . k_j  (start_t <= j <= t),  lse_t = log sum_j exp(s_tj),  out_t = sum_j exp(s_tj - lse_t) v_j
// Online over key tiles, with running max m, sum l and unnormalised output o per row:
//   m' = max(m, max_j s_tj),  l' = l e^(m - m') + sum_j e^(s_tj - m'),  o' = o e^(m - m') + sum_j e^(s_tj - m') v_j
// and at the end out_t = o / l, lse_t = m + log l.
// Backward recomputes p_tj = exp(s_tj - lse_t) from the saved lse; with D_t = dout_t . out_t (a pre-pass):
//   ds_tj = p_tj (dout_t . v_j - D_t) scale,  dq_t = sum_j ds_tj k_j,  dk_j = sum_t ds_tj q_t,
//   dv_j = sum_t p_tj dout_t
//
// Work layout. A block is 128 threads in 8 row groups of 16 lanes (16 divides every warp width, so a
// row group's shuffles never leave its warp). Every product is one of two shapes over shared tiles:
//   tile_dot         acc[r][c] = A_r . B_c over the head dim; rows r = ty*TM + i, columns c = tx + 16 j
//   tile_accumulate  acc[r][:] += sum_k P[r][k] X[k][:]; lane tx owns head-dim columns 4 tx + 64 n .. + 3
// Tile rows are padded to DMAX + 4 floats so that the 16-byte reads of 8 lanes land in distinct banks.
// Head dims go to a bucket DMAX of 64, 128 or 256; tiles are zero past d, so neither product needs a
// column mask and an odd d only costs the padding.
//
// The backward pass is three kernels: D, then dQ (a block per query tile, looping over key tiles like the
// forward), then dK/dV (a block per key tile of a kv head, looping over the query heads of its group and
// the query tiles that can see those keys). Every gradient element is summed by one thread in a fixed
// order: deterministic, and no atomics.
#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kLanes = 16;
constexpr int kGroups = kThreads / kLanes;

// Rows per thread (TM) and tile columns per lane (TN) of each kernel, per head-dim bucket, sized so that
// every kernel's static shared memory stays under 48 KiB, the most any CUDA or HIP target gives without
// an opt-in (CDNA has 64 KiB of LDS per compute unit in all). Tiles (queries x keys) and shared bytes:
//              forward            dK/dV (keys x queries)   dQ
//   d <= 64    32 x 64  34.0 KiB  32 x 32  34.9 KiB        32 x 64  42.5 KiB
//   d <= 128   32 x 32  37.5 KiB  32 x 16  46.4 KiB        32 x 16  43.8 KiB
//   d <= 256   16 x 16  33.8 KiB   8 x 16  33.9 KiB         8 x 16  33.1 KiB
// The large-d tiles are small: a block keeps whole rows on chip, so a 256-wide row costs four 64-wide ones.
// On AMD (and in the emulator's build of these tiles, LORAKIT_LDS_TILES) a compute unit has 64 KiB of LDS,
// so tiles of 34-47 KiB leave room for one 128-thread workgroup and half of it idle. There the tiles are
// cut to at most 32 KiB, so that two workgroups share a compute unit:
//              forward            dK/dV (keys x queries)   dQ
//   d <= 64    32 x 32  21.5 KiB  32 x 16  26.4 KiB        32 x 32  30.0 KiB
//   d <= 128   16 x 32  27.0 KiB  16 x 16  27.4 KiB        16 x 16  26.0 KiB
//   d <= 256    8 x 16  25.0 KiB   8 x 16  33.9 KiB         8 x 16  33.1 KiB
// (d > 128 backward cannot shrink further: one query row per thread group and one key column per lane
// already; it keeps one workgroup per compute unit.)
template <int DMAX>
struct Tiles;
#if defined(LORAKIT_HIP) || defined(LORAKIT_LDS_TILES)
template <>
struct Tiles<64> {
  static constexpr int fwd_tm = 4, fwd_tn = 2, kv_tm = 4, kv_tn = 1, dq_tm = 4, dq_tn = 2;
};
template <>
struct Tiles<128> {
  static constexpr int fwd_tm = 2, fwd_tn = 2, kv_tm = 2, kv_tn = 1, dq_tm = 2, dq_tn = 1;
};
template <>
struct Tiles<256> {
  static constexpr int fwd_tm = 1, fwd_tn = 1, kv_tm = 1, kv_tn = 1, dq_tm = 1, dq_tn = 1;
};
#else
template <>
struct Tiles<64> {
  static constexpr int fwd_tm = 4, fwd_tn = 4, kv_tm = 4, kv_tn = 2, dq_tm = 4, dq_tn = 4;
};
template <>
struct Tiles<128> {
  static constexpr int fwd_tm = 4, fwd_tn = 2, kv_tm = 4, kv_tn = 1, dq_tm = 4, dq_tn = 1;
};
template <>
struct Tiles<256> {
  static constexpr int fwd_tm = 2, fwd_tn = 1, kv_tm = 1, kv_tn = 1, dq_tm = 1, dq_tn = 1;
};
#endif

// Softmax statistics of a row live on its 16 lanes.
__device__ inline float group_max(float v) { return lanes_max(v, kLanes); }
__device__ inline float group_sum(float v) { return lanes_sum(v, kLanes); }

__device__ inline float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ inline float4 zero4() { return make_float4(0.f, 0.f, 0.f, 0.f); }
__device__ inline float4 scale4(const float4& x, float s) { return make_float4(x.x * s, x.y * s, x.z * s, x.w * s); }
__device__ inline void fma4(float4& acc, float s, const float4& x) {
  acc.x = fmaf(s, x.x, acc.x);
  acc.y = fmaf(s, x.y, acc.y);
  acc.z = fmaf(s, x.z, acc.z);
  acc.w = fmaf(s, x.w, acc.w);
}

// First key of t's document. napi validates starts for host tensors; clamping to [0, t] here keeps every
// row non-empty and every read in bounds whatever a device tensor holds.
__device__ inline int doc_start(const int64_t* starts, int b, int T, int t) {
  if (!starts) return 0;
  const int64_t s = starts[static_cast<int64_t>(b) * T + t];
  return s < 0 ? 0 : (s > t ? t : static_cast<int>(s));
}

// Copies rows row0 .. row0 + ROWS - 1 of one head ([T] rows of d floats, `stride` floats apart) into a
// shared tile of DMAX + 4 floats a row, zero past d and past T. `vec`: d % 4 == 0 and 16-byte aligned.
template <int ROWS, int DMAX>
__device__ inline void load_tile(float* tile, const float* head, int64_t stride, int row0, int T, int d, bool vec) {
  constexpr int C4 = DMAX / 4, LD = DMAX + 4;
  for (int u = static_cast<int>(threadIdx.x); u < ROWS * C4; u += kThreads) {
    const int r = u / C4, c = (u % C4) * 4;
    float4 x = zero4();
    if (row0 + r < T && c < d) {
      const float* p = head + static_cast<int64_t>(row0 + r) * stride + c;
      if (vec) {
        x = ld4(p);
      } else {
        x.x = p[0];
        if (c + 1 < d) x.y = p[1];
        if (c + 2 < d) x.z = p[2];
        if (c + 3 < d) x.w = p[3];
      }
    }
    *reinterpret_cast<float4*>(tile + r * LD + c) = x;
  }
}

// acc[i][j] += A[ty*TM + i] . B[tx + 16 j] over DMAX columns (rows LD floats apart).
template <int TM, int TN, int DMAX>
__device__ inline void tile_dot(float (&acc)[TM][TN], const float* A, const float* B) {
  constexpr int LD = DMAX + 4;
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
#pragma unroll 2
  for (int c = 0; c < DMAX; c += 4) {
    float4 bv[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) bv[j] = ld4(B + (tx + kLanes * j) * LD + c);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const float4 av = ld4(A + (ty * TM + i) * LD + c);
#pragma unroll
      for (int j = 0; j < TN; ++j)
        acc[i][j] = fmaf(av.w, bv[j].w, fmaf(av.z, bv[j].z, fmaf(av.y, bv[j].y, fmaf(av.x, bv[j].x, acc[i][j]))));
    }
  }
}

// The prologue of the kernels over query tiles (forward, dq): start[i], the document start of this thread's
// row q0 + ty*TM + i (0 past T), and the first key that any row of the tile sees, which bounds the key tiles
// to visit (start_{q0} <= q0 bounds it). `load` stages the block's own tiles ahead of the barrier it shares.
template <int TM, typename Load>
__device__ inline int first_key_of_tile(int (&start)[TM], int& first_key, const AttentionArgs& a, int b, int T, int q0,
                                        Load load) {
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = q0 + ty * TM + i;
    start[i] = t < T ? doc_start(a.starts, b, T, t) : 0;
  }
  if (threadIdx.x == 0) first_key = q0;
  load();
  __syncthreads();
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
      if (q0 + ty * TM + i < T) atomicMin(&first_key, start[i]);
  }
  __syncthreads();
  return first_key;
}

// Loads rows row0 .. row0 + ROWS - 1 of `head` into the shared tile X (as load_tile), then
// acc[i][j] += A[ty*TM + i] . X[tx + 16 j]: every score-shaped product of the kernels (S, dP) is this.
template <int ROWS, int DMAX, int TM, int TN>
__device__ inline void load_tile_dot(float (&acc)[TM][TN], const float* A, float* X, const float* head, int64_t stride,
                                     int row0, int T, int d, bool vec) {
  load_tile<ROWS, DMAX>(X, head, stride, row0, T, d, vec);
  __syncthreads();
  tile_dot<TM, TN, DMAX>(acc, A, X);
}

// acc[i][n] += sum_k P[ty*TM + i][k] X[k][4 tx + 64 n .. + 3] for k < K (P rows LP floats apart).
template <int TM, int NC, int K, int LP, int DMAX>
__device__ inline void tile_accumulate(float4 (&acc)[TM][NC], const float* P, const float* X) {
  constexpr int LD = DMAX + 4;
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
#pragma unroll 1
  for (int k = 0; k < K; k += 4) {
    float p[TM][4];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const float4 v = ld4(P + (ty * TM + i) * LP + k);
      p[i][0] = v.x;
      p[i][1] = v.y;
      p[i][2] = v.z;
      p[i][3] = v.w;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        const float4 x = ld4(X + (k + e) * LD + 4 * tx + 64 * n);
#pragma unroll
        for (int i = 0; i < TM; ++i) fma4(acc[i][n], p[i][e], x);
      }
  }
}

// Loads rows row0 .. row0 + ROWS - 1 of `head` into the shared tile X (as load_tile), then
// acc[i][n] += sum_k P[ty*TM + i][k] X[k][...] (as tile_accumulate): P or dS applied to V, K or Q.
template <int ROWS, int LP, int DMAX, int TM, int NC>
__device__ inline void load_tile_accumulate(float4 (&acc)[TM][NC], const float* P, float* X, const float* head,
                                            int64_t stride, int row0, int T, int d, bool vec) {
  load_tile<ROWS, DMAX>(X, head, stride, row0, T, d, vec);
  __syncthreads();
  tile_accumulate<TM, NC, ROWS, LP, DMAX>(acc, P, X);
}

// Writes one row's columns (this lane's 4 tx + 64 n .. + 3, those below d) times `mul`.
template <int NC>
__device__ inline void store_row(float* row, const float4 (&v)[NC], float mul, int d, bool vec) {
  const int tx = static_cast<int>(threadIdx.x) % kLanes;
#pragma unroll
  for (int n = 0; n < NC; ++n) {
    const int c = 4 * tx + 64 * n;
    if (c >= d) continue;
    const float4 x = scale4(v[n], mul);
    if (vec) {
      *reinterpret_cast<float4*>(row + c) = x;
    } else {
      row[c] = x.x;
      if (c + 1 < d) row[c + 1] = x.y;
      if (c + 2 < d) row[c + 2] = x.z;
      if (c + 3 < d) row[c + 3] = x.w;
    }
  }
}

// ---- forward ----------------------------------------------------------------------------------------
// Grid (batch * hq, query tiles). Query tiles run longest first: the last tiles see the most keys.
template <int DMAX, int TM, int TN>
__global__ __launch_bounds__(kThreads) void attention_forward_kernel(const AttentionArgs a, bool vec) {
  constexpr int BQ = kGroups * TM, BK = kLanes * TN, LD = DMAX + 4, LP = BK + 4, NC = DMAX / 64;
  __shared__ float4 q_tile[BQ * LD / 4], kv_tile[BK * LD / 4], p_tile[BQ * LP / 4];
  __shared__ int first_key;
  float* sQ = reinterpret_cast<float*>(q_tile);
  float* sKV = reinterpret_cast<float*>(kv_tile);
  float* sP = reinterpret_cast<float*>(p_tile);
  const int T = static_cast<int>(a.seq), d = static_cast<int>(a.d);
  const int hq = static_cast<int>(a.hq), hkv = static_cast<int>(a.hkv);
  const int b = static_cast<int>(blockIdx.x) / hq, h = static_cast<int>(blockIdx.x) % hq, kh = h / (hq / hkv);
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
  const int q0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * BQ, q_end = min(q0 + BQ, T);
  const float* q = a.q + (static_cast<int64_t>(b) * T * hq + h) * d;
  const float* k = a.k + (static_cast<int64_t>(b) * T * hkv + kh) * d;
  const float* v = a.v + (static_cast<int64_t>(b) * T * hkv + kh) * d;

  int start[TM];
  const int kt_first = first_key_of_tile(start, first_key, a, b, T, q0, [&] {
    load_tile<BQ, DMAX>(sQ, q, static_cast<int64_t>(hq) * d, q0, T, d, vec);
  }) / BK;

  float m[TM], l[TM];
  float4 o[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int n = 0; n < NC; ++n) o[i][n] = zero4();
  }
  for (int kt = kt_first; kt <= (q_end - 1) / BK; ++kt) {
    const int k0 = kt * BK;
    float s[TM][TN] = {};
    load_tile_dot<BK, DMAX>(s, sQ, sKV, k, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int t = q0 + ty * TM + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int key = k0 + tx + kLanes * j;
        s[i][j] = (t < T && key <= t && key >= start[i]) ? a.scale * s[i][j] : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float m_new = fmaxf(m[i], group_max(mx));
      // A row with no key yet (its document starts in a later tile) keeps m = -inf; exponents are then
      // taken against 0 so that exp(-inf - -inf) never makes a NaN.
      const float ref = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = expf(m[i] - ref);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const float p = expf(s[i][j] - ref);
        sP[(ty * TM + i) * LP + tx + kLanes * j] = p;
        sum += p;
      }
      l[i] = l[i] * alpha + group_sum(sum);
      m[i] = m_new;
#pragma unroll
      for (int n = 0; n < NC; ++n) o[i][n] = scale4(o[i][n], alpha);
    }
    __syncthreads();
    load_tile_accumulate<BK, LP, DMAX>(o, sP, sKV, v, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = q0 + ty * TM + i;
    if (t >= T) continue;
    store_row<NC>(a.out + ((static_cast<int64_t>(b) * T + t) * hq + h) * d, o[i], 1.f / l[i], d, vec);
    if (tx == 0) a.lse[(static_cast<int64_t>(b) * hq + h) * T + t] = m[i] + logf(l[i]);
  }
}

// ---- backward ---------------------------------------------------------------------------------------
// D[b, h, t] = dout_t . out_t, laid out like lse. One row group per row; blocks stride over rows.
__global__ __launch_bounds__(kThreads) void attention_delta_kernel(const float* dout, const float* out, float* delta,
                                                                   int64_t rows, int T, int hq, int d, bool vec) {
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kGroups;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kGroups; base < rows; base += step) {
    const int64_t row = base + ty;
    float s = 0.f;
    if (row < rows) {
      const float* x = dout + row * d;
      const float* y = out + row * d;
      if (vec) {
        for (int c = 4 * tx; c < d; c += 4 * kLanes) {
          const float4 xv = ld4(x + c), yv = ld4(y + c);
          s = fmaf(xv.w, yv.w, fmaf(xv.z, yv.z, fmaf(xv.y, yv.y, fmaf(xv.x, yv.x, s))));
        }
      } else {
        for (int c = tx; c < d; c += kLanes) s = fmaf(x[c], y[c], s);
      }
    }
    s = group_sum(s);
    if (row < rows && tx == 0) {
      const int64_t h = row % hq, t = (row / hq) % T, b = row / (static_cast<int64_t>(hq) * T);
      delta[(b * hq + h) * T + t] = s;
    }
  }
}

// dq_t = sum_j ds_tj k_j. Grid (batch * hq, query tiles), longest first. Per key tile: dP = dout V^T and
// then S = Q K^T share one shared tile (V, then K, which the dq product also reads).
template <int DMAX, int TM, int TN>
__global__ __launch_bounds__(kThreads, 1) void attention_dq_kernel(const AttentionArgs a, const float* delta, bool vec) {
  constexpr int BQ = kGroups * TM, BK = kLanes * TN, LD = DMAX + 4, LP = BK + 4, NC = DMAX / 64;
  __shared__ float4 q_tile[BQ * LD / 4], do_tile[BQ * LD / 4], kv_tile[BK * LD / 4], ds_tile[BQ * LP / 4];
  __shared__ int first_key;
  float* sQ = reinterpret_cast<float*>(q_tile);
  float* sdO = reinterpret_cast<float*>(do_tile);
  float* sKV = reinterpret_cast<float*>(kv_tile);
  float* sdS = reinterpret_cast<float*>(ds_tile);
  const int T = static_cast<int>(a.seq), d = static_cast<int>(a.d);
  const int hq = static_cast<int>(a.hq), hkv = static_cast<int>(a.hkv);
  const int b = static_cast<int>(blockIdx.x) / hq, h = static_cast<int>(blockIdx.x) % hq, kh = h / (hq / hkv);
  const int ty = static_cast<int>(threadIdx.x) / kLanes, tx = static_cast<int>(threadIdx.x) % kLanes;
  const int q0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * BQ, q_end = min(q0 + BQ, T);
  const int64_t row0 = static_cast<int64_t>(b) * T * hq + h;
  const float* k = a.k + (static_cast<int64_t>(b) * T * hkv + kh) * d;
  const float* v = a.v + (static_cast<int64_t>(b) * T * hkv + kh) * d;
  const float* lse = a.lse + (static_cast<int64_t>(b) * hq + h) * T;
  const float* dl = delta + (static_cast<int64_t>(b) * hq + h) * T;

  int start[TM];
  float row_lse[TM], row_delta[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = q0 + ty * TM + i;
    row_lse[i] = t < T ? lse[t] : 0.f;
    row_delta[i] = t < T ? dl[t] : 0.f;
  }
  const int kt_first = first_key_of_tile(start, first_key, a, b, T, q0, [&] {
    load_tile<BQ, DMAX>(sQ, a.q + row0 * d, static_cast<int64_t>(hq) * d, q0, T, d, vec);
    load_tile<BQ, DMAX>(sdO, a.dout + row0 * d, static_cast<int64_t>(hq) * d, q0, T, d, vec);
  }) / BK;

  float4 acc[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int n = 0; n < NC; ++n) acc[i][n] = zero4();
  for (int kt = kt_first; kt <= (q_end - 1) / BK; ++kt) {
    const int k0 = kt * BK;
    float dp[TM][TN] = {};
    load_tile_dot<BK, DMAX>(dp, sdO, sKV, v, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
    __syncthreads();
    float s[TM][TN] = {};
    load_tile_dot<BK, DMAX>(s, sQ, sKV, k, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int t = q0 + ty * TM + i;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int key = k0 + tx + kLanes * j;
        float ds = 0.f;
        if (t < T && key <= t && key >= start[i])
          ds = expf(a.scale * s[i][j] - row_lse[i]) * (dp[i][j] - row_delta[i]) * a.scale;
        sdS[(ty * TM + i) * LP + tx + kLanes * j] = ds;
      }
    }
    __syncthreads();
    tile_accumulate<TM, NC, BK, LP, DMAX>(acc, sdS, sKV);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = q0 + ty * TM + i;
    if (t < T) store_row<NC>(a.dq + ((static_cast<int64_t>(b) * T + t) * hq + h) * d, acc[i], 1.f, d, vec);
  }
}

// dk_j = sum_t ds_tj q_t and dv_j = sum_t p_tj dout_t, summed over the query heads of kv head kh in order.
// Grid (batch * hkv, key tiles). K and V stay on chip; Q and dout take turns in one tile (Q for S,
// dout for dP and dV, Q again for dK), which costs a second read of Q but keeps d = 128 under 48 KiB.
// Launch bounds (128 threads, at least 1 block per SM) let ptxas use up to 255 registers: without the
// minimum it capped this kernel at 128 and spilled its accumulators for every head-dim bucket (sm_90,
// `nvcc -Xptxas -v`); at 168 registers three 128-thread blocks still fit an SM. The same for dq.
template <int DMAX, int TM, int TN>
__global__ __launch_bounds__(kThreads, 1) void attention_dkdv_kernel(const AttentionArgs a, const float* delta, bool vec) {
  constexpr int BK = kGroups * TM, BQ = kLanes * TN, LD = DMAX + 4, LP = BQ + 4, NC = DMAX / 64;
  __shared__ float4 k_tile[BK * LD / 4], v_tile[BK * LD / 4], x_tile[BQ * LD / 4];
  __shared__ float4 p_tile[BK * LP / 4], ds_tile[BK * LP / 4];
  __shared__ float col_lse[BQ], col_delta[BQ];
  __shared__ int col_start[BQ];
  __shared__ int last_query;
  float* sK = reinterpret_cast<float*>(k_tile);
  float* sV = reinterpret_cast<float*>(v_tile);
  float* sX = reinterpret_cast<float*>(x_tile);
  float* sP = reinterpret_cast<float*>(p_tile);
  float* sdS = reinterpret_cast<float*>(ds_tile);
  const int T = static_cast<int>(a.seq), d = static_cast<int>(a.d);
  const int hq = static_cast<int>(a.hq), hkv = static_cast<int>(a.hkv), group = hq / hkv;
  const int b = static_cast<int>(blockIdx.x) / hkv, kh = static_cast<int>(blockIdx.x) % hkv;
  const int tid = static_cast<int>(threadIdx.x), ty = tid / kLanes, tx = tid % kLanes;
  const int k0 = static_cast<int>(blockIdx.y) * BK, k_last = min(k0 + BK, T) - 1;
  const int64_t kv_row0 = static_cast<int64_t>(b) * T * hkv + kh;

  // With packed documents the queries after the tile's own document never see its keys: find the last
  // query that does (start_{k_last} <= k_last, so k_last itself is one).
  if (tid == 0) last_query = a.starts ? k_last : T - 1;
  load_tile<BK, DMAX>(sK, a.k + kv_row0 * d, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
  load_tile<BK, DMAX>(sV, a.v + kv_row0 * d, static_cast<int64_t>(hkv) * d, k0, T, d, vec);
  __syncthreads();
  if (a.starts) {
    int last = -1;
    for (int t = k_last + 1 + tid; t < T; t += kThreads)
      if (doc_start(a.starts, b, T, t) <= k_last) last = t;
    if (last >= 0) atomicMax(&last_query, last);
  }
  __syncthreads();
  const int qt_first = k0 / BQ, qt_last = last_query / BQ;

  float4 dk[TM][NC], dv[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int n = 0; n < NC; ++n) dk[i][n] = dv[i][n] = zero4();
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const int64_t row0 = static_cast<int64_t>(b) * T * hq + h;
    const float* q = a.q + row0 * d;
    const float* dout = a.dout + row0 * d;
    const float* lse = a.lse + (static_cast<int64_t>(b) * hq + h) * T;
    const float* dl = delta + (static_cast<int64_t>(b) * hq + h) * T;
    for (int qt = qt_first; qt <= qt_last; ++qt) {
      const int t0 = qt * BQ;
      if (tid < BQ) {
        const int t = t0 + tid;
        col_lse[tid] = t < T ? lse[t] : 0.f;
        col_delta[tid] = t < T ? dl[t] : 0.f;
        col_start[tid] = t < T ? doc_start(a.starts, b, T, t) : 0;
      }
      float s[TM][TN] = {};
      load_tile_dot<BQ, DMAX>(s, sK, sX, q, static_cast<int64_t>(hq) * d, t0, T, d, vec);
      __syncthreads();
      float dp[TM][TN] = {};
      load_tile_dot<BQ, DMAX>(dp, sV, sX, dout, static_cast<int64_t>(hq) * d, t0, T, d, vec);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int key = k0 + ty * TM + i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int c = tx + kLanes * j, t = t0 + c;
          float p = 0.f, ds = 0.f;
          if (t < T && key <= t && key >= col_start[c]) {
            p = expf(a.scale * s[i][j] - col_lse[c]);
            ds = p * (dp[i][j] - col_delta[c]) * a.scale;
          }
          sP[(ty * TM + i) * LP + c] = p;
          sdS[(ty * TM + i) * LP + c] = ds;
        }
      }
      __syncthreads();
      tile_accumulate<TM, NC, BQ, LP, DMAX>(dv, sP, sX);
      __syncthreads();
      load_tile_accumulate<BQ, LP, DMAX>(dk, sdS, sX, q, static_cast<int64_t>(hq) * d, t0, T, d, vec);
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int key = k0 + ty * TM + i;
    if (key >= T) continue;
    const int64_t at = (kv_row0 + static_cast<int64_t>(key) * hkv) * d;
    store_row<NC>(a.dk + at, dk[i], 1.f, d, vec);
    store_row<NC>(a.dv + at, dv[i], 1.f, d, vec);
  }
}

// ---- launchers --------------------------------------------------------------------------------------
// The smallest bucket that holds d.
int head_bucket(const AttentionArgs& a, const char* op) {
  if (a.d <= 64) return 64;
  if (a.d <= 128) return 128;
  if (a.d <= 256) return 256;
  throw Error("ERR_SHAPE", std::string(op) + ": head dim " + std::to_string(a.d) + " is above the GPU kernels' 256");
}

// Grid (heads of all rows, tiles along seq); the tile count rides in gridDim.y, at most 65535.
dim3 attention_grid(const AttentionArgs& a, int64_t heads, int tile, const char* op) {
  const int64_t tiles = (a.seq + tile - 1) / tile;
  if (tiles > 65535 || a.batch * heads > 0x7fffffffLL)
    throw Error("ERR_SHAPE", std::string(op) + ": batch " + std::to_string(a.batch) + " x seq " +
                                 std::to_string(a.seq) + " is beyond the GPU attention grid");
  return dim3(static_cast<unsigned>(a.batch * heads), static_cast<unsigned>(tiles));
}

template <int DMAX>
void forward_for(const AttentionArgs& a, bool vec) {
  constexpr int TM = Tiles<DMAX>::fwd_tm, TN = Tiles<DMAX>::fwd_tn;
  const dim3 grid = attention_grid(a, a.hq, kGroups * TM, "attention");
  attention_forward_kernel<DMAX, TM, TN><<<grid, kThreads, 0, stream()>>>(a, vec);
  LK_LAUNCHED("attention_forward_kernel");
}

template <int DMAX>
void backward_for(const AttentionArgs& a, const float* delta, bool vec) {
  constexpr int DQ_TM = Tiles<DMAX>::dq_tm, DQ_TN = Tiles<DMAX>::dq_tn;
  constexpr int KV_TM = Tiles<DMAX>::kv_tm, KV_TN = Tiles<DMAX>::kv_tn;
  const dim3 dq_grid = attention_grid(a, a.hq, kGroups * DQ_TM, "attention.backward");
  const dim3 kv_grid = attention_grid(a, a.hkv, kGroups * KV_TM, "attention.backward");
  attention_dq_kernel<DMAX, DQ_TM, DQ_TN><<<dq_grid, kThreads, 0, stream()>>>(a, delta, vec);
  LK_LAUNCHED("attention_dq_kernel");
  attention_dkdv_kernel<DMAX, KV_TM, KV_TN><<<kv_grid, kThreads, 0, stream()>>>(a, delta, vec);
  LK_LAUNCHED("attention_dkdv_kernel");
}

}  // namespace

void attention_forward(const AttentionArgs& a) {
  if (a.batch <= 0 || a.seq <= 0 || a.hq <= 0) return;
  const bool vec = a.d % 4 == 0 && is_aligned16(a.q) && is_aligned16(a.k) && is_aligned16(a.v) && is_aligned16(a.out);
  switch (head_bucket(a, "attention")) {
    case 64: forward_for<64>(a, vec); break;
    case 128: forward_for<128>(a, vec); break;
    default: forward_for<256>(a, vec); break;
  }
}

void attention_backward(const AttentionArgs& a) {
  if (a.batch <= 0 || a.seq <= 0 || a.hq <= 0) return;
  const int bucket = head_bucket(a, "attention.backward");
  const int64_t rows = a.batch * a.seq * a.hq;
  float* delta = static_cast<float*>(scratch(kScratchA, static_cast<size_t>(rows) * sizeof(float)));
  const bool delta_vec = a.d % 4 == 0 && is_aligned16(a.dout) && is_aligned16(a.out);
  attention_delta_kernel<<<grid_for(rows, kGroups), kThreads, 0, stream()>>>(
      a.dout, a.out, delta, rows, static_cast<int>(a.seq), static_cast<int>(a.hq), static_cast<int>(a.d), delta_vec);
  LK_LAUNCHED("attention_delta_kernel");
  const bool vec = delta_vec && is_aligned16(a.q) && is_aligned16(a.k) && is_aligned16(a.v) && is_aligned16(a.dq) &&
                   is_aligned16(a.dk) && is_aligned16(a.dv);
  switch (bucket) {
    case 64: backward_for<64>(a, delta, vec); break;
    case 128: backward_for<128>(a, delta, vec); break;
    default: backward_for<256>(a, delta, vec); break;
  }
}

}  // namespace lorakit::gpu
