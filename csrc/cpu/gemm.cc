// Dense GEMM, float32 accumulate, any float input dtype (and NF4 weights), either operand transposed.
//
//   C[m,n] = alpha * sum_p op(A)[m,p] * op(B)[p,n] + beta * C[m,n] + bias[n]
//
// Goto/BLIS structure. For each NC-wide slab of columns and KC-deep slab of the reduction, B is packed
// (converted to fp32) into NR-wide panels that stay in L2, and each thread packs its own rows of A
// into MR-tall panels. The micro-kernel keeps an MR x NR tile of C in registers and walks one A panel
// (L1-resident) against successive B panels. Rows (or, for short-and-wide products, columns) are split
// between threads in whole tiles, and every element's reduction runs in the same order whatever the
// thread count, so results are bit-identical on any number of threads.
#include "gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "../ops.h"
#include "dtype.h"
#include "parallel.h"

namespace lorakit::cpu {
namespace {

using KernelFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                          float beta, const float* bias);

struct Kernel {
  const char* name;
  int mr, nr;
  KernelFn fn;
};

// ---- micro-kernels ------------------------------------------------------------------------------
// Each computes acc = A_panel[mr x kc] * B_panel[kc x nr] and stores C = alpha*acc + beta*C + bias for a
// full tile; beta == 0 never reads C.

__attribute__((target("avx512f"))) void kernel_avx512_8x48(int64_t kc, const float* a, const float* b,
                                                           float* c, int64_t ldc, float alpha, float beta,
                                                           const float* bias) {
  __m512 acc[8][3];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
    }
    a += 8;
    b += 48;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      __m512 v = _mm512_mul_ps(acc[i][j], va);
      if (beta != 0.f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16 * j), v);
      if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + 16 * j));
      _mm512_storeu_ps(row + 16 * j, v);
    }
  }
}

__attribute__((target("avx2,fma"))) void kernel_avx2_6x16(int64_t kc, const float* a, const float* b, float* c,
                                                          int64_t ldc, float alpha, float beta,
                                                          const float* bias) {
  __m256 acc[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += 6;
    b += 16;
  }
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      __m256 v = _mm256_mul_ps(acc[i][j], va);
      if (beta != 0.f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row + 8 * j), v);
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * j));
      _mm256_storeu_ps(row + 8 * j, v);
    }
  }
}

// Portable fallback; the compiler vectorises it for the baseline ISA.
void kernel_generic_4x8(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                        float beta, const float* bias) {
  float acc[4][8] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    a += 4;
    b += 8;
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) {
      float v = alpha * acc[i][j];
      if (beta != 0.f) v += beta * c[i * ldc + j];
      if (bias) v += bias[j];
      c[i * ldc + j] = v;
    }
}

const Kernel kAvx512{"avx512", 8, 48, kernel_avx512_8x48};
const Kernel kAvx2{"avx2", 6, 16, kernel_avx2_6x16};
const Kernel kGeneric{"generic", 4, 8, kernel_generic_4x8};

const Kernel* best_kernel() {
  if (cpu_has_avx512()) return &kAvx512;
  if (cpu_has_avx2()) return &kAvx2;
  return &kGeneric;
}

std::atomic<const Kernel*> active{nullptr};

const Kernel& kernel() {
  const Kernel* k = active.load();
  if (!k) {
    k = best_kernel();
    active.store(k);
  }
  return *k;
}

// ---- packing ------------------------------------------------------------------------------------

// Reads `len` consecutive stored elements starting at stored (row, col) as float32.
void load_stored(const Operand& op, int64_t row, int64_t col, int64_t len, float* dst) {
  int64_t first = row * op.ld + col;
  if (op.nf4)
    load_nf4(*op.nf4, first, len, dst);
  else
    load_f32(elem_ptr(op.data, op.dtype, first), op.dtype, len, dst);
}

// Packs logical rows [r0, r0+rows) x reduction [p0, p0+kc) of an operand whose logical shape is
// [rows_total, k] into panels of `w` rows: out[panel][p][i]. Rows past rows_total are zero.
// `logical_rows_first` says whether the logical row index is the stored row (true for A untransposed
// and B transposed).
void pack_panels(const Operand& op, bool logical_rows_first, int64_t rows_total, int64_t r0, int64_t rows,
                 int64_t p0, int64_t kc, int w, float* out, float* tmp) {
  int64_t panels = (rows + w - 1) / w;
  std::memset(out, 0, sizeof(float) * panels * w * kc);
  int64_t valid = std::min(rows, rows_total - r0);
  if (logical_rows_first) {
    for (int64_t i = 0; i < valid; ++i) {
      load_stored(op, r0 + i, p0, kc, tmp);
      float* dst = out + (i / w) * w * kc + (i % w);
      for (int64_t p = 0; p < kc; ++p) dst[p * w] = tmp[p];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      load_stored(op, p0 + p, r0, valid, tmp);
      for (int64_t i = 0; i < valid; ++i) out[(i / w) * w * kc + p * w + (i % w)] = tmp[i];
    }
  }
}

