// NF4 quantization, bit-compatible with bitsandbytes (quantize_4bit / dequantize_4bit, quant_type="nf4"),
// and the double quantization of its absmax (compress_statistics=True).
//
//   absmax[b] = max |x| over block b;   code(x) = nearest NF4 value to x * (1/absmax[b])
//   byte j = code(2j) << 4 | code(2j+1);  dequant(e) = NF4[code(e)] * absmax[e / block]
// Nearest is decided by the midpoints between codes with a strict '>', so ties go to the lower code;
// a NaN (an all-zero block scales by 1/0) takes code 0, as in bitsandbytes' decision tree.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops.h"
#include "dtype.h"
#include "parallel.h"

namespace lorakit::cpu {

const float kNF4[16] = {-1.0f,
                        -0.6961928009986877f,
                        -0.5250730514526367f,
                        -0.39491748809814453f,
                        -0.28444138169288635f,
                        -0.18477343022823334f,
                        -0.09105003625154495f,
                        0.0f,
                        0.07958029955625534f,
                        0.16093020141124725f,
                        0.24611230194568634f,
                        0.33791524171829224f,
                        0.44070982933044434f,
                        0.5626170039176941f,
                        0.7229568362236023f,
                        1.0f};

namespace {

// The decision thresholds of bitsandbytes' dQuantizeNF4, in ascending order.
const float kNF4Mid[15] = {-0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,
                           -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
                           -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                           0.2035212516784668f,   0.2920137718319893f,   0.3893125355243683f,
                           0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};

// Code = number of thresholds strictly below x; NaN compares false everywhere and gets 0.
inline uint8_t nf4_code(float x) {
  uint8_t c = 0;
  for (float t : kNF4Mid) c += x > t;
  return c;
}

// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), built with the same
// float32 arithmetic torch uses (linspace, midpoint means, scaling) and sorted.
std::vector<float> dynamic_map() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = (1 << i) + 1;
    // torch.linspace(0.1, 1, items) in float32: step in float, the first half counted from the start and
    // the second half from the end.
    std::vector<float> b(items);
    const float start = 0.1f, end = 1.0f, step = (end - start) / static_cast<float>(items - 1);
    const int half = items / 2;
    for (int k = 0; k < items; ++k)
      b[k] = k < half ? start + step * static_cast<float>(k) : end - step * static_cast<float>(items - k - 1);
    const float scale = static_cast<float>(std::pow(10.0, -6 + i));
    for (int k = 0; k + 1 < items; ++k) {
      float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      data.push_back(-scale * mean);
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

// bitsandbytes dQuantize (deterministic): binary search over the 256 sorted codes, then the nearer of
// the two neighbours by midpoint.
uint8_t quantize8(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

void store_f32(float v, void* dst, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: static_cast<float*>(dst)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(v); break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(v); break;
    default: throw Error("ERR_DTYPE", std::string("NF4 dequantizes to a float dtype, not ") + dtype_name(dt));
  }
}

}  // namespace

void nf4_quantize(const void* src, DType dt, int64_t n, int64_t block_size, uint8_t* packed, float* absmax) {
  const int64_t blocks = (n + block_size - 1) / block_size;
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> v(static_cast<size_t>(block_size + 1));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * block_size, len = std::min(block_size, n - first);
      load_f32(elem_ptr(src, dt, first), dt, len, v.data());
      float amax = 0.f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(v[i]));
      absmax[b] = amax;
      const float inv = 1.0f / amax;
      v[len] = 0.f;  // an odd tail pads with a zero element, as bitsandbytes loads past the end
      for (int64_t i = 0; i < len; i += 2) {
        uint8_t hi = nf4_code(v[i] * inv), lo = nf4_code(v[i + 1] * inv);
        packed[(first + i) >> 1] = static_cast<uint8_t>(hi << 4 | lo);
      }
    }
  });
}

void nf4_dequantize(const NF4View& q, int64_t n, void* dst, DType dt) {
  if (dt == DType::F32) {
    parallel_for(n, [&](int64_t b, int64_t e, int) { load_nf4(q, b, e - b, static_cast<float*>(dst) + b); });
    return;
  }
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    float buf[256];
    for (int64_t s = b; s < e; s += 256) {
      int64_t len = std::min<int64_t>(256, e - s);
      load_nf4(q, s, len, buf);
      for (int64_t i = 0; i < len; ++i) store_f32(buf[i], dst, dt, s + i);
    }
  });
}

void absmax_quantize(const float* absmax, int64_t n, uint8_t* codes, float* scales, float* offset) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += absmax[i];
  const float off = n ? static_cast<float>(sum / static_cast<double>(n)) : 0.f;
  *offset = off;
  const float* code = code8().data();
  const int64_t blocks = (n + 255) / 256;
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * 256, len = std::min<int64_t>(256, n - first);
      float amax = 0.f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(absmax[first + i] - off));
      scales[b] = amax;
      const float inv = 1.0f / amax;
      for (int64_t i = 0; i < len; ++i) codes[first + i] = quantize8(code, (absmax[first + i] - off) * inv);
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
