// The op list: every backend (csrc/cpu, later csrc/gpu) implements exactly these functions.
// Arguments are plain pointers and sizes; shape and dtype checking happens in TypeScript and again in
// csrc/napi before a call reaches here, so kernels may assume consistent arguments.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lorakit {

// Codes shared with lib/tensor/dtype.ts (DTYPE_CODE). Append only.
enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, I64 = 4, U8 = 5 };
size_t dtype_size(DType d);
const char* dtype_name(DType d);

// Thrown by kernels for conditions only they can see (for example an allocation failure).
struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)) {}
};

// NF4 weight as bitsandbytes stores it: two 4-bit codes per byte, element 2j in the high nibble,
// one fp32 absmax per block of `block_size` consecutive elements of the row-major tensor.
struct NF4View {
  const uint8_t* packed;
  const float* absmax;
  int64_t block_size;
};

// A read-only matrix operand. The stored matrix is row-major with `ld` elements between rows;
// `trans` means the logical operand is the transpose of what is stored. With `nf4` set the
// operand is NF4-packed (then `data` and `dtype` are ignored and ld must equal the stored width).
struct Operand {
  const void* data = nullptr;
  DType dtype = DType::F32;
  bool trans = false;
  int64_t ld = 0;
  const NF4View* nf4 = nullptr;
};

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C + bias[n]   (C float32, row-major, ldc)
// beta == 0 never reads C, so C may hold garbage (or NaN) on entry.
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  Operand a, b;
  float* c = nullptr;
  int64_t ldc = 0;
  float alpha = 1.f, beta = 0.f;
  const float* bias = nullptr;
};

// Building blocks for ops composed of GEMM calls (the LoRA layer of both backends).
inline Operand f32_operand(const float* p, int64_t ld, bool trans) {
  Operand o;
  o.data = p;
  o.dtype = DType::F32;
  o.ld = ld;
  o.trans = trans;
  return o;
}
inline Operand transposed(Operand o) {
  o.trans = !o.trans;
  return o;
}
inline GemmArgs gemm_args(int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b, float* c, float alpha,
                          float beta, const float* bias = nullptr) {
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.b = b;
  g.c = c;
  g.ldc = n;
  g.alpha = alpha;
  g.beta = beta;
  g.bias = bias;
  return g;
}

// y = x W^T + b + s * (dropout(x) A^T) B^T ; x [m, in], W [out, in], A [r, in], B [out, r].
// xa (out) receives dropout(x) A^T [m, r], the rank-r intermediate the backward pass needs.
struct LoraForwardArgs {
  int64_t m = 0, in = 0, out = 0, r = 0;
  Operand x;          // [m, in], not transposed
  Operand w;          // [out, in] as stored (the op uses it transposed)
  const float* bias = nullptr;
  const float* a = nullptr;  // [r, in]
  const float* b = nullptr;  // [out, r]
  float scale = 1.f;
  float dropout = 0.f;
  uint64_t seed = 0;
  float* y = nullptr;   // [m, out]
  float* xa = nullptr;  // [m, r]
};

// Gradients of the layer above from dy [m, out]. Any output pointer may be null (not wanted).
// `accumulate` adds into the gradient buffers instead of overwriting them (gradient accumulation).
struct LoraBackwardArgs {
  int64_t m = 0, in = 0, out = 0, r = 0;
  Operand dy, x, w;
  const float* a = nullptr;
  const float* b = nullptr;
  const float* xa = nullptr;
  float scale = 1.f;
  float dropout = 0.f;
  uint64_t seed = 0;
  bool accumulate = false;
  float* dx = nullptr;  // [m, in]  (always overwritten: it is an activation gradient)
  float* da = nullptr;  // [r, in]
  float* db = nullptr;  // [out, r]
  float* dbias = nullptr;  // [out]
  float* dw = nullptr;  // [out, in] (full fine-tuning only)
};

// One parameter tensor of a fused AdamW step.
struct AdamWTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  double lr, beta1, beta2, eps, weight_decay;  // doubles, as Python passes them to torch
};

// Double quantization of NF4 absmax (bitsandbytes compress_statistics): codes of (absmax - offset) in
// blocks of 256 under the signed dynamic 8-bit map, one fp32 scale per block.
struct NestedAbsmax {
  const uint8_t* codes;
  const float* scales;
  float offset;
  int64_t n;  // number of absmax values
};

