// Fused softmax cross-entropy over the vocabulary. It never stores probabilities: with want_grad the
// logits are overwritten in place by d(loss)/d(logits) * grad_scale.
//
//   lse_r = log sum_v exp(z_rv),   loss_r = lse_r - z_r,y_r,   dz_rv = (softmax_rv - [v == y_r]) * grad_scale
// Rows whose label equals ignore_index add nothing and get a zero gradient. grad_scale is divided by the
// number of counted rows, so the gradient is that of the mean loss (transformers' reduction). Returns
// the summed loss (double, summed in row order) and the number of counted rows.
#include <cmath>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace lorakit::cpu {

double cross_entropy(float* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t ignore_index, float grad_scale,
                     bool want_grad, int64_t* count) {
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignore_index) continue;
    ++counted;
    if (labels[r] < 0 || labels[r] >= vocab)
      throw Error("ERR_OUT_OF_RANGE", "cross_entropy: label " + std::to_string(labels[r]) + " at row " + std::to_string(r) +
                                          " is outside [0, " + std::to_string(vocab) + ") and is not the ignore index " +
                                          std::to_string(ignore_index));
  }
  if (counted > 0) grad_scale /= static_cast<float>(counted);
  std::vector<double> loss(static_cast<size_t>(rows), 0.0);
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float* z = logits + r * vocab;
      const bool ignored = labels[r] == ignore_index;
      float mx = -INFINITY;
      for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, z[v]);
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(z[v]) - mx);
      const double lse = mx + std::log(sum);
      if (!ignored) loss[r] = lse - z[labels[r]];
      if (!want_grad) continue;
      if (ignored) {
        for (int64_t v = 0; v < vocab; ++v) z[v] = 0.f;
        continue;
      }
      for (int64_t v = 0; v < vocab; ++v) z[v] = static_cast<float>(std::exp(static_cast<double>(z[v]) - lse)) * grad_scale;
      z[labels[r]] -= grad_scale;
    }
  });
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += loss[r];
  *count = counted;
  return total;
}

}  // namespace lorakit::cpu
