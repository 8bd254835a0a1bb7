// bitsandbytes' 8-bit blockwise quantizer of a value against a sorted 256-entry code (the signed dynamic
// map of double quantization). Shared by both backends (the GPU through nf4.cu), so their codes agree bit
// for bit.
#pragma once
#include <cstdint>

#include "philox.h"  // LK_HD

namespace lorakit {

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