// Row-wise normalisation over the last dimension (LayerNorm with bias, or RMSNorm without mean/bias).
// Forward fills y and saves mean (LayerNorm) and rstd per row; backward reads them and fills dx and
// adds the weight (and bias) gradients into dw/db, which may be null.
struct NormArgs {
  int64_t rows = 0, dim = 0;
  float eps = 1e-5f;
  const float* x = nullptr;
  const float* w = nullptr;
  const float* b = nullptr;
  float* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
  const float* dy = nullptr;
  float* dx = nullptr;
  float* dw = nullptr;
  float* db = nullptr;
};

// Rotary position embedding, in place, on x [tokens, heads, head_dim] in the rotate-half layout of
// Hugging Face's Llama. Token i has position pos[i], or i % seq when pos is null. inverse applies the
// transpose (the backward pass).
struct RopeArgs {
  float* x = nullptr;
  int64_t tokens = 0, heads = 0, head_dim = 0, seq = 1;
  const int64_t* pos = nullptr;
  float theta = 10000.f;
  bool inverse = false;
};

// Causal scaled-dot-product attention with grouped-query heads. q [batch, seq, hq, d], k/v
// [batch, seq, hkv, d], out [batch, seq, hq, d]; lse [batch, hq, seq] saves each row's log-sum-exp.
// With `starts` ([batch, seq], the index in its row where each token's document begins) a token
// attends only within its own document (packed sequences). Backward fills dq, dk, dv (overwritten).
struct AttentionArgs {
  int64_t batch = 0, seq = 0, hq = 0, hkv = 0, d = 0;
  float scale = 1.f;
  const int64_t* starts = nullptr;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  float* lse = nullptr;
  const float* dout = nullptr;
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
};

// Generation (#13). The paged KV cache: per layer, a K pool and a V pool of `pool_slots` rows of
// width hkv*d (float32, or bfloat16 where memory matters), handed out in blocks of `block_size`
// consecutive slots; a sequence owns a list of blocks, its block table. Sequence s's t-th token is in slot
//   block_table[s * max_blocks + t / block_size] * block_size + t % block_size.
// kv_write: row i of k and v ([n, width] float32) goes to slot slots[i] of k_pool and v_pool (converted to
// kv_dtype); a negative slot skips the row.
struct KvWriteArgs {
  int64_t n = 0, width = 0, pool_slots = 0;
  const float* k = nullptr;
  const float* v = nullptr;
  const int64_t* slots = nullptr;  // [n]
  void* k_pool = nullptr;          // [pool_slots, width]
  void* v_pool = nullptr;
  DType kv_dtype = DType::F32;
};

// Attention of n query tokens over the pool: token i belongs to sequence seq[i] and attends to that
// sequence's cached tokens 0 .. ctx[i]-1 (causal: ctx[i] is its own position + 1, its own K/V written
// first). Grouped-query heads as in AttentionArgs. q and out are [n, hq, d] float32. One kernel serves a
// prefill (many tokens of one sequence) and a decode step (one token of each of many sequences).
struct PagedAttentionArgs {
  int64_t n = 0, hq = 0, hkv = 0, d = 0;
  int64_t block_size = 0, max_blocks = 0, num_seqs = 0, pool_slots = 0;
  float scale = 1.f;
  const float* q = nullptr;
  const void* k_pool = nullptr;
  const void* v_pool = nullptr;
  DType kv_dtype = DType::F32;
  const int64_t* block_table = nullptr;  // [num_seqs, max_blocks]; unused entries may hold anything
  const int64_t* seq = nullptr;          // [n], in [0, num_seqs)
  const int64_t* ctx = nullptr;          // [n], in [1, max_blocks * block_size]
  float* out = nullptr;
};

