// Dense float64 linear algebra for the analysis tools: a symmetric eigensolver (Householder
// tridiagonalization, then implicit QL with Wilkinson shifts) and the left SVD built on it.
//
// Determinism: every parallel loop splits an index range into contiguous slices and each output element
// is computed by one thread in a fixed order, so results are bit-identical for any thread count. The
// wide (AVX2) kernels are compiled without FMA and with -ffp-contract=off, so they round exactly as the
// scalar ones do: the same inputs give the same bits on every x86-64 machine.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <vector>

#include "../ops.h"
#include "gemm.h"
#include "parallel.h"

namespace lorakit::cpu {
namespace {

// Regions smaller than this many multiply-adds run on the calling thread: waking the pool costs more.
constexpr int64_t kParallelWork = 1 << 15;

void maybe_parallel(int64_t n, int64_t work, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (work < kParallelWork) fn(0, n, 0);
  else parallel_for(n, fn);
}

// ---------------------------------------------------------------------------------------------------
// Gram matrix G = X Xᵀ in float64 for X [p, q] read from float32 W: X = W ([m, n], p = m) or X = Wᵀ
// (p = n). Only lower-triangle tiles are computed, then mirrored.
//   G[i][j] = Σ_k X[i][k] X[j][k], summed in increasing k (the same order for every tiling).

constexpr int64_t kTile = 64, kDepth = 256;

struct GramSource {
  const float* w;
  int64_t m, n;
  bool trans;  // X = Wᵀ
  int64_t p() const { return trans ? n : m; }
  int64_t q() const { return trans ? m : n; }
  double at(int64_t i, int64_t k) const { return trans ? w[k * n + i] : w[i * n + k]; }
};

// C[4][4] += A[4, kc] · B[kc, 4], A packed row-major (stride kDepth), B k-major (stride kTile), C stride
// kTile: each C element sums in k order.
constexpr int64_t kRows = 4;
__attribute__((always_inline)) inline void gram_micro(int64_t kc, const double* a, const double* b, double* c) {
  double acc[kRows][4];
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t j = 0; j < 4; ++j) acc[r][j] = c[r * kTile + j];
  for (int64_t k = 0; k < kc; ++k) {
    const double* bk = b + k * kTile;
    for (int64_t r = 0; r < kRows; ++r) {
      const double av = a[r * kDepth + k];
      for (int64_t j = 0; j < 4; ++j) acc[r][j] += av * bk[j];
    }
  }
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t j = 0; j < 4; ++j) c[r * kTile + j] = acc[r][j];
}

// Inlined into both the SSE2 and the AVX2 entry point so each is compiled for its own instruction set.
__attribute__((always_inline)) inline void gram_tile_impl(int64_t kc, const double* ap, const double* bp, double* ct) {
  for (int64_t i = 0; i < kTile; i += kRows)
    for (int64_t j = 0; j < kTile; j += 4) gram_micro(kc, ap + i * kDepth, bp + j, ct + i * kTile + j);
}
__attribute__((target("avx2"))) void gram_tile_avx2(int64_t kc, const double* ap, const double* bp, double* ct) {
  gram_tile_impl(kc, ap, bp, ct);
}
void gram_tile_sse(int64_t kc, const double* ap, const double* bp, double* ct) { gram_tile_impl(kc, ap, bp, ct); }

