// Fused softmax cross-entropy over the vocabulary (csrc/cpu/loss.cc). It never stores probabilities: with
// want_grad the logits are overwritten in place by d(loss)/d(logits) * grad_scale.
//
//   lse_r = log sum_v exp(z_rv),   loss_r = lse_r - z_r,y_r,   dz_rv = (softmax_rv - [v == y_r]) * grad_scale
// Rows whose label equals ignore_index add nothing and get a zero gradient. grad_scale is divided by the
// number of counted rows (the gradient of the mean loss); the return value is the summed loss in double
// and *count the number of counted rows.
//
// Three kernels on the stream and one wait: a single block counts the rows and finds the first bad
// label; one block per row computes lse with an online max/sum (one read of the row for the statistics,
// one more for the gradient), writes its loss into scratch and, with want_grad, the gradient; a single
// block sums the row losses in a fixed order. A bad label stops the row kernel before it writes, and
// the host throws the CPU's error once it has read the status back.
#include <cmath>
#include <string>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kRowThreads = 512;
constexpr int kReduceThreads = 1024;

struct Status {
  int64_t counted;
  int64_t bad_row;  // the first counted row whose label is outside [0, vocab), or -1
  int64_t bad_label;
  float scale;  // grad_scale / counted, or grad_scale when nothing is counted
  double loss;
};

__global__ void ce_check_kernel(const int64_t* labels, int64_t rows, int64_t vocab, int64_t ignore_index,
                                float grad_scale, Status* st) {
  __shared__ unsigned long long counted, first;
  if (threadIdx.x == 0) {
    counted = 0;
    first = ~0ull;
  }
  __syncthreads();
  unsigned long long mine = 0, mine_first = ~0ull;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t label = labels[r];
    if (label == ignore_index) continue;
    ++mine;
    if (mine_first == ~0ull && (label < 0 || label >= vocab)) mine_first = static_cast<unsigned long long>(r);
  }
  atomicAdd(&counted, mine);
  atomicMin(&first, mine_first);
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t n = static_cast<int64_t>(counted);
    st->counted = n;
    st->bad_row = first == ~0ull ? -1 : static_cast<int64_t>(first);
    st->bad_label = first == ~0ull ? 0 : labels[first];
    st->scale = n > 0 ? grad_scale / static_cast<float>(n) : grad_scale;
  }
}

// Adds logit z to a thread's running max m and sum s = sum exp(z_i - m), rescaling s when the max grows.
// Special values end up as in the CPU's sum of exp(z - max): the new max's own term exp(z - z) is 1, or
// NaN for +inf; NaN logits poison s; -inf adds 0 unless the whole row is -inf, which the caller handles.
__device__ inline void online_add(float z, float& m, double& s) {
  if (z > m) {
    s = s * exp(static_cast<double>(m) - z) + (z == INFINITY ? nan("") : 1.0);
    m = z;
  } else if (z != -INFINITY) {
    s += exp(static_cast<double>(z) - m);
  }
}

template <int V>
__global__ void ce_rows_kernel(float* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t ignore_index,
                               bool want_grad, const Status* st, double* row_loss) {
  if (st->bad_row >= 0) return;
  const float scale = st->scale;
  const int64_t chunks = vocab / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* z = logits + r * vocab;
    const int64_t label = labels[r];
    if (label == ignore_index) {
      if (threadIdx.x == 0) row_loss[r] = 0.0;
      if (want_grad)
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) store_chunk<V>(z + c * V, Chunk<float, V>{});
      continue;
    }
    const float zl = z[label];  // read before the reductions' barriers; after them the row is overwritten
    float m = -INFINITY;
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const Chunk<float, V> zv = load_chunk<V>(z + c * V);
      for (int j = 0; j < V; ++j) online_add(zv.v[j], m, s);
    }
    const float mx = block_max(m);
    double sum = block_sum_d(m == -INFINITY ? s : s * exp(static_cast<double>(m) - mx));
    if (mx == -INFINITY) sum = nan("");  // every term is exp(-inf - -inf) on the CPU
    const double lse = mx + log(sum);
    if (threadIdx.x == 0) row_loss[r] = lse - zl;
    if (!want_grad) continue;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      Chunk<float, V> g = load_chunk<V>(z + c * V);
      for (int j = 0; j < V; ++j) {
        g.v[j] = mul_rn(static_cast<float>(exp(static_cast<double>(g.v[j]) - lse)), scale);
        if (c * V + j == label) g.v[j] -= scale;
      }
      store_chunk<V>(z + c * V, g);
    }
  }
}

__global__ void ce_sum_kernel(const double* row_loss, int64_t rows, Status* st) {
  if (st->bad_row >= 0) return;
  double s = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  s = block_sum_d(s);
  if (threadIdx.x == 0) st->loss = s;
}

}  // namespace

double cross_entropy(float* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t ignore_index, float grad_scale,
                     bool want_grad, int64_t* count) {
  if (rows <= 0) {
    *count = 0;
    return 0.0;
  }
  constexpr size_t kStatusBytes = 256;  // keeps the row losses aligned
  auto* base = static_cast<char*>(scratch(kScratchReduce, kStatusBytes + sizeof(double) * rows));
  auto* st = reinterpret_cast<Status*>(base);
  auto* row_loss = reinterpret_cast<double*>(base + kStatusBytes);

  ce_check_kernel<<<1, kReduceThreads, 0, stream()>>>(labels, rows, vocab, ignore_index, grad_scale, st);
  LK_LAUNCHED("cross_entropy check");
  const unsigned grid = grid_for(rows, 1);
  if (vocab % 4 == 0 && is_aligned16(logits))
    ce_rows_kernel<4><<<grid, kRowThreads, 0, stream()>>>(logits, labels, rows, vocab, ignore_index, want_grad, st, row_loss);
  else
    ce_rows_kernel<1><<<grid, kRowThreads, 0, stream()>>>(logits, labels, rows, vocab, ignore_index, want_grad, st, row_loss);
  LK_LAUNCHED("cross_entropy rows");
  ce_sum_kernel<<<1, kReduceThreads, 0, stream()>>>(row_loss, rows, st);
  LK_LAUNCHED("cross_entropy sum");

  Status h;
  LK_CHECK(cudaMemcpyAsync(&h, st, sizeof(Status), cudaMemcpyDeviceToHost, stream()));
  LK_CHECK(cudaStreamSynchronize(stream()));
  if (h.bad_row >= 0)
    throw Error("ERR_OUT_OF_RANGE", "cross_entropy: label " + std::to_string(h.bad_label) + " at row " + std::to_string(h.bad_row) +
                                        " is outside [0, " + std::to_string(vocab) + ") and is not the ignore index " +
                                        std::to_string(ignore_index));
  *count = h.counted;
  return h.loss;
}

}  // namespace lorakit::gpu