constexpr int64_t KC = 256;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Applies the tile epilogue for an edge tile that the kernel computed into `tile` (alpha applied, no beta).
void store_edge(const float* tile, int nr, int64_t rows, int64_t cols, float* c, int64_t ldc, float beta,
                const float* bias) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      float v = tile[i * nr + j];
      if (beta != 0.f) v += beta * c[i * ldc + j];
      if (bias) v += bias[j];
      c[i * ldc + j] = v;
    }
}


// ---- narrow products: n <= kNarrow (the rank-r side of LoRA) ------------------------------------
// Packing a narrow B into full register tiles wastes most of each tile, and packing the long operand
// costs as much as the arithmetic. These loops stream the long operand once, converting on the fly,
// and keep op(B) (k x n, small) resident. Column chunks are 16 wide so the compiler maps them onto one
// AVX-512 register (two AVX2 ones) in the clones below; every output sums over p in order.

constexpr int64_t kNarrow = 64;
constexpr int kLanes = 16;

struct Narrow {
  int64_t m, n, k, npad;
  const float* z;  // op(B) as float32 [k, npad], zero-padded columns
};

// C rows [i0, i1) of op(A) * Z for untransposed A: four rows at a time share each Z row.
template <int R>
inline __attribute__((always_inline)) void narrow_rows_block(const Narrow& w, const float* const* arow, float* acc) {
  for (int64_t j0 = 0; j0 < w.npad; j0 += kLanes) {
    float t[R][kLanes] = {};
    for (int64_t p = 0; p < w.k; ++p) {
      const float* z = w.z + p * w.npad + j0;
      for (int r = 0; r < R; ++r) {
        const float a = arow[r][p];
        for (int j = 0; j < kLanes; ++j) t[r][j] += a * z[j];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kLanes; ++j) acc[r * w.npad + j0 + j] = t[r][j];
  }
}

inline __attribute__((always_inline)) void narrow_rows_impl(const Narrow& w, const float* const* arow, int rows, float* acc) {
  if (rows == 4) return narrow_rows_block<4>(w, arow, acc);
  for (int r = 0; r < rows; ++r) narrow_rows_block<1>(w, arow + r, acc + r * w.npad);
}

// acc[i, :] += x[i] * z for i < rows: the transposed-A form, C = X^T Z summed over X's rows.
inline __attribute__((always_inline)) void narrow_axpy_impl(const float* x, int64_t rows, const float* z, int64_t npad, float* acc) {
  for (int64_t i = 0; i < rows; ++i) {
    const float a = x[i];
    float* c = acc + i * npad;
    for (int64_t j0 = 0; j0 < npad; j0 += kLanes)
      for (int j = 0; j < kLanes; ++j) c[j0 + j] += a * z[j0 + j];
  }
}

__attribute__((target("avx512f"))) void narrow_rows_avx512(const Narrow& w, const float* const* a, int rows, float* acc) { narrow_rows_impl(w, a, rows, acc); }
__attribute__((target("avx2,fma"))) void narrow_rows_avx2(const Narrow& w, const float* const* a, int rows, float* acc) { narrow_rows_impl(w, a, rows, acc); }
void narrow_rows_generic(const Narrow& w, const float* const* a, int rows, float* acc) { narrow_rows_impl(w, a, rows, acc); }
// Four consecutive reduction steps at once, added in the same order as four single steps (so the
// same bits), while each accumulator is loaded and stored once instead of four times.
inline __attribute__((always_inline)) void narrow_axpy4_impl(const float* x, int64_t ldx, int64_t rows, const float* z, int64_t npad, float* acc) {
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
  const float *z0 = z, *z1 = z + npad, *z2 = z + 2 * npad, *z3 = z + 3 * npad;
  for (int64_t i = 0; i < rows; ++i) {
    const float a0 = x0[i], a1 = x1[i], a2 = x2[i], a3 = x3[i];
    float* c = acc + i * npad;
    for (int64_t j0 = 0; j0 < npad; j0 += kLanes)
      for (int j = 0; j < kLanes; ++j) {
        const int64_t q = j0 + j;
        c[q] = (((c[q] + a0 * z0[q]) + a1 * z1[q]) + a2 * z2[q]) + a3 * z3[q];
      }
  }
}

__attribute__((target("avx512f"))) void narrow_axpy_avx512(const float* x, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy_impl(x, rows, z, npad, acc); }
__attribute__((target("avx512f"))) void narrow_axpy4_avx512(const float* x, int64_t ldx, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy4_impl(x, ldx, rows, z, npad, acc); }
__attribute__((target("avx2,fma"))) void narrow_axpy4_avx2(const float* x, int64_t ldx, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy4_impl(x, ldx, rows, z, npad, acc); }
void narrow_axpy4_generic(const float* x, int64_t ldx, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy4_impl(x, ldx, rows, z, npad, acc); }
__attribute__((target("avx2,fma"))) void narrow_axpy_avx2(const float* x, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy_impl(x, rows, z, npad, acc); }
void narrow_axpy_generic(const float* x, int64_t rows, const float* z, int64_t npad, float* acc) { narrow_axpy_impl(x, rows, z, npad, acc); }

void store_rows(const GemmArgs& g, int64_t i0, int64_t rows, const float* acc, int64_t npad) {
  for (int64_t i = 0; i < rows; ++i) {
    float* c = g.c + (i0 + i) * g.ldc;
    for (int64_t j = 0; j < g.n; ++j) {
      float v = g.alpha * acc[i * npad + j];
      if (g.beta != 0.f) v += g.beta * c[j];
      if (g.bias) v += g.bias[j];
      c[j] = v;
    }
  }
}

// ---- a few rows against a weight stored [n, k]: decoding one or a few tokens ------------------------
// The narrow form below would pad these m rows to 16 lanes (wasting up to 15/16 of its arithmetic) and copy
// the activations transposed first; here each weight row is read once, in place, and dotted with every row
// of A while it sits in L1: the memory-bound matrix-vector product of a decode step. Each dot product keeps
// 16 partial sums over p (one AVX-512 register, two AVX2 ones), added in a fixed order at the end.

constexpr int64_t kDots = 8;

inline __attribute__((always_inline)) void dots_impl(const float* const* arow, int rows, const float* b, int64_t k, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* a = arow[r];
    float t[kLanes] = {};
    int64_t p = 0;
    for (; p + kLanes <= k; p += kLanes)
      for (int j = 0; j < kLanes; ++j) t[j] += a[p + j] * b[p + j];
    float s = 0.f;
    for (int j = 0; j < kLanes; ++j) s += t[j];
    for (; p < k; ++p) s += a[p] * b[p];
    out[r] = s;
  }
}
using DotsFn = void (*)(const float* const*, int, const float*, int64_t, float*);
__attribute__((target("avx512f"))) void dots_avx512(const float* const* a, int rows, const float* b, int64_t k, float* out) { dots_impl(a, rows, b, k, out); }
__attribute__((target("avx2,fma"))) void dots_avx2(const float* const* a, int rows, const float* b, int64_t k, float* out) { dots_impl(a, rows, b, k, out); }
void dots_generic(const float* const* a, int rows, const float* b, int64_t k, float* out) { dots_impl(a, rows, b, k, out); }

