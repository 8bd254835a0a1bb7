// NF4 quantization of the GPU backend, bit for bit what csrc/cpu/nf4.cc produces (which is bitsandbytes'
// quantize_4bit / dequantize_4bit with quant_type="nf4", and compress_statistics for the absmax):
//
//   absmax[b] = max |x| over block b;   code(x) = number of NF4 midpoints strictly below x * (1/absmax[b])
//   byte j = code(2j) << 4 | code(2j+1);  dequant(e) = NF4[code(e)] * absmax[e / block]
//
// Double quantization: offset = mean(absmax); (absmax - offset) is coded in blocks of 256 under the signed
// dynamic 8-bit map (binary search, then the nearer neighbour by midpoint); decoding is map[code] * scale +
// offset, rounded after the multiply and again after the add.
//
// Every product below goes through mul_rn and every reciprocal is a true division, so no compiler fuses
// or approximates what the CPU rounds step by step.
#include <cfloat>
#include <string>

#include "../bnb_codes.h"
#include "common.cuh"

namespace lorakit::gpu {
namespace {

// The code book and thresholds of csrc/bnb_codes.h, in constant memory.
__constant__ float kNF4[16] = {LORAKIT_NF4_CODES};
__constant__ float kNF4Mid[15] = {LORAKIT_NF4_THRESHOLDS};

// ---- quantize -------------------------------------------------------------------------------------
// One group of G = min(block/2, 32) lanes per quantization block, each lane taking pairs of elements
// (one output byte) at stride G. G divides every warp width, so the xor-shuffle max stays inside the
// group on NVIDIA and AMD alike, and the max is the same in any order.
//
// The max of |x| starts at -FLT_MAX for a full block and at 0 for the short last block, and fmaxf skips
// NaN, exactly as the CPU (and bitsandbytes) do; an all-NaN full block keeps -FLT_MAX. An odd last element
// pairs with a zero in the low nibble.
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads)
    nf4_quantize_kernel(const void* __restrict__ src, DType dt, int64_t n, int64_t bs, int group,
                        uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t b = gid / group, first = b * bs, blocks = (n + bs - 1) / bs;
  const int lane = static_cast<int>(threadIdx.x) & (group - 1);
  const int64_t len = b < blocks ? (n - first < bs ? n - first : bs) : 0, pairs = (len + 1) >> 1;

  float m = len < bs ? 0.f : -FLT_MAX;
  for (int64_t i = lane; i < pairs; i += group) {
    m = fmaxf(m, fabsf(load_as_f32(src, dt, first + 2 * i)));
    if (2 * i + 1 < len) m = fmaxf(m, fabsf(load_as_f32(src, dt, first + 2 * i + 1)));
  }
  // Every lane of the warp reaches the shuffles, including those past the last block.
  m = lanes_max(m, group);
  if (len == 0) return;
  if (lane == 0) absmax[b] = m;

  // bitsandbytes scales by the reciprocal, which can round differently from dividing by absmax.
  const float inv = 1.0f / m;
  for (int64_t i = lane; i < pairs; i += group) {
    const float x0 = load_as_f32(src, dt, first + 2 * i);
    const float x1 = 2 * i + 1 < len ? load_as_f32(src, dt, first + 2 * i + 1) : 0.f;
    packed[(first >> 1) + i] = static_cast<uint8_t>(nf4_code(kNF4Mid, mul_rn(x0, inv)) << 4 | nf4_code(kNF4Mid, mul_rn(x1, inv)));
  }
}

// ---- dequantize -----------------------------------------------------------------------------------
// Memory-bound: each output element costs 2 or 4 bytes written for half a byte read. A quantization block
// has only 16 distinct outputs, NF4[c] * absmax rounded to the output dtype, so each CTA first builds those
// tables for the blocks it covers (one absmax load and 16/tpb products per table-building thread) and the
// decode is a shared-memory lookup per nibble, with no float work per element.
//
// A CTA covers 8192 elements: 4096 packed bytes, one 16-byte load per thread, staged in shared memory so
// that the decode can hand each thread the bytes of one 16-byte output store: four bytes (eight 16-bit
// outputs) or two bytes (four floats). Consecutive threads then store consecutive 16 bytes, fully coalesced.
// 16-bit tables are stored as 16-bit entries: the four 64-element blocks a warp reads at once then sit in
// 32 different banks.
//
// The vector kernel needs 16-byte aligned packed and output pointers and block >= 32 (at most 256 tables
// of 16 per CTA); everything else takes the one-byte-per-thread kernel below it. Elements past n (the end
// of the last CTA, an odd n) are neither loaded from beyond the packed bytes nor stored.
//
// When the absmax is itself double-quantized, the caller decodes it first (absmax_dequantize, 1/32 of the
// packed bytes for block 64) and then runs this kernel; fusing map[code] * scale + offset into the table
// build would save that small pass, but no op asks for it.
constexpr int kDequantThreads = 256;
constexpr int kDequantBytes = kDequantThreads * 16;
constexpr int64_t kDequantElems = 2 * kDequantBytes;
constexpr int kDequantLog2Elems = 13;
static_assert(int64_t{1} << kDequantLog2Elems == kDequantElems, "CTA span is a power of two");

template <DType D> struct Nf4Out;
template <> struct Nf4Out<DType::F32> { using T = uint32_t; };  // float bits
template <> struct Nf4Out<DType::BF16> { using T = uint16_t; };
template <> struct Nf4Out<DType::F16> { using T = uint16_t; };

// One table entry: the product rounded to the output dtype. The hardware float16 conversion rounds as
// csrc/cpu/dtype.h does except on NaN (an infinite or NaN absmax), where the CPU writes sign | 0x7e00.
template <DType D>
__device__ inline typename Nf4Out<D>::T nf4_entry(int code, float absmax) {
  const float x = mul_rn(kNF4[code], absmax);
  if constexpr (D == DType::F32) {
    return __float_as_uint(x);
  } else if constexpr (D == DType::BF16) {
    return f32_to_bf16(x);
  } else {
    return x != x ? static_cast<uint16_t>(((__float_as_uint(x) >> 16) & 0x8000u) | 0x7e00u) : f32_to_f16(x);
  }
}

// The code of element k of the little-endian packed bytes in `bits`: even elements are high nibbles.
__device__ inline uint32_t nibble(uint32_t bits, int k) { return (bits >> (8 * (k >> 1) + 4 * (~k & 1))) & 15u; }

// lg_bs: log2 of the block size; lg_local = min(lg_bs, 13), the shift that turns an element offset inside
// the CTA into a table index; lg_tpb: log2 of the threads that build one table (16 / tpb entries each).
template <DType D>
__global__ void __launch_bounds__(kDequantThreads)
    nf4_dequantize_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, int64_t n, int lg_bs,
                          int lg_local, int lg_tpb, void* __restrict__ dst) {
  using E = typename Nf4Out<D>::T;
  extern __shared__ uint4 smem[];
  uint8_t* bytes = reinterpret_cast<uint8_t*>(smem);
  E* table = reinterpret_cast<E*>(bytes + kDequantBytes);
  const int t = threadIdx.x;
  const int64_t e0 = static_cast<int64_t>(blockIdx.x) << kDequantLog2Elems;
  const int64_t len = n - e0 < kDequantElems ? n - e0 : kDequantElems;
  const int64_t fb = e0 >> lg_bs, tables = ((e0 + len - 1) >> lg_bs) - fb + 1;

  // The absmax load goes first so that it is in flight with the packed bytes.
  const int qb = t >> lg_tpb;
  const float a = qb < tables ? absmax[fb + qb] : 0.f;
  const int64_t nbytes = (n + 1) >> 1, mine = (e0 >> 1) + 16 * t;
  if (mine + 16 <= nbytes) {
    smem[t] = *reinterpret_cast<const uint4*>(packed + mine);
  } else {
    for (int k = 0; k < 16 && mine + k < nbytes; ++k) bytes[16 * t + k] = packed[mine + k];
  }
  if (qb < tables) {
    const int per = 16 >> lg_tpb, c0 = (t & ((1 << lg_tpb) - 1)) * per;
    for (int j = 0; j < per; ++j) table[qb * 16 + c0 + j] = nf4_entry<D>(c0 + j, a);
  }
  __syncthreads();

  if constexpr (D == DType::F32) {
    // Two packed bytes -> four floats per step.
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(bytes);
    float* out = static_cast<float*>(dst) + e0;
    for (int u = t; 4 * u < len; u += kDequantThreads) {
      const int eo = 4 * u;
      const E* tab = table + (eo >> lg_local) * 16;
      const uint32_t h = halves[u];
      if (eo + 4 <= len) {
        *reinterpret_cast<uint4*>(out + eo) =
            make_uint4(tab[nibble(h, 0)], tab[nibble(h, 1)], tab[nibble(h, 2)], tab[nibble(h, 3)]);
      } else {
        for (int k = 0; eo + k < len; ++k) out[eo + k] = __uint_as_float(tab[nibble(h, k)]);
      }
    }
  } else {
    // Four packed bytes -> eight 16-bit outputs per step, two to a 32-bit word.
    const uint32_t* words = reinterpret_cast<const uint32_t*>(bytes);
    uint16_t* out = static_cast<uint16_t*>(dst) + e0;
    for (int u = t; 8 * u < len; u += kDequantThreads) {
      const int eo = 8 * u;
      const E* tab = table + (eo >> lg_local) * 16;
      const uint32_t q = words[u];
      if (eo + 8 <= len) {
        uint32_t w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          w[k] = static_cast<uint32_t>(tab[nibble(q, 2 * k)]) | static_cast<uint32_t>(tab[nibble(q, 2 * k + 1)]) << 16;
        *reinterpret_cast<uint4*>(out + eo) = make_uint4(w[0], w[1], w[2], w[3]);
      } else {
        for (int k = 0; eo + k < len; ++k) out[eo + k] = tab[nibble(q, k)];
      }
    }
  }
}

