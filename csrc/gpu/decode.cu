// The generation ops (#13) on the GPU: writes into the paged KV cache, attention of new tokens over it,
// and many LoRA adapters in one batch. The pool layout and the contracts are in ../ops.h; csrc/cpu/decode.cc
// is the reference.
//
// Slots, sequence ids, context lengths and block ids live in device memory, and the host does not check
// them: that would cost a device-to-host copy and a synchronisation on every decode step. Every kernel here
// keeps a bad value inside its buffers instead, so that it gives a wrong result but never reads or writes
// out of bounds: kv_write skips a row whose slot is outside [0, pool_slots); paged_attention clamps seq to
// [0, num_seqs), ctx to [1, max_blocks * block_size] and every block id to [0, pool_slots / block_size).
#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

void check_pool_dtype(DType dt, const char* op) {
  if (dt != DType::F32 && dt != DType::BF16)
    throw Error("ERR_DTYPE", std::string(op) + ": the pools must be float32 or bfloat16, got " + dtype_name(dt));
}

// A pool element as float, and a float rounded to a pool element (bfloat16: to nearest, ties to even).
__device__ inline float from_pool(float x) { return x; }
__device__ inline float from_pool(uint16_t x) { return bf16_to_f32(x); }
template <typename T>
__device__ inline T to_pool(float x);
template <>
__device__ inline float to_pool<float>(float x) {
  return x;
}
template <>
__device__ inline uint16_t to_pool<uint16_t>(float x) {
  return f32_to_bf16(x);
}

// ---- kv_write ---------------------------------------------------------------------------------------
//   k_pool[slots[i], c] = T(k[i, c]),  v_pool[slots[i], c] = T(v[i, c])   for slots[i] in [0, pool_slots)
// One thread per V consecutive elements of a row, of k and v both: with V = 16 / sizeof(T) every pool store
// is 16 bytes (4 float32 or 8 bfloat16) and every load one or two 16-byte reads; V = 1 where the width or
// the pointers do not allow it. Two rows naming one slot race (the CPU keeps the later one); the engine
// never writes a slot twice in one call.
constexpr int kWriteThreads = 256;

template <typename T, int V>
__device__ inline void convert_chunk(T* dst, const float* src) {
  Chunk<T, V> out;
  if constexpr (V == 1) {
    out.v[0] = to_pool<T>(*src);
  } else {
#pragma unroll
    for (int u = 0; u < V; u += 4) {
      const Chunk<float, 4> x = load_chunk<4>(src + u);
#pragma unroll
      for (int w = 0; w < 4; ++w) out.v[u + w] = to_pool<T>(x.v[w]);
    }
  }
  store_chunk<V>(dst, out);
}

template <typename T, int V>
__global__ __launch_bounds__(kWriteThreads) void kv_write_kernel(const KvWriteArgs a) {
  const int64_t per_row = a.width / V, total = a.n * per_row;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / per_row, c = (e - i * per_row) * V;
    const int64_t slot = a.slots[i];
    if (slot < 0 || slot >= a.pool_slots) continue;
    const int64_t dst = slot * a.width + c, src = i * a.width + c;
    convert_chunk<T, V>(static_cast<T*>(a.k_pool) + dst, a.k + src);
    convert_chunk<T, V>(static_cast<T*>(a.v_pool) + dst, a.v + src);
  }
}

template <typename T>
void launch_kv_write(const KvWriteArgs& a) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = a.width % V == 0 && is_aligned16(a.k) && is_aligned16(a.v) && is_aligned16(a.k_pool) &&
                   is_aligned16(a.v_pool);
  if (vec)
    kv_write_kernel<T, V><<<grid_for(a.n * (a.width / V), kWriteThreads), kWriteThreads, 0, stream()>>>(a);
  else
    kv_write_kernel<T, 1><<<grid_for(a.n * a.width, kWriteThreads), kWriteThreads, 0, stream()>>>(a);
  LK_LAUNCHED("kv_write_kernel");
}