// Float32 A [m, k] (untransposed) and B stored [n, k] (transposed), m <= kDots: what gemm_dots takes.
bool dots_apply(const GemmArgs& g) {
  return g.m <= kDots && !g.a.trans && g.b.trans && !g.a.nf4 && !g.b.nf4 && g.a.dtype == DType::F32 && g.b.dtype == DType::F32;
}

void gemm_dots(const GemmArgs& g) {
  const std::string kname = kernel().name;
  const DotsFn fn = kname == "avx512" ? dots_avx512 : kname == "avx2" ? dots_avx2 : dots_generic;
  const float* arow[kDots];
  for (int64_t i = 0; i < g.m; ++i) arow[i] = static_cast<const float*>(g.a.data) + i * g.a.ld;
  const float* b = static_cast<const float*>(g.b.data);
  const int rows = static_cast<int>(g.m);
  parallel_for(g.n, [&](int64_t j0, int64_t j1, int) {
    float d[kDots];
    for (int64_t j = j0; j < j1; ++j) {
      fn(arow, rows, b + j * g.b.ld, g.k, d);
      for (int i = 0; i < rows; ++i) {
        float* c = g.c + i * g.ldc + j;
        float v = g.alpha * d[i];
        if (g.beta != 0.f) v += g.beta * *c;
        if (g.bias) v += g.bias[j];
        *c = v;
      }
    }
  });
}

