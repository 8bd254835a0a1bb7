// Scalar conversions between float32 and the 16-bit float formats, and a bulk "load a run as float32"
// used by every kernel that accepts mixed input dtypes.
#pragma once
#include <cstdint>
#include <cstring>

#include "../ops.h"

namespace lorakit::cpu {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest, ties to even; NaN stays NaN (quiet) rather than rounding into infinity.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    u = sign | ((112u - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest, ties to even, with subnormals and overflow to infinity as IEEE specifies.
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                                               // below 2^-14: subnormal
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);           // below 2^-25: zero
    uint32_t e = abs >> 23, mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14 + (113 - e) ... places the value at 2^-24 units
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t q = abs - 0x38000000u;  // rebias exponent 127 -> 15
  q = (q + 0xfffu + ((q >> 13) & 1u)) >> 13;
  return static_cast<uint16_t>(sign | q);
}

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
