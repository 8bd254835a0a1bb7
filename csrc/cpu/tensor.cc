// Storage and element-wise tensor ops of the CPU backend: allocation, fill, arange, cast, and the
// counter-based random generator.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

#include "../ops.h"
#include "dtype.h"
#include "parallel.h"
#include "../philox.h"

namespace lorakit {

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U8: return "uint8";
  }
  return "unknown";
}

namespace cpu {

namespace {

// Host memory for tensors, kept in a cache of freed blocks by size so that a training step, which
// allocates the same sizes every step, reuses them. Large blocks (64 KiB and more) are mapped pages,
// reused without the page faults of fresh memory; blocks of 2 MiB and more are advised as huge pages.
// Small ones come from malloc, rounded up to a power of two, and are cached too: freed back to malloc,
// a block was split by the small allocations Node makes between two tensors (the N-API wrapper of each
// storage lives until the event loop turns), so every cycle of create/dispose took fresh pages and 20,000
// cycles of 16 KiB tensors grew resident memory by 300 MB with nothing live.
constexpr size_t kLarge = size_t{64} << 10;
constexpr size_t kHuge = size_t{2} << 20;
// Small blocks are many and cheap to make again, so their cache has a lower bound of its own.
constexpr size_t kSmallCacheLimit = size_t{64} << 20;

size_t cache_limit() {
  static const size_t limit = [] {
    const char* env = std::getenv("LORAKIT_HOST_CACHE_MB");
    long mb = env ? std::atol(env) : 1024;
    return static_cast<size_t>(mb < 0 ? 0 : mb) << 20;
  }();
  return limit;
}

// The size a request is served with: a power of two from 64 bytes below kLarge, whole 64 KiB above.
size_t block_size(size_t bytes) {
  if (bytes >= kLarge) return (bytes + kLarge - 1) / kLarge * kLarge;
  size_t size = 64;
  while (size < bytes) size <<= 1;
  return size;
}

struct HostCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0, small_cached = 0;
};

HostCache& cache() {
  static HostCache* c = new HostCache();  // never destroyed: blocks may be freed during process exit
  return *c;
}

void* map_block(size_t size) {
  if (size < kLarge) return std::aligned_alloc(64, size);
#if defined(__unix__) || defined(__APPLE__)
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  if (size >= kHuge) madvise(p, size, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return p;
#else
  return std::aligned_alloc(64, size);
#endif
}

void unmap_block(void* p, size_t size) {
#if defined(__unix__) || defined(__APPLE__)
  if (size >= kLarge) return void(munmap(p, size));
#endif
  (void)size;
  std::free(p);
}

}  // namespace

void* alloc(size_t bytes) {
  const size_t size = block_size(bytes);
  HostCache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.find(size);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      (size < kLarge ? c.small_cached : c.cached) -= size;
      return p;
    }
  }
  void* p = map_block(size);
  if (!p) {
    // Give the cache back and try once more before reporting.
    {
      std::lock_guard<std::mutex> lk(c.mu);
      for (auto& [sz, blocks] : c.free_blocks)
        for (void* b : blocks) unmap_block(b, sz);
      c.free_blocks.clear();
      c.cached = c.small_cached = 0;
    }
    p = map_block(size);
  }
  if (!p) throw Error("ERR_OUT_OF_MEMORY", "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  return p;
}

void release(void* ptr, size_t bytes) {
  if (!ptr) return;
  const size_t size = block_size(bytes);
  HostCache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    size_t& cached = size < kLarge ? c.small_cached : c.cached;
    const size_t limit = size < kLarge ? std::min(kSmallCacheLimit, cache_limit()) : cache_limit();
    if (cached + size <= limit) {
      c.free_blocks[size].push_back(ptr);
      cached += size;
      return;
    }
  }
  unmap_block(ptr, size);
}

size_t cached_bytes() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  return c.cached + c.small_cached;
}

namespace {

template <typename T>
void fill_typed(T* dst, int64_t n, T v) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) dst[i] = v;
  });
}

// Stores a double into element i of a buffer of dtype dt (floats round to nearest even).
inline void store_value(void* dst, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(v); break;
  }
}