// One packed byte (two elements) per thread: small blocks and unaligned pointers.
template <DType D>
__global__ void nf4_dequantize_bytes_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                            int64_t n, int lg_bs, void* __restrict__ dst) {
  using E = typename Nf4Out<D>::T;
  E* out = static_cast<E*>(dst);
  const int64_t nbytes = (n + 1) >> 1;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < nbytes;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = 2 * j;
    const uint32_t byte = packed[j];
    const float a = absmax[e >> lg_bs];  // blocks have an even size: both elements share it
    out[e] = nf4_entry<D>(byte >> 4, a);
    if (e + 1 < n) out[e + 1] = nf4_entry<D>(byte & 15u, a);
  }
}

template <DType D>
void launch_dequantize(const NF4View& q, int64_t n, void* dst) {
  int lg_bs = 0;
  while ((int64_t{1} << lg_bs) < q.block_size) ++lg_bs;
  if (lg_bs >= 5 && is_aligned16(q.packed) && is_aligned16(dst)) {
    const int lg_local = lg_bs < kDequantLog2Elems ? lg_bs : kDequantLog2Elems;
    const int tables = 1 << (kDequantLog2Elems - lg_local);  // per CTA, at most 256
    int lg_tpb = 0;
    while ((tables << lg_tpb) < kDequantThreads && lg_tpb < 4) ++lg_tpb;
    const size_t smem = kDequantBytes + static_cast<size_t>(tables) * 16 * sizeof(typename Nf4Out<D>::T);
    const int64_t grid = (n + kDequantElems - 1) / kDequantElems;
    nf4_dequantize_kernel<D><<<static_cast<unsigned>(grid), kDequantThreads, smem, stream()>>>(
        q.packed, q.absmax, n, lg_bs, lg_local, lg_tpb, dst);
    LK_LAUNCHED("nf4_dequantize");
  } else {
    nf4_dequantize_bytes_kernel<D><<<grid_for((n + 1) / 2, kDequantThreads), kDequantThreads, 0, stream()>>>(
        q.packed, q.absmax, n, lg_bs, dst);
    LK_LAUNCHED("nf4_dequantize_bytes");
  }
}

