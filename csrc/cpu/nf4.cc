// NF4 quantization, bit-compatible with bitsandbytes (quantize_4bit / dequantize_4bit, quant_type="nf4"),
// and the double quantization of its absmax (compress_statistics=True). The reference is bitsandbytes'
// CUDA path: kQuantizeBlockwise and kDequantizeBlockwise with dQuantizeNF4, dQuantize and the NF4 table
// in csrc/kernels.cu, and quantize_4bit, quantize_blockwise and create_dynamic_map in functional.py.
//
//   absmax[b] = max |x| over block b;   code(x) = nearest NF4 value to x * (1/absmax[b])
//   byte j = code(2j) << 4 | code(2j+1);  dequant(e) = NF4[code(e)] * absmax[e / block]
// Nearest is decided by the midpoints between codes with a strict '>', so ties go to the lower code;
// a NaN (an all-zero block scales by 1/0) takes code 0, as in bitsandbytes' decision tree.
//
// Double quantization: offset = mean(absmax); (absmax - offset) is quantized in blocks of 256 with the
// signed dynamic 8-bit map, the same blockwise scheme with an 8-bit code in place of NF4; decoding is
// map[code] * scale + offset, a float multiply then a float add.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../ops.h"
#include "../bnb_codes.h"
#include "dtype.h"
#include "gemm.h"
#include "parallel.h"

namespace lorakit::cpu {

const float kNF4[16] = {LORAKIT_NF4_CODES};

namespace {

const float kNF4Mid[15] = {LORAKIT_NF4_THRESHOLDS};

// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), built with the same
// float32 arithmetic torch uses (linspace, midpoint means, scaling) and sorted: 127 negative values, 0,
// and 128 positive ones ending in 1.
std::vector<float> dynamic_map() {
  // Python's 10 ** (i - 6) is a double that the tensor multiply rounds to float32: these literals.
  const float scales[7] = {1e-6f, 1e-5f, 1e-4f, 1e-3f, 1e-2f, 1e-1f, 1.0f};
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = (1 << i) + 1;
    // torch.linspace(0.1, 1, items) in float32: step in float, the first half counted from the start and
    // the second half from the end. That is torch's CUDA kernel and, since 2.0, its CPU kernel; the
    // vectorized CPU kernel of torch 1.x rounded some points differently and so built a different map.
    std::vector<float> b(items);
    const float start = 0.1f, end = 1.0f, step = (end - start) / static_cast<float>(items - 1);
    const int half = items / 2;
    for (int k = 0; k < items; ++k)
      b[k] = k < half ? start + step * static_cast<float>(k) : end - step * static_cast<float>(items - k - 1);
    for (int k = 0; k + 1 < items; ++k) {
      float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scales[i] * mean);
      data.push_back(-scales[i] * mean);
    }
  }
  data.push_back(0.f);
  data.push_back(1.f);
  std::sort(data.begin(), data.end());
  return data;
}

const std::vector<float>& code8() {
  static const std::vector<float> m = dynamic_map();
  return m;
}


// The maximum of |x| starts at -FLT_MAX for a full block and at 0 for a short last block: bitsandbytes
// seeds it with -FLT_MAX and folds |x| in with fmaxf, which skips NaN, and pads a short block with zeros
// that take part. The seed shows only in a full block of NaN, whose absmax stays -FLT_MAX (and which
// then dequantizes to +FLT_MAX).
float block_absmax(const float* v, int64_t len, bool padded) {
  float m = padded ? 0.f : -FLT_MAX;
  for (int64_t i = 0; i < len; ++i) m = std::max(m, std::fabs(v[i]));  // NaN compares false: skipped
  return m;
}

// ---- dequantization -----------------------------------------------------------------------------
// A block has only 16 distinct outputs, kNF4[c] * absmax rounded to the output dtype, so each block
// builds that table once (the same float product and the same rounding as element by element) and the
// loop is a table lookup per nibble. The SIMD paths keep the table in 32-bit lanes (float bits, or the
// 16-bit pattern zero-extended) and look up with a permute, which reads only the low bits of an index:
// the nibbles need no masking. Blocks hold an even number of elements, so each starts on a byte.

template <typename T>
void decode_scalar(const uint8_t* p, int64_t len, const T* table, T* out) {
  int64_t i = 0;
  for (; i + 1 < len; i += 2) {
    const uint8_t b = p[i >> 1];
    out[i] = table[b >> 4];
    out[i + 1] = table[b & 15];
  }
  if (i < len) out[i] = table[p[i >> 1] >> 4];
}

