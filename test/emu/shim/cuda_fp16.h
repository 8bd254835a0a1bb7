// float16 for the emulator: the conversion instructions' results, IEEE round-to-nearest-even through the
// compiler's own _Float16 (an implementation independent of csrc/cpu/dtype.h, which is what the parity
// suite compares against). NaNs come out as the hardware makes them, not as csrc/cpu writes them:
// NVIDIA's cvt gives the canonical NaN (0x7fff, 0x7fffffff), CDNA's keeps sign and payload and sets the
// quiet bit; the 64-lane emulation (LORAKIT_EMU_WARP=64) plays CDNA.
#pragma once
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

struct __half {
  uint16_t x;
};
typedef __half half;

inline __half __ushort_as_half(unsigned short h) { return {h}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }

inline float __half2float(__half h) {
  if ((h.x & 0x7c00u) == 0x7c00u && (h.x & 0x3ffu)) {
    const uint32_t u = ::emu::warp_size() == 64 ? ((h.x & 0x8000u) << 16) | 0x7fc00000u | ((h.x & 0x3ffu) << 13)
                                                : 0x7fffffffu;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  _Float16 v;
  std::memcpy(&v, &h.x, 2);
  return static_cast<float>(v);
}

inline __half __float2half_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return {static_cast<uint16_t>(::emu::warp_size() == 64 ? ((u >> 16) & 0x8000u) | 0x7e00u | ((u >> 13) & 0x3ffu)
                                                           : 0x7fffu)};
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.x, &v, 2);
  return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
