// What a test driver (test/emu/parity.cc) uses of the emulator beyond the CUDA API: buffers whose end is
// an inaccessible page, host arrays that kernels may not touch, the checks it found wanting, and fake
// vendor libraries. Plain C++: no CUDA names.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace emu {

// Device memory of exactly `bytes` (rounded up to 16) that ends where an inaccessible page begins, starting
// `misalign` bytes after a 16-byte boundary (4: float-aligned but not 16-byte aligned). Reading or writing
// past the end stops the process with a report naming the kernel.
void* device_alloc(size_t bytes, size_t misalign = 0);
void device_free(void* p);

// Host memory for arrays an op reads on the host (AdamWTensor lists, grad pointer lists, output scalars):
// inaccessible while a kernel runs, so a kernel that dereferences a host pointer is caught.
void* host_alloc(size_t bytes);
void host_free(void* p);

// Problems that do not fail a call but would be races or errors on a device: work on the legacy default
// stream, a synchronous copy into device memory while the backend's stream still has queued work, ...
// Each message once, with a count.
std::map<std::string, int> hazards();
void clear_hazards();

// Launches per kernel (the name as written at the launch, template arguments stripped), since start.
std::map<std::string, long> kernel_launches();

// Caps the device memory that cudaMalloc hands out (0: no cap beyond the emulated card's).
void set_memory_limit(size_t bytes);
size_t device_bytes_in_use();

// Registers a fake shared library: dlopen(name) succeeds and dlsym finds these symbols. Nothing else
// resolves through dlopen in the emulator.
void register_library(const std::string& name, const std::map<std::string, void*>& symbols);

// Queues `op` on a stream (a cudaStream_t) as device work: it runs in stream order with device memory
// accessible. Fake libraries compute through this, as the real ones run kernels.
void on_stream(void* stream, std::function<void()> op);

// The emulated warp width (LORAKIT_EMU_WARP) and the thread schedule in use (LORAKIT_EMU_SCHEDULE).
int warp_size();
std::string schedule();

}  // namespace emu
