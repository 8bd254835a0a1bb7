// Token embedding lookup, and its backward pass as a deterministic scatter-add (csrc/cpu/embedding.cc).
//
//   out[t, :] = table[ids[t], :]           dtable[ids[t], :] += dout[t, :]
// Ids are checked first, as on the CPU: a kernel finds the first id outside [0, vocab), the host waits for
// it and throws the CPU's error before anything is written.
//
// The backward pass keeps the CPU's order of additions exactly: every dtable element receives its
// tokens' gradients one after another in token order, so the result is bit-identical to the CPU's. A
// block owns a slice of columns and the vocabulary rows of one residue class id % buckets; it walks
// all tokens in order and adds those whose row it owns. Rows and columns are split between blocks with
// no overlap, so there are no atomics, and the buckets give parallelism beyond the embedding width.
// (Sorting the ids would give more for very skewed batches, at the cost of a sort per step.)
#include <string>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kCheckThreads = 1024;
constexpr int kBackwardThreads = 128;
constexpr int kIdChunk = 1024;  // ids staged in shared memory at a time by the backward pass

struct BadId {
  int64_t position;  // -1 when every id is in range
  int64_t id;
};

// One block: each thread scans a strided share of the ids, the block keeps the smallest bad position.
__global__ void check_ids_kernel(const int64_t* ids, int64_t n, int64_t vocab, BadId* out) {
  __shared__ unsigned long long first;
  if (threadIdx.x == 0) first = ~0ull;
  __syncthreads();
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    if (ids[t] < 0 || ids[t] >= vocab) {
      atomicMin(&first, static_cast<unsigned long long>(t));
      break;  // later positions of this thread cannot be smaller
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    out->position = first == ~0ull ? -1 : static_cast<int64_t>(first);
    out->id = first == ~0ull ? 0 : ids[first];
  }
}

BadId first_bad_id(const int64_t* ids, int64_t n, int64_t vocab) {
  auto* dev = static_cast<BadId*>(scratch(kScratchReduce, sizeof(BadId)));
  check_ids_kernel<<<1, kCheckThreads, 0, stream()>>>(ids, n, vocab, dev);
  LK_LAUNCHED("embedding check_ids");
  BadId bad;
  LK_CHECK(cudaMemcpyAsync(&bad, dev, sizeof(BadId), cudaMemcpyDeviceToHost, stream()));
  LK_CHECK(cudaStreamSynchronize(stream()));
  return bad;
}

// One block per token row; V = 4 moves 16 bytes per access when dim and both pointers allow it.
template <int V>
__global__ void embedding_forward_kernel(const int64_t* ids, const float* table, float* out, int64_t n, int64_t dim) {
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    const float* src = table + ids[t] * dim;
    float* dst = out + t * dim;
    for (int64_t c = threadIdx.x; c < dim / V; c += blockDim.x) store_chunk<V>(dst + c * V, load_chunk<V>(src + c * V));
  }
}

// Block (x, y) owns columns [x * blockDim, (x + 1) * blockDim) of the rows with id % gridDim.y == y.
__global__ void embedding_backward_kernel(const int64_t* ids, const float* dout, float* dtable, int64_t n, int64_t dim) {
  __shared__ int64_t mine[kIdChunk];  // the chunk's ids, or -1 for rows another bucket owns
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t t0 = 0; t0 < n; t0 += kIdChunk) {
    const int count = static_cast<int>(n - t0 < kIdChunk ? n - t0 : kIdChunk);
    __syncthreads();  // the previous chunk is no longer read
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
      const int64_t id = ids[t0 + j];
      mine[j] = id % gridDim.y == blockIdx.y ? id : -1;
    }
    __syncthreads();
    if (col >= dim) continue;
    for (int j = 0; j < count; ++j)
      if (mine[j] >= 0) dtable[mine[j] * dim + col] += dout[(t0 + j) * dim + col];
  }
}

}  // namespace

void embedding_forward(const int64_t* ids, const float* table, float* out, int64_t n, int64_t dim, int64_t vocab) {
  if (n <= 0) return;
  const BadId bad = first_bad_id(ids, n, vocab);
  if (bad.position >= 0)
    throw Error("ERR_OUT_OF_RANGE", "embedding: token id " + std::to_string(bad.id) + " at position " +
                                        std::to_string(bad.position) + " is outside the vocabulary [0, " +
                                        std::to_string(vocab) + ")");
  if (dim <= 0) return;
  const unsigned grid = grid_for(n, 1);
  if (dim % 4 == 0 && is_aligned16(table) && is_aligned16(out))
    embedding_forward_kernel<4><<<grid, kThreads, 0, stream()>>>(ids, table, out, n, dim);
  else embedding_forward_kernel<1><<<grid, kThreads, 0, stream()>>>(ids, table, out, n, dim);
  LK_LAUNCHED("embedding_forward");
}

void embedding_backward(const int64_t* ids, const float* dout, float* dtable, int64_t n, int64_t dim, int64_t vocab) {
  if (n <= 0) return;
  const BadId bad = first_bad_id(ids, n, vocab);
  if (bad.position >= 0)
    throw Error("ERR_OUT_OF_RANGE",
                "embedding backward: token id " + std::to_string(bad.id) + " is outside the vocabulary");
  if (dim <= 0) return;
  // Enough buckets for about four blocks per multiprocessor; any count gives the same bits.
  const int64_t col_blocks = (dim + kBackwardThreads - 1) / kBackwardThreads;
  int64_t buckets = (4LL * sm_count() + col_blocks - 1) / col_blocks;
  buckets = buckets < 1 ? 1 : buckets > vocab ? vocab : buckets > 65535 ? 65535 : buckets;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(buckets));
  embedding_backward_kernel<<<grid, kBackwardThreads, 0, stream()>>>(ids, dout, dtable, n, dim);
  LK_LAUNCHED("embedding_backward");
}

}  // namespace lorakit::gpu