// Elements [first, first + len) of the output from the table in 32-bit lanes: the end of a block that is
// shorter than a SIMD step.
template <bool F32>
void decode_tail(const uint8_t* p, int64_t len, const uint32_t* lanes, void* dst, int64_t first) {
  if (F32) {
    float t[16];
    std::memcpy(t, lanes, sizeof t);
    decode_scalar(p, len, t, static_cast<float*>(dst) + first);
  } else {
    uint16_t t[16];
    for (int c = 0; c < 16; ++c) t[c] = static_cast<uint16_t>(lanes[c]);
    decode_scalar(p, len, t, static_cast<uint16_t*>(dst) + first);
  }
}

// The 16 table entries of a block in the 16-bit output dtypes.
void table16(float absmax, DType dt, uint16_t* t) {
  for (int c = 0; c < 16; ++c) t[c] = dt == DType::BF16 ? f32_to_bf16(kNF4[c] * absmax) : f32_to_f16(kNF4[c] * absmax);
}

void blocks_generic(const NF4View& q, int64_t n, int64_t b0, int64_t b1, void* dst, DType dt) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t first = b * q.block_size, len = std::min(q.block_size, n - first);
    const uint8_t* p = q.packed + (first >> 1);
    if (dt == DType::F32) {
      float t[16];
      for (int c = 0; c < 16; ++c) t[c] = kNF4[c] * q.absmax[b];
      decode_scalar(p, len, t, static_cast<float*>(dst) + first);
    } else {
      uint16_t t[16];
      table16(q.absmax[b], dt, t);
      decode_scalar(p, len, t, static_cast<uint16_t*>(dst) + first);
    }
  }
}

// f32_to_bf16 on eight lanes: round to nearest even, NaN kept quiet.
__attribute__((target("avx2"))) __m256i bf16_lanes_avx2(__m256 v) {
  const __m256i u = _mm256_castps_si256(v), hi = _mm256_srli_epi32(u, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

// Eight table entries for eight nibble indices; bit 3 of an index picks the upper half of the table.
__attribute__((target("avx2"))) __m256i lookup_avx2(__m256i lo, __m256i hi, __m256i idx) {
  const __m256 a = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(lo, idx));
  const __m256 b = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(hi, idx));
  return _mm256_castps_si256(_mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
}

template <bool F32>
__attribute__((target("avx2"))) void blocks_avx2(const NF4View& q, int64_t n, int64_t b0, int64_t b1, void* dst,
                                                 DType dt) {
  const __m256 nf4_lo = _mm256_loadu_ps(kNF4), nf4_hi = _mm256_loadu_ps(kNF4 + 8);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t first = b * q.block_size, len = std::min(q.block_size, n - first);
    const uint8_t* p = q.packed + (first >> 1);
    const __m256 s = _mm256_set1_ps(q.absmax[b]);
    alignas(32) uint32_t t[16];
    if (F32) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_castps_si256(_mm256_mul_ps(nf4_lo, s)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), _mm256_castps_si256(_mm256_mul_ps(nf4_hi, s)));
    } else if (dt == DType::BF16) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), bf16_lanes_avx2(_mm256_mul_ps(nf4_lo, s)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), bf16_lanes_avx2(_mm256_mul_ps(nf4_hi, s)));
    } else {
      uint16_t t16[16];
      table16(q.absmax[b], dt, t16);
      for (int c = 0; c < 16; ++c) t[c] = t16[c];
    }
    const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
    const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(t + 8));
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + (i >> 1)));
      const __m128i nibbles = _mm_unpacklo_epi8(_mm_srli_epi16(bytes, 4), bytes);  // hi0 lo0 hi1 lo1 ...
      const __m256i v0 = lookup_avx2(lo, hi, _mm256_cvtepu8_epi32(nibbles));
      const __m256i v1 = lookup_avx2(lo, hi, _mm256_cvtepu8_epi32(_mm_srli_si128(nibbles, 8)));
      if (F32) {
        float* out = static_cast<float*>(dst) + first + i;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v0);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), v1);
      } else {
        // packus interleaves the 128-bit halves of v0 and v1; the permute puts them back in order.
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(v0, v1), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(dst) + first + i), packed);
      }
    }
    if (i < len) decode_tail<F32>(p + (i >> 1), len - i, t, dst, first + i);
  }
}

// GCC 12 warns about its own AVX-512 headers here (their "undefined vector" idiom, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

__attribute__((target("avx512f"))) __m512i bf16_lanes_avx512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v), hi = _mm512_srli_epi32(u, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  return _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), hi, _mm512_set1_epi32(0x40));
}