// ---- paged_attention --------------------------------------------------------------------------------
// Decode-oriented (flash-decoding within a block): one block per (token i, query head h), kv head
// kh = h / (hq / hkv), over the keys j < ctx_i of sequence s = seq_i, key j at slot
// table[s, j / bs] * bs + j % bs:
//   s_j = scale * q_ih . K_j,   out_ih = sum_j exp(s_j - M) V_j / sum_j exp(s_j - M),   M = max_j s_j
// The block's threads form kKeyGroups groups of kKeyLanes lanes; group g takes keys g, g + kKeyGroups, ...
// and keeps an online softmax of its own (running max m, sum l, unnormalised output o):
//   m' = max(m, s_j),  l' = l e^(m - m') + e^(s_j - m'),  o' = o e^(m - m') + e^(s_j - m') V_j
// The lanes of a group split one key's head dim: lane tx owns columns 4 tx + 64 n .. + 3 (n < DMAX / 64),
// so a group reads a K or V row in 16-byte (float32) or 8-byte (bfloat16) pieces side by side, and the dot
// product is a sum over the group's lanes (16 divides every warp width, so it never leaves a warp). At the
// end the groups' (m, l, o) are merged through shared memory:
//   M = max_g m_g,  L = sum_g l_g e^(m_g - M),  out = sum_g o_g e^(m_g - M) / L
// A prefill token reads its whole context like a decode token does (K/V of a sequence are shared through
// L2 by its tokens); the key loop has the same trip count in every group, so the group sums' shuffles are
// always taken by whole warps.
//
// Shared memory is kKeyGroups partial outputs of DMAX floats: 16 KiB at the largest bucket, DMAX = 256,
// which is the head-dim limit; the launcher refuses a larger d. That is within kLdsBudget (32 KiB, the most
// attention.cu's AMD tiles take), so an AMD compute unit (64 KiB of LDS) holds four of these workgroups.
constexpr int kAttnThreads = 256;
constexpr int kKeyLanes = 16;
constexpr int kKeyGroups = kAttnThreads / kKeyLanes;
constexpr int kMaxHeadDim = 256;
constexpr size_t kLdsBudget = 32 * 1024;

template <int DMAX>
constexpr size_t paged_shared_bytes() {
  return sizeof(float) * (static_cast<size_t>(kKeyGroups) * DMAX + 2 * kKeyGroups);
}
static_assert(paged_shared_bytes<kMaxHeadDim>() <= kLdsBudget, "paged_attention's shared memory exceeds the LDS budget");

__device__ inline float4 zero4() { return make_float4(0.f, 0.f, 0.f, 0.f); }

// Columns c .. c+3 of a row of d elements as float, zero past d. With vec (d % 4 == 0, the row aligned to
// four elements) one access.
template <typename T>
__device__ inline float4 load4(const T* row, int c, int d, bool vec) {
  if (c >= d) return zero4();
  if (vec) {
    const Chunk<T, 4> x = load_chunk<4>(row + c);
    return make_float4(from_pool(x.v[0]), from_pool(x.v[1]), from_pool(x.v[2]), from_pool(x.v[3]));
  }
  float4 r = zero4();
  r.x = from_pool(row[c]);
  if (c + 1 < d) r.y = from_pool(row[c + 1]);
  if (c + 2 < d) r.z = from_pool(row[c + 2]);
  if (c + 3 < d) r.w = from_pool(row[c + 3]);
  return r;
}

__device__ inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

