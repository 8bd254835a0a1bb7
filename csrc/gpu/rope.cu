// Rotary position embedding, in place, in the rotate-half layout of Hugging Face's Llama (csrc/cpu/attention.cc):
// for i < d/2, with a = pos * inv_freq[i] and inv_freq[i] = 1 / theta^(2i/d) in float32,
//   y[i] = x[i] cos a - x[i + d/2] sin a,   y[i + d/2] = x[i + d/2] cos a + x[i] sin a
// The backward pass applies the transpose (sin negated). An odd head_dim leaves its last element alone.
//
// The frequencies are computed on the host with the same std::pow call as the CPU, so they are the
// same floats. Sine and cosine are evaluated in double and rounded to float: that is the correctly
// rounded value glibc's sinf/cosf return, where the GPU's float versions may be an ulp off.
#include <cmath>
#include <vector>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

constexpr int kThreads = 128;

// One block per token: its cos/sin table goes to shared memory once, then every head is rotated with it.
__global__ void rope_kernel(RopeArgs a, const float* inv_freq) {
  extern __shared__ float table[];  // cos[half], then sin[half]
  const int64_t half = a.head_dim / 2;
  float* cs = table;
  float* sn = table + half;
  const float sign = a.inverse ? -1.f : 1.f;
  const uint32_t pairs = static_cast<uint32_t>(a.heads * half);
  for (int64_t t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    const float pos = static_cast<float>(a.pos ? a.pos[t] : t % a.seq);
    __syncthreads();  // the previous token's table is no longer read
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const float ang = pos * inv_freq[i];
      cs[i] = static_cast<float>(cos(static_cast<double>(ang)));
      sn[i] = sign * static_cast<float>(sin(static_cast<double>(ang)));
    }
    __syncthreads();
    float* xt = a.x + t * a.heads * a.head_dim;
    for (uint32_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const uint32_t h = p / static_cast<uint32_t>(half), i = p - h * static_cast<uint32_t>(half);
      float* x = xt + h * a.head_dim;
      const float x1 = x[i], x2 = x[i + half];
      x[i] = mul_rn(x1, cs[i]) - mul_rn(x2, sn[i]);
      x[i + half] = mul_rn(x2, cs[i]) + mul_rn(x1, sn[i]);
    }
  }
}

}  // namespace

void rope(const RopeArgs& a) {
  const int64_t half = a.head_dim / 2;
  if (a.tokens <= 0 || a.heads <= 0 || half <= 0) return;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0f / std::pow(a.theta, static_cast<float>(2 * i) / static_cast<float>(a.head_dim));
  const auto* inv_freq = static_cast<const float*>(upload_args(inv.data(), sizeof(float) * inv.size()));
  rope_kernel<<<grid_for(a.tokens, 1), kThreads, sizeof(float) * 2 * half, stream()>>>(a, inv_freq);
  LK_LAUNCHED("rope");
}

}  // namespace lorakit::gpu