void gemm_narrow(const GemmArgs& g) {
  const std::string kname = kernel().name;
  const bool wide = kname == "avx512", mid = kname == "avx2";
  Narrow w{g.m, g.n, g.k, round_up(g.n, kLanes), nullptr};
  // Z = op(B) as float32 [k, npad].
  std::vector<float> z(static_cast<size_t>(g.k * w.npad), 0.f);
  {
    std::vector<float> tmp(static_cast<size_t>(std::max(g.k, g.n)));
    if (g.b.trans) {  // stored [n, k]
      for (int64_t j = 0; j < g.n; ++j) {
        load_stored(g.b, j, 0, g.k, tmp.data());
        for (int64_t p = 0; p < g.k; ++p) z[p * w.npad + j] = tmp[p];
      }
    } else {
      for (int64_t p = 0; p < g.k; ++p) load_stored(g.b, p, 0, g.n, z.data() + p * w.npad);
    }
  }
  w.z = z.data();
  if (!g.a.trans) {
    parallel_for((g.m + 3) / 4, [&](int64_t q0, int64_t q1, int) {
      std::vector<float> rowbuf(static_cast<size_t>(4 * g.k)), acc(static_cast<size_t>(4 * w.npad));
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t i0 = q * 4;
        const int rows = static_cast<int>(std::min<int64_t>(4, g.m - i0));
        const float* arow[4];
        for (int r = 0; r < rows; ++r) {
          // f32 rows are read in place; other dtypes are converted once per row.
          if (!g.a.nf4 && g.a.dtype == DType::F32) {
            arow[r] = static_cast<const float*>(g.a.data) + (i0 + r) * g.a.ld;
          } else {
            load_stored(g.a, i0 + r, 0, g.k, rowbuf.data() + r * g.k);
            arow[r] = rowbuf.data() + r * g.k;
          }
        }
        if (wide) narrow_rows_avx512(w, arow, rows, acc.data());
        else if (mid) narrow_rows_avx2(w, arow, rows, acc.data());
        else narrow_rows_generic(w, arow, rows, acc.data());
        store_rows(g, i0, rows, acc.data(), w.npad);
      }
    });
    return;
  }
  // A stored [k, m]: each thread owns a range of C's rows and walks the reduction in order, in blocks
  // of rows small enough that their accumulators stay in L1.
  constexpr int64_t kBlock = 256;
  parallel_for((g.m + kBlock - 1) / kBlock, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> xs(static_cast<size_t>(4 * kBlock)), acc(static_cast<size_t>(kBlock * w.npad));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, rows = std::min(kBlock, g.m - i0);
      std::fill(acc.begin(), acc.end(), 0.f);
      int64_t p = 0;
      for (; p + 4 <= g.k; p += 4) {
        for (int q = 0; q < 4; ++q) load_stored(g.a, p + q, i0, rows, xs.data() + q * kBlock);
        const float* zp = w.z + p * w.npad;
        if (wide) narrow_axpy4_avx512(xs.data(), kBlock, rows, zp, w.npad, acc.data());
        else if (mid) narrow_axpy4_avx2(xs.data(), kBlock, rows, zp, w.npad, acc.data());
        else narrow_axpy4_generic(xs.data(), kBlock, rows, zp, w.npad, acc.data());
      }
      for (; p < g.k; ++p) {
        load_stored(g.a, p, i0, rows, xs.data());
        const float* zp = w.z + p * w.npad;
        if (wide) narrow_axpy_avx512(xs.data(), rows, zp, w.npad, acc.data());
        else if (mid) narrow_axpy_avx2(xs.data(), rows, zp, w.npad, acc.data());
        else narrow_axpy_generic(xs.data(), rows, zp, w.npad, acc.data());
      }
      store_rows(g, i0, rows, acc.data(), w.npad);
    }
  });
}

}  // namespace

bool cpu_has_avx2() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return v;
}
bool cpu_has_avx512() {
  static const bool v = __builtin_cpu_supports("avx512f");
  return v;
}

bool set_gemm_kernel(const std::string& name) {
  if (name == "auto") return active.store(best_kernel()), true;
  if (name == "avx512" && cpu_has_avx512()) return active.store(&kAvx512), true;
  if (name == "avx2" && cpu_has_avx2()) return active.store(&kAvx2), true;
  if (name == "generic") return active.store(&kGeneric), true;
  return false;
}

std::string gemm_kernel() { return kernel().name; }