void gram(const GramSource& src, double* g) {
  const int64_t p = src.p(), q = src.q(), tiles = (p + kTile - 1) / kTile;
  const bool avx2 = cpu_has_avx2();
  // Tile row t costs t+1 tile products; pairing row t with row tiles-1-t makes contiguous slices of
  // this order carry equal work.
  std::vector<int64_t> order;
  for (int64_t lo = 0, hi = tiles - 1; lo <= hi; ++lo, --hi) {
    order.push_back(lo);
    if (hi != lo) order.push_back(hi);
  }
  maybe_parallel(tiles, p * p * q, [&](int64_t begin, int64_t end, int) {
    std::vector<double> ap(kTile * kDepth), bp(kDepth * kTile), ct(kTile * kTile);
    for (int64_t oi = begin; oi < end; ++oi) {
      const int64_t ti = order[oi], i0 = ti * kTile, ih = std::min(kTile, p - i0);
      for (int64_t tj = 0; tj <= ti; ++tj) {
        const int64_t j0 = tj * kTile, jw = std::min(kTile, p - j0);
        std::fill(ct.begin(), ct.end(), 0.0);
        for (int64_t k0 = 0; k0 < q; k0 += kDepth) {
          const int64_t kc = std::min(kDepth, q - k0);
          // Rows past the edge are zero, so they only feed outputs that are never stored.
          for (int64_t r = 0; r < kTile; ++r)
            for (int64_t k = 0; k < kc; ++k) ap[r * kDepth + k] = r < ih ? src.at(i0 + r, k0 + k) : 0.0;
          for (int64_t k = 0; k < kc; ++k)
            for (int64_t c = 0; c < kTile; ++c) bp[k * kTile + c] = c < jw ? src.at(j0 + c, k0 + k) : 0.0;
          if (avx2) gram_tile_avx2(kc, ap.data(), bp.data(), ct.data());
          else gram_tile_sse(kc, ap.data(), bp.data(), ct.data());
        }
        for (int64_t r = 0; r < ih; ++r)
          for (int64_t c = 0; c < jw; ++c) g[(i0 + r) * p + j0 + c] = ct[r * kTile + c];
      }
    }
  });
  maybe_parallel(p, p * p, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = i + 1; j < p; ++j) g[i * p + j] = g[j * p + i];
  });
}

// ---------------------------------------------------------------------------------------------------
// Householder tridiagonalization of symmetric A (full storage, row-major), in place.
// Step k reflects x = A[k][k+1..n) onto α e₁ with H = I - τ v vᵀ, v = x - α e₁, α = -sign(x₀)‖x‖,
// τ = 2 / vᵀv = 1 / (‖x‖ (‖x‖ + |x₀|)); v is kept in row k for building Q afterwards. The trailing
// block A₂₂ (rows/cols k+1..n) becomes H A₂₂ H = A₂₂ - v wᵀ - w vᵀ with p = τ A₂₂ v,
// w = p - (τ/2)(vᵀp) v. Each step's rank-2 update is fused with the next step's product A₂₂ v', so the
// trailing block is streamed once per step: row k+1 is updated first, v' built from it, then every
// other row is updated and immediately multiplied by v'.

double reflector(double* x, int64_t len, double& tau) {
  double ss = 0;
  for (int64_t j = 0; j < len; ++j) ss += x[j] * x[j];
  const double norm = std::sqrt(ss);
  if (norm == 0) {
    tau = 0;
    return 0;
  }
  const double alpha = x[0] >= 0 ? -norm : norm;
  tau = 1 / (norm * (norm + std::fabs(x[0])));
  x[0] -= alpha;
  return alpha;
}

void tridiagonalize(double* a, int64_t n, double* d, double* e, std::vector<double>& tau) {
  if (n == 1) {
    d[0] = a[0];
    return;
  }
  std::vector<double> p(n, 0.0), w(n, 0.0);
  if (n >= 3) {
    d[0] = a[0];
    e[0] = reflector(a + 1, n - 1, tau[0]);
    const double* v = a;
    maybe_parallel(n, n * n, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = std::max<int64_t>(begin, 1); i < end; ++i) {
        double s = 0;
        for (int64_t j = 1; j < n; ++j) s += a[i * n + j] * v[j];
        p[i] = s;
      }
    });
  }
  for (int64_t k = 0; k + 2 < n; ++k) {
    const double* v = a + k * n;  // v[j] for j in (k, n)
    const double t = tau[k];
    double vp = 0;
    for (int64_t j = k + 1; j < n; ++j) {
      p[j] *= t;
      vp += v[j] * p[j];
    }
    const double half = 0.5 * t * vp;
    for (int64_t j = k + 1; j < n; ++j) w[j] = p[j] - half * v[j];
    double* next = a + (k + 1) * n;
    for (int64_t j = k + 1; j < n; ++j) next[j] -= v[k + 1] * w[j] + w[k + 1] * v[j];
    d[k + 1] = next[k + 1];
    const bool more = k + 3 < n;
    if (more) e[k + 1] = reflector(next + k + 2, n - k - 2, tau[k + 1]);
    const int64_t len = n - k - 2;
    maybe_parallel(len, len * len, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = k + 2 + begin; i < k + 2 + end; ++i) {
        double* row = a + i * n;
        const double vi = v[i], wi = w[i];
        double s = 0;
        for (int64_t j = k + 2; j < n; ++j) {
          row[j] -= vi * w[j] + wi * v[j];
          s += row[j] * next[j];
        }
        if (more) p[i] = s;
      }
    });
  }
  e[n - 2] = a[(n - 2) * n + n - 1];
  d[n - 1] = a[n * n - 1];
  if (n == 2) d[0] = a[0];
}