template <typename T, int DMAX>
__global__ __launch_bounds__(kAttnThreads) void paged_attention_kernel(const PagedAttentionArgs a, bool vec) {
  constexpr int NC = DMAX / (4 * kKeyLanes);
  __shared__ float4 part_o[kKeyGroups * DMAX / 4];
  __shared__ float part_m[kKeyGroups], part_l[kKeyGroups];
  const int hq = static_cast<int>(a.hq), d = static_cast<int>(a.d);
  const int64_t token = blockIdx.x / hq;
  const int h = static_cast<int>(blockIdx.x % hq), kh = h / (hq / static_cast<int>(a.hkv));
  const int g = static_cast<int>(threadIdx.x) / kKeyLanes, tx = static_cast<int>(threadIdx.x) % kKeyLanes;
  const int64_t s = clamp64(a.seq[token], 0, a.num_seqs - 1);
  const int64_t ctx = clamp64(a.ctx[token], 1, a.max_blocks * a.block_size);
  const int64_t last_block = a.pool_slots / a.block_size - 1, width = a.hkv * a.d;
  const int64_t* table = a.block_table + s * a.max_blocks;
  const T* k_pool = static_cast<const T*>(a.k_pool) + static_cast<int64_t>(kh) * d;
  const T* v_pool = static_cast<const T*>(a.v_pool) + static_cast<int64_t>(kh) * d;
  const int64_t row_q = (token * hq + h) * d;

  float4 q[NC], o[NC];
#pragma unroll
  for (int n = 0; n < NC; ++n) {
    q[n] = load4(a.q + row_q, 4 * tx + 4 * kKeyLanes * n, d, vec);
    o[n] = zero4();
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j0 = 0; j0 < ctx; j0 += kKeyGroups) {
    const int64_t j = j0 + g;
    const bool valid = j < ctx;
    int64_t at = 0;
    float dot = 0.f;
    if (valid) {
      const int64_t block = clamp64(table[j / a.block_size], 0, last_block);
      at = (block * a.block_size + j % a.block_size) * width;
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        const float4 k = load4(k_pool + at, 4 * tx + 4 * kKeyLanes * n, d, vec);
        dot = fmaf(q[n].x, k.x, fmaf(q[n].y, k.y, fmaf(q[n].z, k.z, fmaf(q[n].w, k.w, dot))));
      }
    }
    dot = lanes_sum(dot, kKeyLanes);
    const float sj = valid ? a.scale * dot : -INFINITY;
    const float m_new = fmaxf(m, sj);
    // Before a group's first key m stays -inf; exponents are then taken against 0, so that
    // exp(-inf - -inf) never makes a NaN.
    const float ref = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = expf(m - ref), p = expf(sj - ref);
    l = l * alpha + p;
    m = m_new;
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      o[n] = make_float4(o[n].x * alpha, o[n].y * alpha, o[n].z * alpha, o[n].w * alpha);
      if (valid) {
        const float4 v = load4(v_pool + at, 4 * tx + 4 * kKeyLanes * n, d, vec);
        o[n] = make_float4(fmaf(p, v.x, o[n].x), fmaf(p, v.y, o[n].y), fmaf(p, v.z, o[n].z), fmaf(p, v.w, o[n].w));
      }
    }
  }

#pragma unroll
  for (int n = 0; n < NC; ++n) part_o[g * (DMAX / 4) + tx + kKeyLanes * n] = o[n];
  if (tx == 0) {
    part_m[g] = m;
    part_l[g] = l;
  }
  __syncthreads();
  float big = -INFINITY;
#pragma unroll
  for (int k = 0; k < kKeyGroups; ++k) big = fmaxf(big, part_m[k]);
  if (big == -INFINITY) big = 0.f;
  float w[kKeyGroups], total = 0.f;
#pragma unroll
  for (int k = 0; k < kKeyGroups; ++k) {
    w[k] = expf(part_m[k] - big);
    total += part_l[k] * w[k];
  }
  const float inv = 1.f / total;
  const float* po = reinterpret_cast<const float*>(part_o);
  for (int c = static_cast<int>(threadIdx.x); c < d; c += kAttnThreads) {
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < kKeyGroups; ++k) acc = fmaf(po[k * DMAX + c], w[k], acc);
    a.out[row_q + c] = acc * inv;
  }
}