// ---- double quantization of the absmax -----------------------------------------------------------
// bitsandbytes' create_dynamic_map(signed=True): for i = 0..6, the 2^i midpoints of
// linspace(0.1, 1, 2^i + 1) scaled by 10^(i-6), each with its negation, plus 0 and 1, sorted. The groups
// do not overlap and each is increasing, so the sorted position says which value it is: 0..126 are the
// negatives (most negative first), 127 is 0, 128..254 the positives in increasing order, 255 is 1.
// Each CTA builds the map in shared memory with the float32 arithmetic of torch that csrc/cpu reproduces:
// the linspace step in float, the first half counted from 0.1 and the second from 1.
constexpr int kMapSize = 256;
__constant__ float kDynScale[7] = {1e-6f, 1e-5f, 1e-4f, 1e-3f, 1e-2f, 1e-1f, 1.0f};

__device__ inline float linspace_point(float step, int items, int k) {
  return k < items / 2 ? 0.1f + mul_rn(step, static_cast<float>(k))
                       : 1.0f - mul_rn(step, static_cast<float>(items - k - 1));
}

__device__ inline float dynamic_map_entry(int s) {
  if (s == 127) return 0.f;
  if (s == 255) return 1.f;
  const int p = s > 127 ? s - 128 : 126 - s;  // rank among the 127 positive midpoints
  const int i = 31 - __clz(p + 1);             // group i holds ranks 2^i - 1 .. 2^(i+1) - 2
  const int k = p - ((1 << i) - 1), items = (1 << i) + 1;
  const float step = (1.0f - 0.1f) / static_cast<float>(items - 1);
  const float mean = (linspace_point(step, items, k) + linspace_point(step, items, k + 1)) / 2.0f;
  const float v = mul_rn(kDynScale[i], mean);
  return s > 127 ? v : -v;
}

// Every thread of the CTA calls this; it returns with the map visible to all.
__device__ inline void build_dynamic_map(float* map) {
  for (int s = threadIdx.x; s < kMapSize; s += blockDim.x) map[s] = dynamic_map_entry(s);
  __syncthreads();
}


