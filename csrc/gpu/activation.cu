// Element-wise activations, forward and backward, with the float formulas of csrc/cpu/activation.cc.
//
// gelu_new (GPT-2): y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// SwiGLU (Llama MLP): y = silu(gate) * up,  silu(g) = g * sigmoid(g)
//   dgate = dy * up * sigmoid(g) (1 + g (1 - sigmoid(g))),  dup = dy * silu(g)
// Every product and sum is rounded where the CPU rounds it (mul_rn wherever one could fuse into an add).
// tanh and exp are evaluated in double and rounded to float, which is what glibc's tanhf/expf return but
// for rare last-bit differences; the GPU's float versions are up to two ulps off.
#include <initializer_list>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

__device__ inline float tanh_f(float u) { return static_cast<float>(tanh(static_cast<double>(u))); }
__device__ inline float sigmoid(float x) { return 1.f / (1.f + static_cast<float>(exp(-static_cast<double>(x)))); }
__device__ inline float gelu_tanh(float v) { return tanh_f(kSqrt2OverPi * (v + mul_rn(kGeluC * v * v, v))); }

__device__ inline float gelu(float v) { return 0.5f * v * (1.f + gelu_tanh(v)); }

__device__ inline float gelu_grad(float v) {
  const float th = gelu_tanh(v);
  return mul_rn(0.5f, 1.f + th) +
         mul_rn(0.5f * v * (1.f - mul_rn(th, th)) * kSqrt2OverPi, 1.f + mul_rn(3.f * kGeluC * v, v));
}

// Each op is a functor that handles W consecutive elements from i; the kernel runs it with W = V (4: one
// 16-byte access per pointer, when every pointer is 16-byte aligned) and finishes the tail with W = 1.
struct GeluForward {
  const float* x;
  float* y;
  template <int W>
  __device__ void apply(int64_t i) const {
    const Chunk<float, W> xv = load_chunk<W>(x + i);
    Chunk<float, W> yv;
    for (int j = 0; j < W; ++j) yv.v[j] = gelu(xv.v[j]);
    store_chunk<W>(y + i, yv);
  }
};

struct GeluBackward {
  const float *dy, *x;
  float* dx;
  template <int W>
  __device__ void apply(int64_t i) const {
    const Chunk<float, W> dv = load_chunk<W>(dy + i), xv = load_chunk<W>(x + i);
    Chunk<float, W> out;
    for (int j = 0; j < W; ++j) out.v[j] = dv.v[j] * gelu_grad(xv.v[j]);
    store_chunk<W>(dx + i, out);
  }
};

struct SwigluForward {
  const float *gate, *up;
  float* y;
  template <int W>
  __device__ void apply(int64_t i) const {
    const Chunk<float, W> gv = load_chunk<W>(gate + i), uv = load_chunk<W>(up + i);
    Chunk<float, W> yv;
    for (int j = 0; j < W; ++j) yv.v[j] = gv.v[j] * sigmoid(gv.v[j]) * uv.v[j];
    store_chunk<W>(y + i, yv);
  }
};

struct SwigluBackward {
  const float *dy, *gate, *up;
  float *dgate, *dup;
  template <int W>
  __device__ void apply(int64_t i) const {
    const Chunk<float, W> dv = load_chunk<W>(dy + i), gv = load_chunk<W>(gate + i), uv = load_chunk<W>(up + i);
    Chunk<float, W> dg, du;
    for (int j = 0; j < W; ++j) {
      const float g = gv.v[j], sg = sigmoid(g);
      dg.v[j] = dv.v[j] * uv.v[j] * sg * (1.f + mul_rn(g, 1.f - sg));
      du.v[j] = dv.v[j] * g * sg;
    }
    store_chunk<W>(dgate + i, dg);
    store_chunk<W>(dup + i, du);
  }
};

template <int V, typename Op>
__global__ void elementwise_kernel(Op op, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t c = first; c < n / V; c += stride) op.template apply<V>(c * V);
  for (int64_t i = n / V * V + first; i < n; i += stride) op.template apply<1>(i);
}

template <typename Op>
void launch(const Op& op, int64_t n, std::initializer_list<const float*> ptrs) {
  bool vec = true;
  for (const float* p : ptrs) vec = vec && is_aligned16(p);
  if (vec) elementwise_kernel<4><<<grid_for(n / 4 + 1, kThreads), kThreads, 0, stream()>>>(op, n);
  else elementwise_kernel<1><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(op, n);
}

}  // namespace

void gelu_tanh_forward(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  launch(GeluForward{x, y}, n, {x, y});
  LK_LAUNCHED("gelu_tanh_forward");
}

void gelu_tanh_backward(const float* dy, const float* x, float* dx, int64_t n) {
  if (n <= 0) return;
  launch(GeluBackward{dy, x, dx}, n, {dy, x, dx});
  LK_LAUNCHED("gelu_tanh_backward");
}

void swiglu_forward(const float* gate, const float* up, float* y, int64_t n) {
  if (n <= 0) return;
  launch(SwigluForward{gate, up, y}, n, {gate, up, y});
  LK_LAUNCHED("swiglu_forward");
}

void swiglu_backward(const float* dy, const float* gate, const float* up, float* dgate, float* dup, int64_t n) {
  if (n <= 0) return;
  launch(SwigluBackward{dy, gate, up, dgate, dup}, n, {dy, gate, up, dgate, dup});
  LK_LAUNCHED("swiglu_backward");
}

}  // namespace lorakit::gpu
