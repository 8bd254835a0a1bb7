// The 16-bit float conversions (../float16.h) under the CPU backend's names, and a bulk "load a run as float32"
// used by every kernel that accepts mixed input dtypes.
#pragma once
#include <cstdint>
#include <cstring>

#include "../float16.h"
#include "../ops.h"

namespace lorakit::cpu {

using bits::bf16_to_f32;
using bits::f16_to_f32;
using bits::f32_to_bf16;
using bits::f32_to_f16;

// dst[i] = float(src[i]) for a contiguous run of n elements of a float dtype.
inline void load_f32(const void* src, DType dt, int64_t n, float* dst) {
  switch (dt) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      break;
    }
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      break;
    }
    default:
      throw Error("ERR_DTYPE", std::string("expected a float dtype, got ") + dtype_name(dt));
  }
}

// Element address of a row-major buffer of any dtype.
inline const void* elem_ptr(const void* base, DType dt, int64_t index) {
  return static_cast<const char*>(base) + index * static_cast<int64_t>(dtype_size(dt));
}

// NF4 code book (bitsandbytes nf4_dequantization_lut), index 7 is exactly zero.
extern const float kNF4[16];

// dst[i] = NF4 value of element (first + i) of the packed tensor.
inline void load_nf4(const NF4View& q, int64_t first, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t e = first + i;
    uint8_t byte = q.packed[e >> 1];
    uint8_t code = (e & 1) ? (byte & 0x0f) : (byte >> 4);
    dst[i] = kNF4[code] * q.absmax[e / q.block_size];
  }
}

}  // namespace lorakit::cpu
