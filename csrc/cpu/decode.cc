// The generation ops (#13): writes into the paged KV cache, attention over it, and many LoRA adapters in
// one batch. The pool layout and the contracts are in ../ops.h.
//
// kv_write: pool[slots[i]] = k[i] (and v), converted to the pool's dtype (bfloat16: round to nearest,
// ties to even); a negative slot skips its row. Rows go in order, so of two rows naming one slot the
// later one is what stays.
//
// paged_attention, per query row i and query head h (kv head g = h / (hq / hkv)), over the keys of
// sequence s = seq[i], j = 0 .. ctx[i]-1, each at slot(s, j) = table[s, j / bs] * bs + j % bs:
//   s_j = scale * q_ih . K[slot(s, j), g]
//   out_ih = sum_j exp(s_j - M) V[slot(s, j), g] / sum_j exp(s_j - M),   M = max_j s_j
// in one pass over j (online softmax): with a running max m, sum l and output accumulator o,
//   m' = max(m, s_j);  c = exp(m - m');  l' = c l + exp(s_j - m');  o' = c o + exp(s_j - m') V_j
// and out = o / l at the end. Every key is read once and nothing of size ctx is stored. Work is split
// over (row, head) pairs; each pair is computed by one thread in key order, so the result does not
// depend on the thread count. Scores, the running sum and the output accumulate in float32.
//
// lora_segments, per segment (rows [start, end), A [r, in], B [out, r], scale s) and row x of it:
//   xa_k = x . A_k  (k < r: one dot product per row of A)
//   y_o += (s xa) . B_o   (o < out: one dot product of length r per row of B)
// or, given Bᵀ ([r, out]), y += sum_k (s xa_k) Bᵀ_k: r axpys over contiguous rows, which vectorise across
// the outputs (a dot product of length r = 8 is mostly horizontal adds). The sum over k is formed in a
// scratch row first and added to y once, as the dot-product form adds it.
// Rows of all segments together are split over the threads; each row is one thread's, start to end.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops.h"
#include "dtype.h"
#include "gemm.h"
#include "parallel.h"