template <bool F32>
__attribute__((target("avx512f"))) void blocks_avx512(const NF4View& q, int64_t n, int64_t b0, int64_t b1,
                                                     void* dst, DType dt) {
  const __m512 nf4 = _mm512_loadu_ps(kNF4);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t first = b * q.block_size, len = std::min(q.block_size, n - first);
    const uint8_t* p = q.packed + (first >> 1);
    __m512i table;
    if (F32) {
      table = _mm512_castps_si512(_mm512_mul_ps(nf4, _mm512_set1_ps(q.absmax[b])));
    } else if (dt == DType::BF16) {
      table = bf16_lanes_avx512(_mm512_mul_ps(nf4, _mm512_set1_ps(q.absmax[b])));
    } else {
      uint16_t t16[16];
      table16(q.absmax[b], dt, t16);
      table = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t16)));
    }
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + (i >> 1)));
      const __m128i high = _mm_srli_epi16(bytes, 4);
      const __m512i v0 = _mm512_permutexvar_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, bytes)), table);
      const __m512i v1 = _mm512_permutexvar_epi32(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(high, bytes)), table);
      if (F32) {
        float* out = static_cast<float*>(dst) + first + i;
        _mm512_storeu_si512(out, v0);
        _mm512_storeu_si512(out + 16, v1);
      } else {
        uint16_t* out = static_cast<uint16_t*>(dst) + first + i;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(v0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm512_cvtepi32_epi16(v1));
      }
    }
    if (i == len) continue;
    alignas(64) uint32_t t[16];
    _mm512_store_si512(t, table);
    decode_tail<F32>(p + (i >> 1), len - i, t, dst, first + i);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

using BlocksFn = void (*)(const NF4View&, int64_t, int64_t, int64_t, void*, DType);

// The decoder follows the GEMM kernel choice, so pinning a kernel (as the tests do) pins this too.
BlocksFn decoder(DType dt) {
  const std::string k = gemm_kernel();
  const bool f32 = dt == DType::F32;
  if (k == "avx512") return f32 ? blocks_avx512<true> : blocks_avx512<false>;
  if (k == "avx2") return f32 ? blocks_avx2<true> : blocks_avx2<false>;
  return blocks_generic;
}

}  // namespace

void nf4_quantize(const void* src, DType dt, int64_t n, int64_t block_size, uint8_t* packed, float* absmax) {
  const int64_t blocks = (n + block_size - 1) / block_size;
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> v(static_cast<size_t>(block_size + 1));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * block_size, len = std::min(block_size, n - first);
      load_f32(elem_ptr(src, dt, first), dt, len, v.data());
      absmax[b] = block_absmax(v.data(), len, len < block_size);
      // The reciprocal, then a multiply: bitsandbytes scales by 1.0f/absmax, which can round
      // differently from dividing by absmax.
      const float inv = 1.0f / absmax[b];
      v[len] = 0.f;  // an odd tail pads with a zero element, as bitsandbytes loads past the end
      for (int64_t i = 0; i < len; i += 2) {
        uint8_t hi = nf4_code(kNF4Mid, v[i] * inv), lo = nf4_code(kNF4Mid, v[i + 1] * inv);
        packed[(first + i) >> 1] = static_cast<uint8_t>(hi << 4 | lo);
      }
    }
  });
}

void nf4_dequantize(const NF4View& q, int64_t n, void* dst, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw Error("ERR_DTYPE", std::string("NF4 dequantizes to a float dtype, not ") + dtype_name(dt));
  const BlocksFn fn = decoder(dt);
  parallel_for((n + q.block_size - 1) / q.block_size,
               [&](int64_t b0, int64_t b1, int) { fn(q, n, b0, b1, dst, dt); });
}

void absmax_quantize(const float* absmax, int64_t n, uint8_t* codes, float* scales, float* offset) {
  // offset = absmax.mean(). torch's CUDA mean multiplies the float32 sum by float32(1/n); that sum comes
  // from a parallel float reduction whose order depends on the launch, so here it is the exact sum
  // (double, index order) rounded once: deterministic, and what the float reduction approximates.
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += absmax[i];
  const float off = n ? static_cast<float>(sum) * (1.0f / static_cast<float>(n)) : 0.f;
  *offset = off;
  const float* code = code8().data();
  const int64_t blocks = (n + 255) / 256;
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    float d[256];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * 256, len = std::min<int64_t>(256, n - first);
      for (int64_t i = 0; i < len; ++i) d[i] = absmax[first + i] - off;
      scales[b] = block_absmax(d, len, len < 256);
      const float inv = 1.0f / scales[b];
      for (int64_t i = 0; i < len; ++i) codes[first + i] = quantize8(code, d[i] * inv);
    }
  });
}

void absmax_dequantize(const NestedAbsmax& q, float* absmax) {
  const float* code = code8().data();
  parallel_for(q.n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) absmax[i] = code[q.codes[i]] * q.scales[i / 256] + q.offset;
  });
}

}  // namespace lorakit::cpu