void gemm(const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {  // empty reduction: C = beta*C + bias
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        float* c = g.c + i * g.ldc + j;
        *c = (g.beta != 0.f ? g.beta * *c : 0.f) + (g.bias ? g.bias[j] : 0.f);
      }
    return;
  }
  const Kernel& K = kernel();
  const int mr = K.mr, nr = K.nr;
  if (dots_apply(g)) return gemm_dots(g);
  if (g.n <= kNarrow) return gemm_narrow(g);
  if (g.m <= kNarrow) {
    // A short, wide product (LoRA's rank-r side, dA = g^T x): C^T = op(B)^T op(A)^T is narrow.
    std::vector<float> t(static_cast<size_t>(g.m * g.n));
    GemmArgs s;
    s.m = g.n;
    s.n = g.m;
    s.k = g.k;
    s.a = g.b;
    s.a.trans = !g.b.trans;
    s.b = g.a;
    s.b.trans = !g.a.trans;
    s.c = t.data();
    s.ldc = g.m;
    s.alpha = g.alpha;
    gemm_narrow(s);
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        float* c = g.c + i * g.ldc + j;
        float v = t[j * g.m + i];
        if (g.beta != 0.f) v += g.beta * *c;
        if (g.bias) v += g.bias[j];
        *c = v;
      }
    return;
  }
  const int threads = num_threads();
  // Column slab sized so a packed KC x NC block of B stays in a core's L2.
  const int64_t nc_max = round_up(std::max<int64_t>(nr, 147456 / KC), nr);
  const int64_t m_panels = (g.m + mr - 1) / mr;
  // Short, wide products (LoRA's rank-r side) split columns between threads instead of rows.
  const bool split_rows = m_panels >= 4 * threads || threads == 1;

  std::vector<float> bpack;
  for (int64_t jc = 0; jc < g.n; jc += nc_max) {
    const int64_t nc = std::min(nc_max, g.n - jc);
    const int64_t n_panels = (nc + nr - 1) / nr;
    for (int64_t pc = 0; pc < g.k; pc += KC) {
      const int64_t kc = std::min(KC, g.k - pc);
      const bool first = pc == 0;
      const float beta = first ? g.beta : 1.f;
      const float* bias = first ? g.bias : nullptr;
      bpack.resize(static_cast<size_t>(n_panels * nr * kc));
      // Logical B is [k, n]; its panels run over n. Untransposed B is stored [k, n] (rows = reduction).
      parallel_for(n_panels, [&](int64_t p0, int64_t p1, int) {
        std::vector<float> tmp(static_cast<size_t>(std::max<int64_t>(kc, nc)));
        int64_t j0 = p0 * nr, cols = std::min((p1 - p0) * nr, nc - j0);
        pack_panels(g.b, g.b.trans, jc + nc, jc + j0, cols, pc, kc, nr, bpack.data() + p0 * nr * kc,
                    tmp.data());
      });
      parallel_for(split_rows ? m_panels : n_panels, [&](int64_t u0, int64_t u1, int) {
        int64_t mp0 = split_rows ? u0 : 0, mp1 = split_rows ? u1 : m_panels;
        int64_t np0 = split_rows ? 0 : u0, np1 = split_rows ? n_panels : u1;
        int64_t rows = std::min((mp1 - mp0) * mr, g.m - mp0 * mr);
        std::vector<float> apack(static_cast<size_t>((mp1 - mp0) * mr * kc));
        std::vector<float> tmp(static_cast<size_t>(std::max<int64_t>(kc, rows)));
        std::vector<float> tile(static_cast<size_t>(mr * nr));
        pack_panels(g.a, !g.a.trans, g.m, mp0 * mr, rows, pc, kc, mr, apack.data(), tmp.data());
        for (int64_t ip = mp0; ip < mp1; ++ip) {
          const float* ap = apack.data() + (ip - mp0) * mr * kc;
          const int64_t i0 = ip * mr, mrows = std::min<int64_t>(mr, g.m - i0);
          for (int64_t jp = np0; jp < np1; ++jp) {
            const float* bp = bpack.data() + jp * nr * kc;
            const int64_t j0 = jc + jp * nr, ncols = std::min<int64_t>(nr, g.n - j0);
            float* c = g.c + i0 * g.ldc + j0;
            const float* bj = bias ? bias + j0 : nullptr;
            if (mrows == mr && ncols == nr) {
              K.fn(kc, ap, bp, c, g.ldc, g.alpha, beta, bj);
            } else {
              K.fn(kc, ap, bp, tile.data(), nr, g.alpha, 0.f, nullptr);
              store_edge(tile.data(), nr, mrows, ncols, c, g.ldc, beta, bj);
            }
          }
        }
      });
    }
  }
}

}  // namespace lorakit::cpu
