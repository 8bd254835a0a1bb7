// Token embedding lookup, and its backward pass as a deterministic scatter-add.
//
//   out[t, :] = table[ids[t], :]           dtable[ids[t], :] += dout[t, :]
// The backward splits the embedding dimension between threads and walks tokens in order, so repeated
// ids add up in the same order for any thread count (no atomics).
#include <cstring>

#include "../ops.h"
#include "parallel.h"

namespace lorakit::cpu {

void embedding_forward(const int64_t* ids, const float* table, float* out, int64_t n, int64_t dim, int64_t vocab) {
  for (int64_t t = 0; t < n; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("ERR_OUT_OF_RANGE", "embedding: token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                                          " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) std::memcpy(out + t * dim, table + ids[t] * dim, sizeof(float) * dim);
  });
}

void embedding_backward(const int64_t* ids, const float* dout, float* dtable, int64_t n, int64_t dim, int64_t vocab) {
  for (int64_t t = 0; t < n; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("ERR_OUT_OF_RANGE", "embedding backward: token id " + std::to_string(ids[t]) + " is outside the vocabulary");
  parallel_for(dim, [&](int64_t c0, int64_t c1, int) {
    for (int64_t t = 0; t < n; ++t) {
      float* row = dtable + ids[t] * dim;
      const float* g = dout + t * dim;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  });
}

}  // namespace lorakit::cpu
