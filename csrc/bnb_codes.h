// bitsandbytes' code books and quantizers, shared by both backends (csrc/cpu/nf4.cc, csrc/gpu/nf4.cu) so
// their codes agree bit for bit: the NF4 table and decision thresholds, the NF4 code of a value, and the
// 8-bit quantizer of double quantization against the signed dynamic map.
#pragma once
#include <cstdint>

#include "philox.h"  // LK_HD

// The NF4 code book (bitsandbytes' nf4_dequantization_lut); index 7 is exactly zero. A list of literals,
// so that each backend puts it in its own memory (host constants, or __constant__ on a GPU). The one copy:
// the addon exports it (nf4CodeBook, csrc/napi/addon.cc) for lib/nf4's NF4_CODE.
#define LORAKIT_NF4_CODES                                                                                \
  -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,        \
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,     \
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,              \
      0.7229568362236023f, 1.0f

// The decision thresholds of bitsandbytes' dQuantizeNF4, in ascending order, as the same float literals:
// each decimal is rounded once to float32, as the CUDA compiler rounds them. (They are the float64
// midpoints of neighbouring NF4 values; for the 1st, 9th, 13th and 15th that midpoint is an exact
// float32 tie, so rounding through double, e.g. numpy.float32 of the Python value, lands one step off.)
#define LORAKIT_NF4_THRESHOLDS                                                                           \
  -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,              \
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,         \
      0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,                 \
      0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f

namespace lorakit {

// Nearest NF4 code, ties low: the number of thresholds strictly below x. NaN compares false everywhere
// and gets code 0.
LK_HD inline uint8_t nf4_code(const float (&thresholds)[15], float x) {
  uint8_t c = 0;
  for (int i = 0; i < 15; ++i) c += x > thresholds[i];
  return c;
}

// bitsandbytes dQuantize (deterministic): binary search over the 256 sorted codes, then the nearer of
// the two neighbours by midpoint. The search always ends on an even pivot and a tie keeps the pivot, so
// a value exactly between two codes takes the even one of the two.
LK_HD inline uint8_t quantize8(const float* code, float x) {
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
    const float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

}  // namespace lorakit