template <typename T, int DMAX>
void launch_paged(const PagedAttentionArgs& a) {
  const bool vec = a.d % 4 == 0 && is_aligned16(a.q) && reinterpret_cast<uintptr_t>(a.k_pool) % (4 * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(a.v_pool) % (4 * sizeof(T)) == 0;
  paged_attention_kernel<T, DMAX><<<static_cast<unsigned>(a.n * a.hq), kAttnThreads, 0, stream()>>>(a, vec);
  LK_LAUNCHED("paged_attention_kernel");
}

template <typename T>
void paged_for(const PagedAttentionArgs& a) {
  if (a.d <= 64) launch_paged<T, 64>(a);
  else if (a.d <= 128) launch_paged<T, 128>(a);
  else launch_paged<T, 256>(a);
}

// ---- lora_segments ----------------------------------------------------------------------------------
// Punica / S-LoRA's segmented gather: every segment's rows in two launches, whatever the segment count.
//   shrink:  xa[i, k] = scale_j * x_i . A_j[k]        (k < r_j)        into a [m, r_max] float32 buffer
//   expand:  y[i, o] += xa[i, :r_j] . B_j[o]          (o < out)
// (scale applied to xa, as the CPU does.) The segments go to the device as a small descriptor array (through
// upload_args, the backend's argument ring, copied on its stream and recycled behind it), each with the index
// of its first row tile; a block finds its segment by binary search over those and works on one tile of
// kRowTile rows of it, so no block is spent on rows outside every segment, and those rows of y are never
// touched.
// shrink: grid (row tiles); kSegGroups groups of kSegLanes lanes take ranks k, k + kSegGroups, ...; a group
// reads A's row k in 16-byte pieces side by side and dots it with each row of the tile, then sums over its
// lanes.
// expand: grid (row tiles, column tiles); thread = output column o, reading B's row o (r contiguous floats)
// once for the tile's rows; xa is the same address across the block (a broadcast).
constexpr int kSegThreads = 256;
constexpr int kSegLanes = 32;  // divides every warp width (32, 64)
constexpr int kSegGroups = kSegThreads / kSegLanes;
constexpr int kRowTile = 8;

struct SegmentDesc {
  const float* a;
  const float* b;
  int64_t start, end, r, first_tile;
  float scale;
};

__device__ inline const SegmentDesc& segment_of(const SegmentDesc* segs, int count, int64_t tile) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (segs[mid].first_tile <= tile) lo = mid;
    else hi = mid - 1;
  }
  return segs[lo];
}

