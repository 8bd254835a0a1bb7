// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a keyed bijection
// of a 128-bit counter. Element i of a draw uses counter (offset + i), so every random number is a pure
// function of (seed, offset, i): the same on every machine and for every thread count, and dropout
// masks can be regenerated in the backward pass instead of stored.
//
// Both backends include this one definition (the GPU through csrc/gpu/common.cuh), so their streams and
// dropout masks agree bit for bit.
#pragma once
#include <cstdint>

#include "hd.h"

namespace lorakit {

struct PhiloxOut {
  uint32_t v[4];
};

LK_HD inline PhiloxOut philox(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0, p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// 24 random bits as a float in [0, 1): exact in float32, so never rounds up to 1.
LK_HD inline float unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

// Dropout keeps element i when its 16-bit uniform draw is at least p (p resolved to 1/65536). One
// Philox call gives eight draws: element i uses half-word i % 8 of counter i / 8.
LK_HD inline uint32_t dropout_threshold(float p) { return static_cast<uint32_t>(p * 65536.0f + 0.5f); }
LK_HD inline bool dropout_keep(uint64_t seed, uint64_t i, uint32_t threshold) {
  const uint32_t word = philox(seed, i >> 3).v[(i >> 1) & 3];
  return ((i & 1) ? (word >> 16) : (word & 0xffffu)) >= threshold;
}

}  // namespace lorakit
