// The float64 analysis routines (symmetric eigensolver, left SVD) on GPU tensors. They are a deliberate
// host bounce: the inputs are copied to host memory, csrc/cpu/linalg.cc runs, and the results are copied
// back. They serve the analysis tools, run once per weight rather than once per training step, and spend
// their time in sequential QL sweeps; going through the CPU code also makes their results bit-identical
// to the CPU backend's.
#include <vector>

#include "common.cuh"

namespace lorakit::gpu {
namespace {

template <typename T>
std::vector<T> to_host(const T* src, int64_t n) {
  std::vector<T> h(static_cast<size_t>(n));
  LK_CHECK(cudaMemcpyAsync(h.data(), src, sizeof(T) * h.size(), cudaMemcpyDeviceToHost, stream()));
  LK_CHECK(cudaStreamSynchronize(stream()));
  return h;
}

// Queues the copy; the caller synchronises before h goes away.
template <typename T>
void to_device(T* dst, const std::vector<T>& h) {
  LK_CHECK(cudaMemcpyAsync(dst, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice, stream()));
}

}  // namespace

// a [n, n] is overwritten (with the eigenvectors as columns when `vectors`), w [n] gets the eigenvalues.
void sym_eigen(double* a, int64_t n, double* w, bool vectors) {
  if (n <= 0) return;
  std::vector<double> ha = to_host(a, n * n), hw(static_cast<size_t>(n));
  cpu::sym_eigen(ha.data(), n, hw.data(), vectors);
  to_device(a, ha);
  to_device(w, hw);
  LK_CHECK(cudaStreamSynchronize(stream()));
}

// w [m, n] float32 in; u [m, k] and s [k] out.
void svd_left(const float* w, int64_t m, int64_t n, double* u, double* s, int64_t k) {
  if (k <= 0) return;
  std::vector<float> hw = to_host(w, m * n);
  std::vector<double> hu(static_cast<size_t>(m * k)), hs(static_cast<size_t>(k));
  cpu::svd_left(hw.data(), m, n, hu.data(), hs.data(), k);
  to_device(u, hu);
  to_device(s, hs);
  LK_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace lorakit::gpu
