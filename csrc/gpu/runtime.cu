// The GPU backend's runtime: error reporting, one stream per device, a caching allocator, scratch
// buffers, the argument ring, and the device facts that backend() shows.
//
// Allocation: cudaMalloc/cudaFree synchronise the device and cost tens of microseconds, and a training
// step allocates the same sizes every step, so freed blocks are kept in a per-device cache keyed by their
// size class and handed out again. Every kernel and copy runs on the device's one stream, so a block
// released after its last use and reused by a later op is ordered behind that use without any event.
// Size classes (four per power of two, so at most 25% over a request) let the varying shapes of eval
// batches and packed sequences share blocks instead of each leaving its own exact size in the cache.
// When cudaMalloc fails, the cache is returned to the driver and the allocation tried once more before
// the caller gets ERR_OUT_OF_MEMORY with the sizes involved; empty_cache() between ops also returns the
// scratch buffers.
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
// The size class of a request: 512 bytes at least (cudaMalloc aligns to 256; cuBLASLt wants 16), then the
// next of p + p/4, p + p/2, p + 3p/4, 2p for the power of two p below the request.
size_t round_size(size_t bytes) {
  if (bytes <= 512) return 512;
  size_t p = 512;
  while (p * 2 < bytes) p *= 2;
  const size_t step = p / 4;
  return (bytes + step - 1) / step * step;
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

// Returns the cached blocks to the driver (not the scratch buffers: an op may be using them).
void drop_cache(DeviceState& s) {
  if (s.cache.empty()) return;
  // Queued kernels may still read blocks that were released behind them on the stream.
  LK_CHECK(cudaStreamSynchronize(s.stream));
  for (auto& [size, p] : s.cache) LK_CHECK(cudaFree(p));
  s.cache.clear();
  s.cached = 0;
}

void* raw_alloc(DeviceState& s, size_t rounded) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, rounded);
  if (e == cudaErrorMemoryAllocation && !s.cache.empty()) {
    // Under pressure the cache gives way, largest blocks first, only as far as the request needs: the
    // many small blocks a varying workload reuses most stay.
    (void)cudaGetLastError();
    LK_CHECK(cudaStreamSynchronize(s.stream));
    size_t freed = 0;
    while (!s.cache.empty() && freed < rounded) {
      auto last = std::prev(s.cache.end());
      LK_CHECK(cudaFree(last->second));
      freed += last->first;
      s.cached -= last->first;
      s.cache.erase(last);
    }
    e = cudaMalloc(&p, rounded);
  }
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    drop_cache(s);
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

namespace {
bool sync_each_op() {
  static const bool on = [] {
    const char* v = std::getenv("LORAKIT_GPU_SYNC");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}
}  // namespace

void fail(cudaError_t e, const char* what, const char* file, int line) {
  std::string where = file;
  size_t slash = where.find_last_of('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  std::string msg = std::string(platform()) + " error " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " +
                    what + " at " + where + ":" + std::to_string(line);
  // A fault inside a kernel reaches the host at the next synchronisation, whatever op that belongs to.
  if (!sync_each_op() && e != cudaErrorMemoryAllocation && std::strncmp(what, "launch of ", 10) != 0)
    msg += "; a kernel fault shows at the next synchronisation, so it may belong to an earlier op: rerun with "
           "LORAKIT_GPU_SYNC=1 to have the error name the kernel";
  throw Error(error_code(e), msg);
}

void launched(const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(e, (std::string("launch of ") + kernel).c_str(), file, line);
  if (!sync_each_op()) return;
  e = cudaStreamSynchronize(stream());
  if (e != cudaSuccess) fail(e, (std::string(kernel) + ", synchronised right after it by LORAKIT_GPU_SYNC=1").c_str(), file, line);
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

// What to do when the runtime sees no device, for the probe's report (backend().gpuUnavailableReason).
std::string no_device_advice(cudaError_t e) {
  const char* visible = std::getenv(std::strcmp(platform(), "hip") == 0 ? "HIP_VISIBLE_DEVICES" : "CUDA_VISIBLE_DEVICES");
  if (e == cudaErrorInsufficientDriver && driver_version() == "none")
    return std::string("no ") + (std::strcmp(platform(), "hip") == 0 ? "ROCm" : "NVIDIA") + " driver is installed";
  if (e == cudaErrorInsufficientDriver)
    return std::string("the driver supports ") + (std::strcmp(platform(), "hip") == 0 ? "HIP " : "CUDA ") +
           driver_version() + " but this addon carries the " + platform() + " " + runtime_version() +
           " runtime (CUDA 13 needs an R580 or newer NVIDIA driver): update the driver, or build the addon "
           "against the toolkit this driver supports (CUDA 12.4 or newer, ROCm 6 or newer) with `npm run build:gpu`";
  if (visible) return std::string("the visible-devices variable is set to '") + visible + "'";
  return "";
}

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    const std::string advice = no_device_advice(e);
    g_device_error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e) + (advice.empty() ? "" : "; " + advice);
    (void)cudaGetLastError();
    return 0;
  }
  if (n == 0) {
    const std::string advice = no_device_advice(cudaSuccess);
    g_device_error = "the runtime lists no device" + (advice.empty() ? "" : "; " + advice);
  }
  return n < kMaxDevices ? n : kMaxDevices;
}

DeviceInfo device_info(int ordinal) {
  cudaDeviceProp p{};
  LK_CHECK(cudaGetDeviceProperties(&p, ordinal));
  DeviceInfo d;
  d.name = p.name;
#if defined(LORAKIT_HIP)
  d.arch = p.gcnArchName;
#elif defined(LORAKIT_EMU)
  // The emulator plays an AMD card when it names a gfx architecture.
  d.arch = p.gcnArchName[0] ? p.gcnArchName : "sm_" + std::to_string(p.major * 10 + p.minor);
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
  // Between ops no scratch buffer is in use: they go back too, so a buffer grown for one large batch does
  // not stay for the rest of the run.
  for (auto& [p, have] : s.scratch)
    if (p) {
      release(p, have);
      p = nullptr;
      have = 0;
    }
  drop_cache(s);
}

void* scratch(int slot, size_t bytes) {
  DeviceState& s = state();
  auto& [p, have] = s.scratch[static_cast<size_t>(slot)];
  if (have < bytes) {
    // The old buffer goes back to the cache: stream order keeps it valid for kernels already queued. The
    // new one is the request's size class, whose headroom absorbs small growth.
    if (p) release(p, have);
    have = round_size(bytes);
    p = alloc(have);
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
