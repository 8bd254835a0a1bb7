// The host-side face of the GPU backend, in plain C++ (no CUDA or HIP headers), so that csrc/napi compiles
// with the host compiler in either GPU build. The kernels behind it live in the .cu files of this folder;
// the op list itself is LORAKIT_DECLARE_OPS(gpu) in ../ops.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lorakit::gpu {

struct DeviceInfo {
  std::string name;
  std::string arch;  // "sm_90" on CUDA, "gfx942" on HIP
  int64_t total_bytes = 0;
  int sm_count = 0;
  int warp_size = 0;
};

// "cuda" or "hip": what this binary was compiled for ("emulator" in the host emulator of test/emu).
const char* platform();
// Driver and runtime versions as the runtime reports them (for example "13.0").
std::string runtime_version();
std::string driver_version();
// Visible devices; 0 when the driver is missing or broken (never throws); device_error() then says why.
int device_count();
std::string device_error();
DeviceInfo device_info(int ordinal);
// Selects the device that following alloc/ops calls use (validated against device_count()).
void set_device(int ordinal);
int current_device();

// Synchronous copies between host memory and the current device.
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
// Waits for the current device's stream; throws the first asynchronous error as lorakit::Error.
void synchronize();

// Bytes handed out by alloc() and not released, and the peak since reset_peak(), on the current device.
size_t allocated_bytes();
size_t peak_bytes();
void reset_peak();
// Returns cached blocks to the driver.
void empty_cache();

// Which dense GEMM engine serves gemm(): "cublaslt" (with the library it loaded), "rocblas", or
// "fallback" (the hand-written kernel), and why a library was not used when it was not.
std::string gemm_engine();
// Forces the hand-written GEMM (for parity tests and benchmarks), or goes back to the library.
void set_gemm_fallback(bool on);

}  // namespace lorakit::gpu
