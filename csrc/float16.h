// Scalar conversions between float32 and the two 16-bit float formats, on raw bits, for both backends:
// csrc/cpu calls them on the host, csrc/gpu in kernels (LK_HD). Integer arithmetic only, so every
// compiler gives the same bits; the GPU keeps these rather than the hardware conversions, which
// canonicalise NaNs differently on each vendor.
#pragma once
#include <cstdint>
#include <cstring>

#include "hd.h"

namespace lorakit::bits {

// The bits of `from` read as a To of the same size (memcpy: defined behaviour, and free once inlined).
template <typename To, typename From>
LK_HD inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

LK_HD inline float bf16_to_f32(uint16_t h) { return bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even; NaN stays NaN (quiet) rather than rounding into infinity.
LK_HD inline uint16_t f32_to_bf16(float f) {
  uint32_t u = bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Exact (every float16 is a float32); a NaN keeps its payload.
LK_HD inline float f16_to_f32(uint16_t h) {
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
  return bit_cast<float>(u);
}

// Round to nearest, ties to even, with subnormals and overflow to infinity as IEEE specifies; a NaN
// becomes sign | 0x7e00.
LK_HD inline uint16_t f32_to_f16(float f) {
  const uint32_t u = bit_cast<uint32_t>(f);
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

}  // namespace lorakit::bits
