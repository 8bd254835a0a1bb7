// The GPU backend's runtime: error reporting, one stream per device, a caching allocator, scratch
// buffers, the argument ring, and the device facts that backend() shows.
//
// Allocation: cudaMalloc/cudaFree synchronise the device and cost tens of microseconds, and a training
// step allocates the same sizes every step, so freed blocks are kept in a per-device cache keyed by their
// rounded size and handed out again. Every kernel and copy runs on the device's one stream, so a block
// released after its last use and reused by a later op is ordered behind that use without any event.
// When cudaMalloc fails, the cache is returned to the driver and the allocation tried once more before
// the caller gets ERR_OUT_OF_MEMORY with the sizes involved.
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common.cuh"
#include "device.h"

#ifdef LORAKIT_HIP
#define cudaMallocHost(p, n) hipHostMalloc((p), (n), 0)
#define cudaFreeHost hipHostFree
#define cudaEventDisableTiming hipEventDisableTiming
#define cudaEventCreateWithFlags hipEventCreateWithFlags
#endif

namespace lorakit::gpu {

namespace {

constexpr int kMaxDevices = 64;
// Sizes are rounded up to 512 bytes (cuBLASLt wants 16-byte aligned operands; cudaMalloc gives 256),
// and above 1 MiB to 64 KiB steps so that nearly equal sizes share cache entries.
size_t round_size(size_t bytes) {
  if (bytes == 0) return 512;
  if (bytes <= (1u << 20)) return (bytes + 511) / 512 * 512;
  return (bytes + 65535) / 65536 * 65536;
}

// Small per-op argument arrays (AdamW's tensor list, grad-norm pointers) travel through a pinned host
// ring and its device mirror: the copy is asynchronous, and a region of the ring is written again only
// after the event recorded behind its last copy has completed.
constexpr size_t kArgRing = 1u << 20;
constexpr int kArgFences = 8;

struct DeviceState {
  bool ready = false;
  cudaStream_t stream = nullptr;
  int sms = 0;
  std::multimap<size_t, void*> cache;  // rounded size -> free block
  size_t cached = 0, allocated = 0, peak = 0;
  std::vector<std::pair<void*, size_t>> scratch = std::vector<std::pair<void*, size_t>>(kScratchCount, {nullptr, 0});
  uint8_t* ring_host = nullptr;
  uint8_t* ring_dev = nullptr;
  size_t ring_pos = 0;
  cudaEvent_t fence[kArgFences] = {};
  int fence_next = 0;
};

DeviceState g_state[kMaxDevices];
thread_local int g_current = 0;

const char* error_code(cudaError_t e) {
  return e == cudaErrorMemoryAllocation ? "ERR_OUT_OF_MEMORY" : "ERR_GPU";
}

DeviceState& state() {
  DeviceState& s = g_state[g_current];
  if (!s.ready) {
    LK_CHECK(cudaSetDevice(g_current));
    LK_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    cudaDeviceProp p{};
    LK_CHECK(cudaGetDeviceProperties(&p, g_current));
    s.sms = p.multiProcessorCount;
    s.ready = true;
  }
  return s;
}

void* raw_alloc(DeviceState& s, size_t rounded) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, rounded);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&p, rounded);
  }
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    throw Error("ERR_OUT_OF_MEMORY", "out of GPU memory on device " + std::to_string(g_current) + ": asked for " +
                                         std::to_string(rounded) + " bytes with " + std::to_string(s.allocated) +
                                         " in use by lorakit, " + std::to_string(free_b) + " free of " +
                                         std::to_string(total_b));
  }
  check(e, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

}  // namespace

void fail(cudaError_t e, const char* what, const char* file, int line) {
  std::string where = file;
  size_t slash = where.find_last_of('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  throw Error(error_code(e), std::string(platform()) + " error " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                                 ") in " + what + " at " + where + ":" + std::to_string(line));
}

const char* platform() {
#if defined(LORAKIT_HIP)
  return "hip";
#elif defined(LORAKIT_EMU)
  return "emulator";
#else
  return "cuda";
#endif
}

namespace {
std::string version_string(int v) {
#ifdef LORAKIT_HIP
  // HIP encodes major*10000000 + minor*100000 + patch.
  return std::to_string(v / 10000000) + "." + std::to_string((v / 100000) % 100);
#else
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
#endif
}
}  // namespace

std::string runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    (void)cudaGetLastError();
    return "unknown";
  }
  return version_string(v);
}

std::string driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess || v == 0) {
    (void)cudaGetLastError();
    return "none";
  }
  return version_string(v);
}

namespace {
std::string g_device_error;
}

std::string device_error() { return g_device_error; }

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    g_device_error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    (void)cudaGetLastError();
    return 0;
  }
  return n < kMaxDevices ? n : kMaxDevices;
}

DeviceInfo device_info(int ordinal) {
  cudaDeviceProp p{};
  LK_CHECK(cudaGetDeviceProperties(&p, ordinal));
  DeviceInfo d;
  d.name = p.name;
#ifdef LORAKIT_HIP
  d.arch = p.gcnArchName;
#else
  d.arch = "sm_" + std::to_string(p.major * 10 + p.minor);
#endif
  d.total_bytes = static_cast<int64_t>(p.totalGlobalMem);
  d.sm_count = p.multiProcessorCount;
  d.warp_size = p.warpSize;
  return d;
}