__global__ __launch_bounds__(kSegThreads) void lora_shrink_kernel(const SegmentDesc* segs, int count, const float* x,
                                                                  int64_t ldx, int64_t in, float* xa, int64_t r_max,
                                                                  bool vec) {
  const SegmentDesc& seg = segment_of(segs, count, blockIdx.x);
  const int64_t row0 = seg.start + (blockIdx.x - seg.first_tile) * kRowTile;
  const int rows = static_cast<int>(seg.end - row0 < kRowTile ? seg.end - row0 : kRowTile);
  const int g = static_cast<int>(threadIdx.x) / kSegLanes, tx = static_cast<int>(threadIdx.x) % kSegLanes;
  const float* xt = x + row0 * ldx;
  // Every group runs the same number of rounds, so the lane sums are taken by whole warps.
  for (int64_t k0 = 0; k0 < seg.r; k0 += kSegGroups) {
    const int64_t k = k0 + g;
    float acc[kRowTile] = {};
    if (k < seg.r) {
      const float* arow = seg.a + k * in;
      if (vec) {
        for (int64_t c = 4 * tx; c < in; c += 4 * kSegLanes) {
          const Chunk<float, 4> av = load_chunk<4>(arow + c);
#pragma unroll
          for (int i = 0; i < kRowTile; ++i) {
            if (i >= rows) break;
            const Chunk<float, 4> xv = load_chunk<4>(xt + i * ldx + c);
            acc[i] = fmaf(xv.v[3], av.v[3], fmaf(xv.v[2], av.v[2], fmaf(xv.v[1], av.v[1], fmaf(xv.v[0], av.v[0], acc[i]))));
          }
        }
      } else {
        for (int64_t c = tx; c < in; c += kSegLanes) {
          const float av = arow[c];
#pragma unroll
          for (int i = 0; i < kRowTile; ++i) {
            if (i >= rows) break;
            acc[i] = fmaf(xt[i * ldx + c], av, acc[i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRowTile; ++i) acc[i] = lanes_sum(acc[i], kSegLanes);
    if (k < seg.r && tx == 0)
#pragma unroll
      for (int i = 0; i < kRowTile; ++i)
        if (i < rows) xa[(row0 + i) * r_max + k] = seg.scale * acc[i];
  }
}

__global__ __launch_bounds__(kSegThreads) void lora_expand_kernel(const SegmentDesc* segs, int count, const float* xa,
                                                                  int64_t r_max, float* y, int64_t ldy, int64_t out) {
  const SegmentDesc& seg = segment_of(segs, count, blockIdx.x);
  const int64_t row0 = seg.start + (blockIdx.x - seg.first_tile) * kRowTile;
  const int rows = static_cast<int>(seg.end - row0 < kRowTile ? seg.end - row0 : kRowTile);
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kSegThreads + threadIdx.x;
  if (o >= out) return;
  const float* brow = seg.b + o * seg.r;
  const float* xt = xa + row0 * r_max;
  float acc[kRowTile] = {};
  for (int64_t k = 0; k < seg.r; ++k) {
    const float bv = brow[k];
#pragma unroll
    for (int i = 0; i < kRowTile; ++i) {
      if (i >= rows) break;
      acc[i] = fmaf(xt[i * r_max + k], bv, acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kRowTile; ++i)
    if (i < rows) y[(row0 + i) * ldy + o] += acc[i];
}

}  // namespace

void kv_write(const KvWriteArgs& a) {
  check_pool_dtype(a.kv_dtype, "kv_write");
  if (a.n <= 0 || a.width <= 0) return;
  if (a.kv_dtype == DType::F32) launch_kv_write<float>(a);
  else launch_kv_write<uint16_t>(a);
}

void paged_attention(const PagedAttentionArgs& a) {
  check_pool_dtype(a.kv_dtype, "paged_attention");
  if (a.n <= 0 || a.hq <= 0 || a.d <= 0) return;
  if (a.d > kMaxHeadDim)
    throw Error("ERR_SHAPE", "paged_attention: head dim " + std::to_string(a.d) + " is above the GPU kernel's " +
                                 std::to_string(kMaxHeadDim));
  // The clamps of the kernel need one sequence, one block table entry and one whole block in the pool.
  if (a.num_seqs <= 0 || a.max_blocks <= 0 || a.block_size <= 0 || a.pool_slots < a.block_size)
    throw Error("ERR_SHAPE", "paged_attention: " + std::to_string(a.num_seqs) + " sequences of " +
                                 std::to_string(a.max_blocks) + " blocks of " + std::to_string(a.block_size) +
                                 " slots over a pool of " + std::to_string(a.pool_slots) + " slots hold no key");
  if (a.n * a.hq > 0x7fffffffLL)
    throw Error("ERR_SHAPE", "paged_attention: " + std::to_string(a.n) + " tokens x " + std::to_string(a.hq) +
                                 " heads is beyond the GPU grid");
  if (a.kv_dtype == DType::F32) paged_for<float>(a);
  else paged_for<uint16_t>(a);
}

void lora_segments(const LoraSegmentsArgs& a) {
  std::vector<SegmentDesc> descs;
  int64_t tiles = 0, r_max = 0;
  bool vec = a.in % 4 == 0 && a.ldx % 4 == 0 && is_aligned16(a.x);
  for (int64_t j = 0; j < a.count; ++j) {
    const LoraSegment& s = a.segments[j];
    if (s.start < 0 || s.end > a.m || s.r < 0)
      throw Error("ERR_SHAPE", "lora_segments: segment " + std::to_string(j) + " (rows " + std::to_string(s.start) +
                                   " to " + std::to_string(s.end) + ", rank " + std::to_string(s.r) +
                                   ") is outside the " + std::to_string(a.m) + " rows");
    if (s.end <= s.start || s.r == 0) continue;
    descs.push_back({s.a, s.b, s.start, s.end, s.r, tiles, s.scale});
    tiles += (s.end - s.start + kRowTile - 1) / kRowTile;
    r_max = std::max(r_max, s.r);
    vec = vec && is_aligned16(s.a);
  }
  if (descs.empty() || a.out <= 0) return;
  const int64_t col_tiles = (a.out + kSegThreads - 1) / kSegThreads;
  if (tiles > 0x7fffffffLL || col_tiles > 65535)
    throw Error("ERR_SHAPE", "lora_segments: " + std::to_string(a.m) + " rows x " + std::to_string(a.out) +
                                 " outputs is beyond the GPU grid");
  const auto* dev = static_cast<const SegmentDesc*>(upload_args(descs.data(), descs.size() * sizeof(SegmentDesc)));
  auto* xa = static_cast<float*>(scratch(kScratchReduce, static_cast<size_t>(a.m * r_max) * sizeof(float)));
  const int count = static_cast<int>(descs.size());
  lora_shrink_kernel<<<static_cast<unsigned>(tiles), kSegThreads, 0, stream()>>>(dev, count, a.x, a.ldx, a.in, xa,
                                                                                 r_max, vec);
  LK_LAUNCHED("lora_shrink_kernel");
  lora_expand_kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(col_tiles)), kSegThreads, 0,
                       stream()>>>(dev, count, xa, r_max, a.y, a.ldy, a.out);
  LK_LAUNCHED("lora_expand_kernel");
}

}  // namespace lorakit::gpu