// offset = float(sum) * (1 / float(n)) with the sum of the absmax in double, as the CPU forms the mean.
// The CPU adds in index order; here one CTA adds in a fixed tree order, which is deterministic and differs
// from the CPU's sum only in the last bits of a double, far below the one float rounding that follows.
constexpr int kMeanThreads = 1024;

__global__ void __launch_bounds__(kMeanThreads) absmax_mean_kernel(const float* __restrict__ absmax, int64_t n,
                                                                    float* __restrict__ offset) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += absmax[i];
  s = block_sum_d(s);
  if (threadIdx.x == 0) *offset = mul_rn(static_cast<float>(s), 1.0f / static_cast<float>(n));
}

// One CTA per block of 256 absmax values, one thread per value: d = absmax - offset, scale = max |d|
// (seeded as in nf4_quantize_kernel), code = quantize8(d * (1/scale)).
constexpr int kNestedBlock = 256;

__global__ void __launch_bounds__(kNestedBlock)
    absmax_quantize_kernel(const float* __restrict__ absmax, int64_t n, const float* __restrict__ offset,
                           uint8_t* __restrict__ codes, float* __restrict__ scales) {
  __shared__ float map[kMapSize];
  build_dynamic_map(map);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kNestedBlock, i = first + threadIdx.x;
  const bool full = n - first >= kNestedBlock, mine = i < n;
  const float d = mine ? absmax[i] - *offset : 0.f;
  const float seed = full ? -FLT_MAX : 0.f;
  const float m = block_max(mine ? fmaxf(seed, fabsf(d)) : seed);
  if (threadIdx.x == 0) scales[blockIdx.x] = m;
  if (mine) codes[i] = quantize8(map, mul_rn(d, 1.0f / m));
}

constexpr int kNestedDecodeThreads = 256;

__global__ void __launch_bounds__(kNestedDecodeThreads)
    absmax_dequantize_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales, float offset,
                             int64_t n, float* __restrict__ absmax) {
  __shared__ float map[kMapSize];
  build_dynamic_map(map);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    absmax[i] = mul_rn(map[codes[i]], scales[i / kNestedBlock]) + offset;
}

}  // namespace

void nf4_quantize(const void* src, DType dt, int64_t n, int64_t block_size, uint8_t* packed, float* absmax) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw Error("ERR_DTYPE", std::string("expected a float dtype, got ") + dtype_name(dt));
  if (n <= 0) return;
  const int group = static_cast<int>(block_size / 2 < 32 ? block_size / 2 : 32);
  const int64_t blocks = (n + block_size - 1) / block_size;
  const int64_t grid = (blocks * group + kQuantThreads - 1) / kQuantThreads;
  nf4_quantize_kernel<<<static_cast<unsigned>(grid), kQuantThreads, 0, stream()>>>(src, dt, n, block_size, group,
                                                                                  packed, absmax);
  LK_LAUNCHED("nf4_quantize");
}

void nf4_dequantize(const NF4View& q, int64_t n, void* dst, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw Error("ERR_DTYPE", std::string("NF4 dequantizes to a float dtype, not ") + dtype_name(dt));
  if (n <= 0) return;
  if (dt == DType::F32) launch_dequantize<DType::F32>(q, n, dst);
  else if (dt == DType::BF16) launch_dequantize<DType::BF16>(q, n, dst);
  else launch_dequantize<DType::F16>(q, n, dst);
}

void absmax_quantize(const float* absmax, int64_t n, uint8_t* codes, float* scales, float* offset) {
  if (n <= 0) {
    *offset = 0.f;
    return;
  }
  float* off = static_cast<float*>(scratch(kScratchReduce, sizeof(float)));
  absmax_mean_kernel<<<1, kMeanThreads, 0, stream()>>>(absmax, n, off);
  LK_LAUNCHED("absmax_mean");
  absmax_quantize_kernel<<<static_cast<unsigned>((n + kNestedBlock - 1) / kNestedBlock), kNestedBlock, 0, stream()>>>(
      absmax, n, off, codes, scales);
  LK_LAUNCHED("absmax_quantize");
  LK_CHECK(cudaMemcpyAsync(offset, off, sizeof(float), cudaMemcpyDeviceToHost, stream()));
  LK_CHECK(cudaStreamSynchronize(stream()));
}

void absmax_dequantize(const NestedAbsmax& q, float* absmax) {
  if (q.n <= 0) return;
  absmax_dequantize_kernel<<<grid_for(q.n, kNestedDecodeThreads, 4LL * sm_count()), kNestedDecodeThreads, 0,
                             stream()>>>(q.codes, q.scales, q.offset, q.n, absmax);
  LK_LAUNCHED("absmax_dequantize");
}

}  // namespace lorakit::gpu