void set_device(int ordinal) {
  if (ordinal < 0 || ordinal >= device_count())
    throw Error("ERR_DEVICE", "GPU device " + std::to_string(ordinal) + " does not exist (" +
                                  std::to_string(device_count()) + " visible)");
  if (ordinal != g_current || !g_state[ordinal].ready) {
    g_current = ordinal;
    LK_CHECK(cudaSetDevice(ordinal));
    state();
  }
}

int current_device() { return g_current; }

cudaStream_t stream() { return state().stream; }
int sm_count() { return state().sms; }

// LORAKIT_GPU_POISON=1 fills every allocation with 0xFF bytes (NaN as float, -1 as an integer), so a
// kernel that leaves an output element unwritten fails the parity tests instead of passing by luck.
static bool poison() {
  static const bool on = [] {
    const char* v = std::getenv("LORAKIT_GPU_POISON");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void* alloc(size_t bytes) {
  DeviceState& s = state();
  const size_t rounded = round_size(bytes);
  void* p = nullptr;
  auto it = s.cache.find(rounded);
  if (it != s.cache.end()) {
    p = it->second;
    s.cache.erase(it);
    s.cached -= rounded;
  } else {
    p = raw_alloc(s, rounded);
  }
  s.allocated += rounded;
  if (s.allocated > s.peak) s.peak = s.allocated;
  if (poison()) LK_CHECK(cudaMemsetAsync(p, 0xff, rounded, s.stream));
  return p;
}

void release(void* ptr, size_t bytes) {
  if (!ptr) return;
  DeviceState& s = state();
  const size_t rounded = round_size(bytes);
  s.cache.emplace(rounded, ptr);
  s.cached += rounded;
  s.allocated -= rounded;
}

size_t cached_bytes() { return state().cached; }
size_t allocated_bytes() { return state().allocated; }
size_t peak_bytes() { return state().peak; }
void reset_peak() {
  DeviceState& s = state();
  s.peak = s.allocated;
}

void empty_cache() {
  DeviceState& s = state();
  if (s.cache.empty()) return;
  // Queued kernels may still read blocks that were released behind them on the stream.
  LK_CHECK(cudaStreamSynchronize(s.stream));
  for (auto& [size, p] : s.cache) LK_CHECK(cudaFree(p));
  s.cache.clear();
  s.cached = 0;
}

void* scratch(int slot, size_t bytes) {
  DeviceState& s = state();
  auto& [p, have] = s.scratch[static_cast<size_t>(slot)];
  if (have < bytes) {
    // The old buffer goes back to the cache: stream order keeps it valid for kernels already queued.
    if (p) release(p, have);
    size_t want = round_size(bytes > have * 2 ? bytes : have * 2);
    p = alloc(want);
    have = want;
  }
  return p;
}

void* upload_args(const void* host, size_t bytes) {
  DeviceState& s = state();
  if (bytes > kArgRing / kArgFences) {
    // On the stream: the previous op's kernels may still be reading this scratch buffer. (The source is
    // pageable, so the call stages it before returning.)
    void* d = scratch(kScratchArgs, bytes);
    LK_CHECK(cudaMemcpyAsync(d, host, bytes, cudaMemcpyHostToDevice, s.stream));
    return d;
  }
  if (!s.ring_host) {
    LK_CHECK(cudaMallocHost(reinterpret_cast<void**>(&s.ring_host), kArgRing));
    s.ring_dev = static_cast<uint8_t*>(alloc(kArgRing));
    for (auto& f : s.fence) LK_CHECK(cudaEventCreateWithFlags(&f, cudaEventDisableTiming));
  }
  // The ring is cut into kArgFences equal regions; entering a region waits for the copy that last used it.
  const size_t region = kArgRing / kArgFences;
  size_t pos = (s.ring_pos + 255) / 256 * 256;
  if (pos / region != (pos + bytes - 1) / region || pos + bytes > kArgRing) pos = ((pos + region - 1) / region) * region;
  if (pos >= kArgRing) pos = 0;
  const int r = static_cast<int>(pos / region);
  if (pos % region == 0) LK_CHECK(cudaEventSynchronize(s.fence[r]));
  std::memcpy(s.ring_host + pos, host, bytes);
  LK_CHECK(cudaMemcpyAsync(s.ring_dev + pos, s.ring_host + pos, bytes, cudaMemcpyHostToDevice, s.stream));
  LK_CHECK(cudaEventRecord(s.fence[r], s.stream));
  s.ring_pos = pos + bytes;
  return s.ring_dev + pos;
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DeviceState& s = state();
  LK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s.stream));
  LK_CHECK(cudaStreamSynchronize(s.stream));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DeviceState& s = state();
  LK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s.stream));
  LK_CHECK(cudaStreamSynchronize(s.stream));
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  LK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void synchronize() { LK_CHECK(cudaStreamSynchronize(stream())); }

}  // namespace lorakit::gpu