namespace lorakit::cpu {

namespace {

// a . b with eight partial sums, a form the compiler vectorises (a single running sum it may not
// reorder, under -ffp-contract=off and without -ffast-math). The order is fixed, so so are the bits.
inline __attribute__((always_inline)) float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void store_row(const float* src, void* pool, DType dt, int64_t slot, int64_t width) {
  if (dt == DType::F32) {
    std::copy(src, src + width, static_cast<float*>(pool) + slot * width);
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(pool) + slot * width;
  for (int64_t i = 0; i < width; ++i) dst[i] = f32_to_bf16(src[i]);
}

// One row of lora_segments: xa = s (x . A_k) for each k, then y += xa Bᵀ (from Bᵀ's rows when given, else as
// dot products with B's rows). Compiled three times, for AVX-512, AVX2 and the baseline, and chosen at run
// time as gemm.cc chooses its kernels: the library is built without -march, and these loops are all of
// the per-row work (a baseline SSE build runs them at a quarter of the width).
inline __attribute__((always_inline)) void lora_row_impl(const float* x, float* y, const LoraSegment& s, int64_t in, int64_t out, float* xa, float* acc) {
  for (int64_t k = 0; k < s.r; ++k) xa[k] = s.scale * dot(x, s.a + k * in, in);
  if (s.bt) {
    for (int64_t o = 0; o < out; ++o) acc[o] = 0.f;
    for (int64_t k = 0; k < s.r; ++k) {
      const float c = xa[k], *row = s.bt + k * out;
      for (int64_t o = 0; o < out; ++o) acc[o] += c * row[o];
    }
    for (int64_t o = 0; o < out; ++o) y[o] += acc[o];
  } else {
    for (int64_t o = 0; o < out; ++o) y[o] += dot(xa, s.b + o * s.r, s.r);
  }
}
using LoraRow = void (*)(const float*, float*, const LoraSegment&, int64_t, int64_t, float*, float*);
__attribute__((target("avx512f"))) void lora_row_avx512(const float* x, float* y, const LoraSegment& s, int64_t in, int64_t out, float* xa, float* acc) { lora_row_impl(x, y, s, in, out, xa, acc); }
__attribute__((target("avx2,fma"))) void lora_row_avx2(const float* x, float* y, const LoraSegment& s, int64_t in, int64_t out, float* xa, float* acc) { lora_row_impl(x, y, s, in, out, xa, acc); }
void lora_row_generic(const float* x, float* y, const LoraSegment& s, int64_t in, int64_t out, float* xa, float* acc) { lora_row_impl(x, y, s, in, out, xa, acc); }

LoraRow pick_lora_row() {
  if (cpu_has_avx512()) return lora_row_avx512;
  if (cpu_has_avx2()) return lora_row_avx2;
  return lora_row_generic;
}

}  // namespace

void kv_write(const KvWriteArgs& a) {
  if (a.kv_dtype != DType::F32 && a.kv_dtype != DType::BF16)
    throw Error("ERR_DTYPE", std::string("kv_write: the pools must be float32 or bfloat16, got ") + dtype_name(a.kv_dtype));
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t slot = a.slots[i];
    if (slot < 0) continue;
    store_row(a.k + i * a.width, a.k_pool, a.kv_dtype, slot, a.width);
    store_row(a.v + i * a.width, a.v_pool, a.kv_dtype, slot, a.width);
  }
}

void paged_attention(const PagedAttentionArgs& a) {
  if (a.kv_dtype != DType::F32 && a.kv_dtype != DType::BF16)
    throw Error("ERR_DTYPE", std::string("paged_attention: the pools must be float32 or bfloat16, got ") + dtype_name(a.kv_dtype));
  const int64_t D = a.d, group = a.hq / a.hkv, width = a.hkv * D;
  const bool f32 = a.kv_dtype == DType::F32;
  parallel_for(a.n * a.hq, [&](int64_t u0, int64_t u1, int) {
    // Scratch per thread: the output accumulator, and a bfloat16 pool's K and V rows as float32.
    std::vector<float> acc(static_cast<size_t>(D)), kbuf(f32 ? 0 : static_cast<size_t>(D)), vbuf(kbuf.size());
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t i = u / a.hq, h = u % a.hq, g = h / group;
      const float* q = a.q + (i * a.hq + h) * D;
      const int64_t* table = a.block_table + a.seq[i] * a.max_blocks;
      float m = -INFINITY, l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < a.ctx[i]; ++j) {
        const int64_t at = (table[j / a.block_size] * a.block_size + j % a.block_size) * width + g * D;
        const float *k, *v;
        if (f32) {
          k = static_cast<const float*>(a.k_pool) + at;
          v = static_cast<const float*>(a.v_pool) + at;
        } else {
          load_f32(static_cast<const uint16_t*>(a.k_pool) + at, DType::BF16, D, kbuf.data());
          load_f32(static_cast<const uint16_t*>(a.v_pool) + at, DType::BF16, D, vbuf.data());
          k = kbuf.data();
          v = vbuf.data();
        }
        const float s = a.scale * dot(q, k, D);
        if (s > m) {
          // A new maximum: rescale what was summed under the old one (exp(-inf) = 0 on the first key).
          const float c = std::exp(m - s);
          l *= c;
          for (int64_t e = 0; e < D; ++e) acc[e] *= c;
          m = s;
        }
        const float p = std::exp(s - m);
        l += p;
        for (int64_t e = 0; e < D; ++e) acc[e] += p * v[e];
      }
      float* o = a.out + (i * a.hq + h) * D;
      const float inv = 1.f / l;
      for (int64_t e = 0; e < D; ++e) o[e] = acc[e] * inv;
    }
  });
}

void lora_segments(const LoraSegmentsArgs& a) {
  // first[j]: the index of segment j's first row among all segments' rows, in the order given.
  std::vector<int64_t> first(static_cast<size_t>(a.count) + 1, 0);
  int64_t max_r = 0;
  for (int64_t j = 0; j < a.count; ++j) {
    first[j + 1] = first[j] + (a.segments[j].end - a.segments[j].start);
    max_r = std::max(max_r, a.segments[j].r);
  }
  static const LoraRow row_kernel = pick_lora_row();
  parallel_for(first[a.count], [&](int64_t u0, int64_t u1, int) {
    std::vector<float> xa(static_cast<size_t>(max_r)), acc(static_cast<size_t>(a.out));
    // The segment holding row u0, then walked forward with u.
    int64_t j = std::upper_bound(first.begin(), first.end(), u0) - first.begin() - 1;
    for (int64_t u = u0; u < u1; ++u) {
      while (u >= first[j + 1]) ++j;
      const LoraSegment& s = a.segments[j];
      const int64_t row = s.start + (u - first[j]);
      row_kernel(a.x + row * a.ldx, a.y + row * a.ldy, s, a.in, a.out, xa.data(), acc.data());
    }
  });
}

}  // namespace lorakit::cpu