// Q = H₀ H₁ ⋯ H_{n-3}, accumulated backwards so each H_k touches only the block (k+1..n)²:
// Q₂₂ ← Q₂₂ - τ v (vᵀ Q₂₂). Threads own column slices, so yᵀ = vᵀ Q₂₂ needs no cross-thread sum.
void form_q(const double* a, int64_t n, const std::vector<double>& tau, double* q) {
  std::fill(q, q + n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) q[i * n + i] = 1;
  std::vector<double> y(n);
  for (int64_t k = n - 3; k >= 0; --k) {
    const double* v = a + k * n;
    const double t = tau[k];
    if (t == 0) continue;
    const int64_t lo = k + 1, len = n - lo;
    maybe_parallel(len, 2 * len * len, [&](int64_t begin, int64_t end, int) {
      const int64_t c0 = lo + begin, c1 = lo + end;
      for (int64_t c = c0; c < c1; ++c) y[c] = 0;
      for (int64_t i = lo; i < n; ++i) {
        const double vi = v[i];
        const double* row = q + i * n;
        for (int64_t c = c0; c < c1; ++c) y[c] += vi * row[c];
      }
      for (int64_t i = lo; i < n; ++i) {
        const double f = t * v[i];
        double* row = q + i * n;
        for (int64_t c = c0; c < c1; ++c) row[c] -= f * y[c];
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Implicit QL on the tridiagonal (d, e), e[i] coupling i and i+1. Each sweep chases a bulge from the
// bottom of the unreduced block [l, m] up to l with Givens rotations, shifted by the eigenvalue of the
// leading 2x2 block nearest d[l] (Wilkinson). The rotations are recorded and applied to the vector
// matrix in batches: each row of Z (one component of every vector) takes the whole batch while it sits
// in cache, and rows are independent, so threads split rows.

struct Rotation {
  int64_t i;  // acts on columns i and i+1
  double c, s;
};

// Applies rotations to 8 rows at once, transposed into a [n][8] tile so the 8 lanes vectorize:
//   z_{i+1} ← s z_i + c z_{i+1},  z_i ← c z_i - s z_{i+1}
__attribute__((always_inline)) inline void rotate_tile_impl(const Rotation* rot, int64_t count, double* tile) {
  for (int64_t r = 0; r < count; ++r) {
    double* zi = tile + rot[r].i * 8;
    double* zj = zi + 8;
    const double c = rot[r].c, s = rot[r].s;
    for (int l = 0; l < 8; ++l) {
      const double f = zj[l];
      zj[l] = s * zi[l] + c * f;
      zi[l] = c * zi[l] - s * f;
    }
  }
}
__attribute__((target("avx2"))) void rotate_tile_avx2(const Rotation* rot, int64_t count, double* tile) {
  rotate_tile_impl(rot, count, tile);
}
void rotate_tile_sse(const Rotation* rot, int64_t count, double* tile) { rotate_tile_impl(rot, count, tile); }

void apply_rotations(std::vector<Rotation>& rot, double* z, int64_t n) {
  if (rot.empty()) return;
  const bool avx2 = cpu_has_avx2();
  const int64_t tiles = (n + 7) / 8;
  maybe_parallel(tiles, static_cast<int64_t>(rot.size()) * n, [&](int64_t begin, int64_t end, int) {
    std::vector<double> tile(n * 8);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = t * 8, rows = std::min<int64_t>(8, n - r0);
      for (int64_t c = 0; c < n; ++c)
        for (int64_t l = 0; l < 8; ++l) tile[c * 8 + l] = l < rows ? z[(r0 + l) * n + c] : 0.0;
      if (avx2) rotate_tile_avx2(rot.data(), static_cast<int64_t>(rot.size()), tile.data());
      else rotate_tile_sse(rot.data(), static_cast<int64_t>(rot.size()), tile.data());
      for (int64_t l = 0; l < rows; ++l)
        for (int64_t c = 0; c < n; ++c) z[(r0 + l) * n + c] = tile[c * 8 + l];
    }
  });
  rot.clear();
}

void tridiagonal_ql(double* d, double* e, int64_t n, double* z) {
  std::vector<Rotation> rot;
  // A batch of 64 n rotations costs about as much as streaming Z once more, so the stream is amortised.
  const size_t batch = static_cast<size_t>(std::max<int64_t>(64 * n, 4096));
  if (z) rot.reserve(batch + n);
  e[n - 1] = 0;
  // Off-diagonals below eps·‖T‖ are dropped: backward stable, and the tridiagonalization already
  // carries errors of that size, so a test relative to tiny diagonal entries could never be met.
  double norm = 0;
  for (int64_t i = 0; i < n; ++i) norm = std::max(norm, std::fabs(d[i]) + std::fabs(e[i]) + (i ? std::fabs(e[i - 1]) : 0.0));
  const double tol = DBL_EPSILON * norm;
  for (int64_t l = 0; l < n; ++l) {
    for (int iter = 0;; ++iter) {
      int64_t m = l;
      for (; m + 1 < n; ++m)
        if (std::fabs(e[m]) <= tol) break;
      if (m == l) break;
      if (iter == 60) throw Error("ERR_NO_CONVERGENCE", "sym_eigen: the QL iteration did not converge");
      // Shift: g = d[m] - μ with μ the eigenvalue of [[d_l, e_l], [e_l, d_{l+1}]] nearest d_l.
      double g = (d[l + 1] - d[l]) / (2 * e[l]);
      double r = std::hypot(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
      double s = 1, c = 1, p = 0;
      bool underflow = false;
      for (int64_t i = m - 1; i >= l; --i) {
        const double f = s * e[i], b = c * e[i];
        r = std::hypot(f, g);
        e[i + 1] = r;
        if (r == 0) {
          // The rotation would be undefined: e[i] vanished, so the block splits here; restart.
          d[i + 1] -= p;
          e[m] = 0;
          underflow = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        if (z) rot.push_back({i, c, s});
      }
      if (!underflow) {
        d[l] -= p;
        e[l] = g;
        e[m] = 0;
      }
      if (z && rot.size() >= batch) apply_rotations(rot, z, n);
    }
  }
  if (z) apply_rotations(rot, z, n);
}

}  // namespace

// Eigenvalues in ascending order in w; with `vectors`, a is overwritten by the eigenvectors as COLUMNS
// (a[i*n + j] is component i of the vector for w[j]); otherwise a is destroyed.
void sym_eigen(double* a, int64_t n, double* w, bool vectors) {
  if (n <= 0) return;
  std::vector<double> e(n, 0.0), tau(n, 0.0);
  tridiagonalize(a, n, w, e.data(), tau);
  if (!vectors) {
    tridiagonal_ql(w, e.data(), n, nullptr);
    std::sort(w, w + n);
    return;
  }
  std::vector<double> q(n * n);
  form_q(a, n, tau, q.data());
  tridiagonal_ql(w, e.data(), n, q.data());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return w[x] < w[y]; });
  std::vector<double> sorted(n);
  for (int64_t j = 0; j < n; ++j) sorted[j] = w[order[j]];
  std::copy(sorted.begin(), sorted.end(), w);
  maybe_parallel(n, n * n, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < n; ++j) a[i * n + j] = q[i * n + order[j]];
  });
}

namespace {

// Flips column j of u [m, k] so that its largest-magnitude component (the first, on ties) is positive.
void fix_sign(double* u, int64_t m, int64_t k, int64_t j) {
  int64_t best = 0;
  for (int64_t i = 1; i < m; ++i)
    if (std::fabs(u[i * k + j]) > std::fabs(u[best * k + j])) best = i;
  if (u[best * k + j] < 0)
    for (int64_t i = 0; i < m; ++i) u[i * k + j] = -u[i * k + j];
}

}  // namespace

// The top-k left singular vectors of W [m, n] (float32), u [m, k] row-major with columns by descending
// singular value s[k]; k <= min(m, n). For m <= n they are the eigenvectors of W Wᵀ; otherwise
// u_j = W v_j / ‖W v_j‖ from the eigenvectors v_j of WᵀW, and columns whose singular value is
// negligible (W v_j carries no direction) are completed to an orthonormal set deterministically.
void svd_left(const float* w, int64_t m, int64_t n, double* u, double* s, int64_t k) {
  if (k <= 0) return;
  const bool wide = m <= n;
  const int64_t p = wide ? m : n;
  std::vector<double> g(p * p), lam(p);
  gram({w, m, n, !wide}, g.data());
  sym_eigen(g.data(), p, lam.data(), true);
  for (int64_t j = 0; j < k; ++j) s[j] = std::sqrt(std::max(lam[p - 1 - j], 0.0));
  if (wide) {
    maybe_parallel(m, m * k, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i)
        for (int64_t j = 0; j < k; ++j) u[i * k + j] = g[i * p + (p - 1 - j)];
    });
  } else {
    // U = W V_k, row by row: u[i][j] = Σ_c W[i][c] V[c][j], summed in c order.
    maybe_parallel(m, m * n * k, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        double* row = u + i * k;
        std::fill(row, row + k, 0.0);
        for (int64_t c = 0; c < n; ++c) {
          const double x = w[i * n + c];
          const double* vrow = g.data() + c * p + (p - 1);
          for (int64_t j = 0; j < k; ++j) row[j] += x * vrow[-j];
        }
      }
    });
    // W v_j / s_j carries an error of about ε·s₀/s_j, so weak columns are re-orthogonalized against
    // the ones before, and those at float32 rounding level (no direction left) are replaced by basis
    // vectors made orthogonal to them; both use Gram-Schmidt twice for orthogonality to rounding.
    const double weak = s[0] * 1e-4, null_level = s[0] * 1e-7;
    auto orthogonalize = [&](int64_t j) {
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t c = 0; c < j; ++c) {
          double dot = 0;
          for (int64_t i = 0; i < m; ++i) dot += u[i * k + c] * u[i * k + j];
          for (int64_t i = 0; i < m; ++i) u[i * k + j] -= dot * u[i * k + c];
        }
    };
    auto column_norm = [&](int64_t j) {
      double ss = 0;
      for (int64_t i = 0; i < m; ++i) ss += u[i * k + j] * u[i * k + j];
      return std::sqrt(ss);
    };
    int64_t next_basis = 0;
    for (int64_t j = 0; j < k; ++j) {
      double norm = column_norm(j);
      if (s[j] > null_level && norm > 0) {
        if (s[j] < weak) {
          for (int64_t i = 0; i < m; ++i) u[i * k + j] /= norm;
          orthogonalize(j);
          norm = column_norm(j);
        }
        if (norm > 0.5 || s[j] >= weak) {
          for (int64_t i = 0; i < m; ++i) u[i * k + j] /= norm;
          continue;
        }
      }
      for (;; ++next_basis) {
        if (next_basis >= m) throw Error("ERR_NATIVE", "svd_left: could not complete the orthonormal basis");
        for (int64_t i = 0; i < m; ++i) u[i * k + j] = i == next_basis ? 1.0 : 0.0;
        orthogonalize(j);
        norm = column_norm(j);
        if (norm > 0.5) {
          for (int64_t i = 0; i < m; ++i) u[i * k + j] /= norm;
          ++next_basis;
          break;
        }
      }
    }
  }
  for (int64_t j = 0; j < k; ++j) fix_sign(u, m, k, j);
}

}  // namespace lorakit::cpu