inline double load_value(const void* src, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::I32: return static_cast<const int32_t*>(src)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(src)[i]);
    case DType::U8: return static_cast<const uint8_t*>(src)[i];
  }
  return 0;
}

}  // namespace

void fill(void* dst, DType dt, int64_t n, double value) {
  switch (dt) {
    case DType::F32: fill_typed(static_cast<float*>(dst), n, static_cast<float>(value)); break;
    case DType::BF16: fill_typed(static_cast<uint16_t*>(dst), n, f32_to_bf16(static_cast<float>(value))); break;
    case DType::F16: fill_typed(static_cast<uint16_t*>(dst), n, f32_to_f16(static_cast<float>(value))); break;
    case DType::I32: fill_typed(static_cast<int32_t*>(dst), n, static_cast<int32_t>(value)); break;
    case DType::I64: fill_typed(static_cast<int64_t*>(dst), n, static_cast<int64_t>(value)); break;
    case DType::U8: fill_typed(static_cast<uint8_t*>(dst), n, static_cast<uint8_t>(value)); break;
  }
}

void arange(void* dst, DType dt, int64_t n, double start, double step) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) store_value(dst, dt, i, start + step * static_cast<double>(i));
  });
}

void cast(const void* src, DType from, void* dst, DType to, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    if (from == to) {
      size_t s = dtype_size(from);
      std::memcpy(static_cast<char*>(dst) + b * s, static_cast<const char*>(src) + b * s, (e - b) * s);
      return;
    }
    // Integer to integer goes through int64 so large int64 values survive (double has 53 bits).
    bool ints = (from == DType::I32 || from == DType::I64 || from == DType::U8) &&
                (to == DType::I32 || to == DType::I64 || to == DType::U8);
    for (int64_t i = b; i < e; ++i) {
      if (ints) {
        int64_t v = from == DType::I64 ? static_cast<const int64_t*>(src)[i]
                                        : static_cast<int64_t>(load_value(src, from, i));
        if (to == DType::I64) static_cast<int64_t*>(dst)[i] = v;
        else if (to == DType::I32) static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v);
        else static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(v);
      } else if (to == DType::BF16 || to == DType::F16 || to == DType::F32) {
        // One rounding from the source value (every float source is exact in float32).
        float f = from == DType::I64 ? static_cast<float>(static_cast<const int64_t*>(src)[i])
                                     : static_cast<float>(load_value(src, from, i));
        store_value(dst, to, i, f);
      } else {
        // Float to integer truncates toward zero and saturates; NaN becomes 0 (no undefined casts).
        double v = load_value(src, from, i);
        double lo = to == DType::U8 ? 0.0 : to == DType::I32 ? -2147483648.0 : -9223372036854775808.0;
        double hi = to == DType::U8 ? 255.0 : to == DType::I32 ? 2147483647.0 : 9223372036854774784.0;
        store_value(dst, to, i, std::isnan(v) ? 0.0 : std::min(hi, std::max(lo, std::trunc(v))));
      }
    }
  });
}

// dst[r, :cols] (+)= src[r, :cols] between row-major buffers with their own row strides: column slices
// (splitting a fused q|k|v projection, and adding gradients back into it).
void copy2d(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows, int64_t cols, bool accumulate) {
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = src + r * src_ld;
      float* d = dst + r * dst_ld;
      if (accumulate)
        for (int64_t c = 0; c < cols; ++c) d[c] += s[c];
      else
        std::memcpy(d, s, sizeof(float) * cols);
    }
  });
}

// y += alpha * x
void axpy(float alpha, const float* x, float* y, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
  });
}

void rand_uniform(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) dst[i] = lo + (hi - lo) * unit_float(philox(seed, offset + i).v[0]);
  });
}

// Box-Muller on the first two words of each counter's output; u1 is in (0, 1] so the log is finite.
void rand_normal(float* dst, int64_t n, uint64_t seed, uint64_t offset, float mean, float std) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      PhiloxOut r = philox(seed, offset + i);
      double u1 = (static_cast<double>(r.v[0] >> 8) + 1.0) / 16777216.0;
      double u2 = static_cast<double>(r.v[1] >> 8) / 16777216.0;
      double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
      dst[i] = static_cast<float>(mean + std * z);
    }
  });
}

}  // namespace cpu
}  // namespace lorakit
