#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lorakit::cpu {
namespace {

thread_local bool in_region = false;

class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return size_; }

  void run(int parts, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> region(region_mu_);  // one parallel region at a time (worker_threads)
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = &task;
      parts_ = parts;
      next_.store(0);
      pending_.store(parts);
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    // The caller takes slices too, so a busy pool never stalls a region.
    for (int p; (p = next_.fetch_add(1)) < parts;) finish(p);
    for (int i = 0; i < kSpin && pending_.load(std::memory_order_acquire) != 0; ++i) pause();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return pending_.load() == 0; });
    }
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Regions come back to back (a GEMM opens several), and waking a sleeping thread costs tens of
  // microseconds on a virtual machine, so threads poll briefly before they block.
  static constexpr int kSpin = 20000;
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  void execute(int part) {
    in_region = true;
    try {
      (*task_)(part);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
    in_region = false;
  }
  void finish(int part) {
    execute(part);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);
      done_cv_.notify_one();
    }
  }
  void loop(int) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int i = 0; g == seen && i < kSpin; ++i) {
        pause();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_.load() != seen; });
        if (stop_) return;
        g = generation_.load();
      }
      seen = g;
      for (int p; (p = next_.fetch_add(1)) < parts_;) finish(p);
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex region_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  int parts_ = 0;
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  std::exception_ptr error_;
};

int configured_threads() {
  if (const char* env = std::getenv("LORAKIT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return std::min(n, 256);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock.
  static Pool* p = new Pool(configured_threads());
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int parts) {
  if (n <= 0) return;
  if (parts <= 0) parts = num_threads();
  parts = static_cast<int>(std::min<int64_t>(parts, n));
  if (parts == 1 || in_region) {
    fn(0, n, 0);
    return;
  }
  pool().run(parts, [&](int p) {
    int64_t begin = n * p / parts, end = n * (p + 1) / parts;
    if (begin < end) fn(begin, end, p);
  });
}

}  // namespace lorakit::cpu
