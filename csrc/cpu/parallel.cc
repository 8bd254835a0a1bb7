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

// One parallel region: its task and every counter it needs. Each region has its own counters, so a
// thread that is still leaving an earlier region can never take or finish a part of a later one (the
// hand-off bug of a shared next/pending pair reset between regions). The caller owns the region on its
// stack and frees it only once every thread that joined it has left (`users`).
struct Region {
  const std::function<void(int)>* task;
  int parts;
  std::atomic<int> next{0};     // the next part to take
  std::atomic<int> pending;     // parts not yet finished
  std::atomic<int> users{0};    // pool threads inside the region
  std::mutex error_mu;
  std::exception_ptr error;
  Region(const std::function<void(int)>* t, int p) : task(t), parts(p), pending(p) {}
};

class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
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
    std::lock_guard<std::mutex> one_region(region_mu_);  // one region at a time (worker_threads call in too)
    Region r(&task, parts);
    {
      std::lock_guard<std::mutex> lk(mu_);
      current_ = &r;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    // The caller takes parts too, so a busy pool never stalls a region.
    work(r);
    for (int i = 0; i < kSpin && r.pending.load(std::memory_order_acquire) != 0; ++i) pause();
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return r.pending.load(std::memory_order_acquire) == 0; });
      current_ = nullptr;  // no thread joins the region from here on
    }
    // Threads that joined find no part left and leave at once; none of them blocks on anything.
    while (r.users.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    if (r.error) std::rethrow_exception(r.error);
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

  void work(Region& r) {
    for (int p; (p = r.next.fetch_add(1, std::memory_order_relaxed)) < r.parts;) {
      in_region = true;
      try {
        (*r.task)(p);
      } catch (...) {
        std::lock_guard<std::mutex> lk(r.error_mu);
        if (!r.error) r.error = std::current_exception();
      }
      in_region = false;
      if (r.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      for (int i = 0; generation_.load(std::memory_order_acquire) == seen && i < kSpin; ++i) pause();
      Region* r;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
        if (stop_) return;
        seen = generation_.load(std::memory_order_relaxed);
        r = current_;  // null when the region already ended: nothing to join
        if (r) r->users.fetch_add(1, std::memory_order_relaxed);
      }
      if (!r) continue;
      work(*r);
      r->users.fetch_sub(1, std::memory_order_release);  // the last touch of r: the caller may free it now
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex region_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  Region* current_ = nullptr;  // guarded by mu_
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
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
