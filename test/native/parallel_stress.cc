// Stress test of the CPU thread pool (csrc/cpu/parallel.cc), built and run by test/parallel.test.ts.
// Many short regions back to back, from the main thread and from several other threads at once (as
// Node's worker_threads would call in), some nested and some throwing. Every region checks that each
// index of [0, n) was visited exactly once. A lost hand-off between two regions shows up as a hang,
// which the test's time limit turns into a failure; a part run twice or skipped shows up as a count.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/parallel.h"

using lorakit::cpu::parallel_for;

static std::atomic<long> failures{0};

// One region over n indices split into `parts`; returns false when some index was not visited once.
static bool region(int64_t n, int parts) {
  std::vector<std::atomic<int>> seen(n);
  for (auto& s : seen) s.store(0, std::memory_order_relaxed);
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1, std::memory_order_relaxed);
  }, parts);
  for (auto& s : seen)
    if (s.load() != 1) return false;
  return true;
}

static void hammer(int id, long regions) {
  for (long r = 0; r < regions; ++r) {
    int64_t n = 1 + (r * 7 + id) % 37;
    int parts = static_cast<int>(1 + (r + id) % 9);
    if (!region(n, parts)) failures.fetch_add(1);
    if (r % 97 == 0) {
      // A nested region runs inline in the part that opens it.
      std::atomic<int> inner{0};
      parallel_for(4, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i)
          parallel_for(5, [&](int64_t ib, int64_t ie, int) { inner.fetch_add(static_cast<int>(ie - ib)); });
      });
      if (inner.load() != 20) failures.fetch_add(1);
    }
    if (r % 211 == 0) {
      // An exception in one part reaches the caller, and the pool stays usable afterwards.
      bool caught = false;
      try {
        parallel_for(8, [&](int64_t b, int64_t, int) {
          if (b == 0) throw std::runtime_error("planted");
        }, 8);
      } catch (const std::runtime_error&) {
        caught = true;
      }
      if (!caught) failures.fetch_add(1);
    }
  }
}

int main(int argc, char** argv) {
  long regions = argc > 1 ? std::atol(argv[1]) : 100000;
  int callers = argc > 2 ? std::atoi(argv[2]) : 3;
  std::vector<std::thread> others;
  for (int t = 1; t <= callers; ++t) others.emplace_back(hammer, t, regions / 4);
  hammer(0, regions);
  for (auto& t : others) t.join();
  std::printf("threads=%d regions=%ld callers=%d failures=%ld\n", lorakit::cpu::num_threads(), regions, callers + 1,
              failures.load());
  return failures.load() == 0 ? 0 : 1;
}