// Many adapters in one batch, unmerged (S-LoRA / Punica's segmented gather): rows [start, end) of x use
// segment j's adapter, y[rows] += scale_j * (x[rows] A_j^T) B_j^T with A_j [r_j, in], B_j [out, r_j]; ranks may
// differ between segments, rows in no segment are left alone, segments do not overlap. x [m, in] and y
// [m, out] are float32 with row strides ldx and ldy. `segments` is a host array (a GPU backend copies it).
struct LoraSegment {
  int64_t start = 0, end = 0, r = 0;
  const float* a = nullptr;
  const float* b = nullptr;
  float scale = 1.f;
  // Optional: B transposed, [r, out]. A CPU row then expands as r contiguous axpys instead of `out` dot
  // products of length r (the engine keeps one per adapter, made once at load); the GPU reads b.
  const float* bt = nullptr;
};
struct LoraSegmentsArgs {
  int64_t m = 0, in = 0, out = 0, count = 0, ldx = 0, ldy = 0;
  const float* x = nullptr;
  float* y = nullptr;
  const LoraSegment* segments = nullptr;
};

#define LORAKIT_DECLARE_OPS(NS)                                                                          \
  namespace NS {                                                                                         \
  void* alloc(size_t bytes);                                                                             \
  void release(void* ptr, size_t bytes);                                                                 \
  size_t cached_bytes();                                                                                 \
  void fill(void* dst, DType dt, int64_t n, double value);                                               \
  void arange(void* dst, DType dt, int64_t n, double start, double step);                                \
  void cast(const void* src, DType from, void* dst, DType to, int64_t n);                                \
  void rand_uniform(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi);          \
  void rand_normal(float* dst, int64_t n, uint64_t seed, uint64_t offset, float mean, float std);        \
  void gemm(const GemmArgs& args);                                                                       \
  void lora_forward(const LoraForwardArgs& args);                                                        \
  void lora_backward(const LoraBackwardArgs& args);                                                      \
  void nf4_quantize(const void* src, DType dt, int64_t n, int64_t block_size, uint8_t* packed,           \
                    float* absmax);                                                                      \
  void nf4_dequantize(const NF4View& q, int64_t n, void* dst, DType dt);                                 \
  void absmax_quantize(const float* absmax, int64_t n, uint8_t* codes, float* scales, float* offset);    \
  void absmax_dequantize(const NestedAbsmax& q, float* absmax);                                          \
  void adamw_step(const AdamWTensor* tensors, int64_t count, int64_t step, float grad_scale);            \
  double grad_norm(const float* const* grads, const int64_t* numels, int64_t count);                     \
  void layernorm_forward(const NormArgs& a);                                                             \
  void layernorm_backward(const NormArgs& a);                                                            \
  void rmsnorm_forward(const NormArgs& a);                                                               \
  void rmsnorm_backward(const NormArgs& a);                                                              \
  void rope(const RopeArgs& a);                                                                          \
  void attention_forward(const AttentionArgs& a);                                                        \
  void attention_backward(const AttentionArgs& a);                                                       \
  void gelu_tanh_forward(const float* x, float* y, int64_t n);                                           \
  void gelu_tanh_backward(const float* dy, const float* x, float* dx, int64_t n);                        \
  void swiglu_forward(const float* gate, const float* up, float* y, int64_t n);                          \
  void swiglu_backward(const float* dy, const float* gate, const float* up, float* dgate, float* dup,    \
                       int64_t n);                                                                       \
  void embedding_forward(const int64_t* ids, const float* table, float* out, int64_t n, int64_t dim,     \
                         int64_t vocab);                                                                 \
  void embedding_backward(const int64_t* ids, const float* dout, float* dtable, int64_t n, int64_t dim,  \
                          int64_t vocab);                                                                \
  void copy2d(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows, int64_t cols,    \
              bool accumulate);                                                                         \
  void axpy(float alpha, const float* x, float* y, int64_t n);                                           \
  double cross_entropy(float* logits, const int64_t* labels, int64_t rows, int64_t vocab,                \
                       int64_t ignore_index, float grad_scale, bool want_grad, int64_t* count);          \
  void sym_eigen(double* a, int64_t n, double* w, bool vectors);                                         \
  void svd_left(const float* w, int64_t m, int64_t n, double* u, double* s, int64_t k);                  \
  void kv_write(const KvWriteArgs& a);                                                                   \
  void paged_attention(const PagedAttentionArgs& a);                                                     \
  void lora_segments(const LoraSegmentsArgs& a);                                                         \
  }

LORAKIT_DECLARE_OPS(cpu)

}  // namespace lorakit
