// The emulator behind cuda_runtime.h: device threads as fibers, warps and barriers, streams as queues,
// device memory guarded by inaccessible pages, and the checks that turn what would be undefined
// behaviour on a device into a report. Built once per warp width (LORAKIT_EMU_WARP).
#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700   // the ucontext calls (deprecated there, still present)
#define _DARWIN_C_SOURCE 1  // and, with it, the BSD names (MAP_ANONYMOUS, ...)
#endif
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "emu_control.h"

#if !defined(LORAKIT_EMU_WARP) || (LORAKIT_EMU_WARP != 32 && LORAKIT_EMU_WARP != 64)
#error "build with -DLORAKIT_EMU_WARP=32 or 64"
#endif

const int warpSize = LORAKIT_EMU_WARP;

// The kernels may be built with UBSan (build.mjs): a report aborts, and the fault handler then names the
// kernel, block and thread.
extern "C" const char* __ubsan_default_options() { return "abort_on_error=1:print_summary=0"; }

namespace emu {

ThreadId* current = nullptr;
uint3 block_index{0, 0, 0};
dim3 block_dim, grid_dim;

int warp_size() { return LORAKIT_EMU_WARP; }

namespace {

constexpr int kWarp = LORAKIT_EMU_WARP;
constexpr bool kAmd = kWarp == 64;
// Shared memory a block may use: 48 KiB without the opt-in attribute on NVIDIA (227 KiB with it, sm_90);
// 64 KiB of LDS per workgroup on CDNA.
constexpr size_t kSharedDefault = kAmd ? 64u << 10 : 48u << 10;
constexpr size_t kSharedOptin = kAmd ? 64u << 10 : 227u << 10;
constexpr size_t kDefaultMemory = size_t{80} << 30;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}
size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

std::string env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

const std::string& schedule_name() {
  static const std::string s = [] {
    std::string v = env("LORAKIT_EMU_SCHEDULE", "shuffle");
    if (v != "forward" && v != "reverse" && v != "shuffle" && v != "warps") {
      std::fprintf(stderr, "emu: LORAKIT_EMU_SCHEDULE must be forward, reverse, shuffle or warps, not %s\n", v.c_str());
      std::exit(2);
    }
    return v;
  }();
  return s;
}

std::mt19937_64& rng() {
  static std::mt19937_64 r(std::stoull(env("LORAKIT_EMU_SEED", "1")));
  return r;
}

// ---- errors -----------------------------------------------------------------------------------------
cudaError_t g_last = cudaSuccess;   // the next cudaGetLastError's answer
cudaError_t g_async = cudaSuccess;  // a failed kernel, for the next synchronising call
std::map<int, std::string> g_messages;
std::map<std::string, int> g_hazards;
std::map<std::string, long> g_launches;

cudaError_t raise(cudaError_t e, const std::string& why) {
  g_last = e;
  g_messages[e] = why;
  return e;
}

cudaError_t take_async() {
  const cudaError_t e = g_async;
  g_async = cudaSuccess;
  return e;
}

void hazard(const std::string& what) { ++g_hazards[what]; }

// ---- memory -----------------------------------------------------------------------------------------
// Every buffer is its own mapping whose last page is inaccessible; the user range ends at most 15 bytes
// (cudaMalloc: 255) before it. Device buffers are inaccessible to the host: while a kernel or a runtime
// copy runs, the first touch of one faults and the handler opens it (until the work ends); from host code
// the fault is reported. Host arrays registered by the test are closed while kernels run.
enum class Kind { Device, Pinned, Host };
struct Region {
  char* base;
  size_t map_len;
  char* user;
  size_t bytes;
  Kind kind;
};
std::map<uintptr_t, Region> g_regions;  // by user address
std::set<const Region*> g_host_regions;
size_t g_in_use = 0, g_limit = 0;
// Shared with the fault handler: volatile, or the compiler may move them across the accesses that fault.
volatile int g_device_open = 0;
const Region* volatile g_opened[1 << 16];  // device regions opened by faults during the current device work
volatile size_t g_opened_count = 0;
#ifdef LORAKIT_EMU_ADDON
// Inside Node (the emulated addon), V8 owns the fault signals (WebAssembly bounds checks use them), so
// device memory stays ordinary memory and no handler is installed: the parity binaries do those checks.
bool g_protect = false;
#else
bool g_protect = env("LORAKIT_EMU_PROTECT", "1") != "0";
#endif

size_t data_len(const Region& r) { return r.map_len - page_size(); }

void set_access(const Region& r, bool on) {
  if (g_protect) mprotect(r.base, data_len(r), on ? PROT_READ | PROT_WRITE : PROT_NONE);
}

// The region whose mapping holds p (user range, slack or guard page).
const Region* mapping_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_regions.upper_bound(a);
  for (int i = 0; i < 2; ++i) {
    if (it != g_regions.end()) {
      const Region& r = it->second;
      if (a >= reinterpret_cast<uintptr_t>(r.base) && a < reinterpret_cast<uintptr_t>(r.base) + r.map_len) return &r;
    }
    if (it == g_regions.begin()) break;
    --it;
  }
  return nullptr;
}

// The region whose user range holds p, or null.
const Region* region_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_regions.upper_bound(a);
  if (it == g_regions.begin()) return nullptr;
  --it;
  const Region& r = it->second;
  return a < reinterpret_cast<uintptr_t>(r.user) + r.bytes ? &r : nullptr;
}

void* map_region(size_t bytes, size_t align, size_t misalign, Kind kind) {
  const size_t cap = round_up(misalign + bytes, align), len = round_up(cap, page_size()) + page_size();
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  Region r{static_cast<char*>(m), len, nullptr, bytes, kind};
  mprotect(r.base + data_len(r), page_size(), PROT_NONE);
  r.user = r.base + data_len(r) - cap + misalign;
  std::memset(r.base, 0xff, data_len(r));  // fresh device memory is garbage; NaN shows where it is read
  if (kind == Kind::Device) {
    g_in_use += len;
    set_access(r, false);
  }
  auto it = g_regions.emplace(reinterpret_cast<uintptr_t>(r.user), r).first;
  if (kind == Kind::Host) g_host_regions.insert(&it->second);
  return r.user;
}

// Freed buffers stay reserved and inaccessible for a while (their pages returned to the system), so that
// the next allocations get other addresses and a stale pointer faults instead of reading a new buffer.
constexpr size_t kQuarantine = 512;
std::deque<Region> g_freed;

void unmap_region(const Region& r) {
  if (r.kind == Kind::Device) g_in_use -= r.map_len;
  for (size_t i = 0; i < g_opened_count; ++i)
    if (g_opened[i] == &r) {
      g_opened_count = g_opened_count - 1;
      g_opened[i] = g_opened[g_opened_count];
    }
  g_host_regions.erase(&r);
  mmap(r.base, r.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  g_freed.push_back(r);
  if (g_freed.size() > kQuarantine) {
    munmap(g_freed.front().base, g_freed.front().map_len);
    g_freed.pop_front();
  }
  g_regions.erase(reinterpret_cast<uintptr_t>(r.user));
}

// Marks device work (a kernel, a copy) in progress: device buffers it touches are opened by the fault
// handler and closed again when the outermost work ends.
struct DeviceAccess {
  DeviceAccess() { g_device_open = g_device_open + 1; }
  ~DeviceAccess() {
    g_device_open = g_device_open - 1;
    if (g_device_open > 0) return;
    for (size_t i = 0; i < g_opened_count; ++i) set_access(*g_opened[i], false);
    g_opened_count = 0;
  }
};

void host_access(bool on) {
  for (const Region* r : g_host_regions) set_access(*r, on);
}

// ---- streams ----------------------------------------------------------------------------------------
struct Stream {
  std::deque<std::pair<uint64_t, std::function<void()>>> queue;
  uint64_t next = 1;
};
struct Event {
  Stream* stream = nullptr;
  uint64_t seq = 0;
};
std::set<Stream*> g_streams;
std::set<Event*> g_events;

Stream* stream_of(cudaStream_t s) {
  auto* p = reinterpret_cast<Stream*>(s);
  return g_streams.count(p) ? p : nullptr;
}

size_t queued() {
  size_t n = 0;
  for (Stream* s : g_streams) n += s->queue.size();
  return n;
}

void flush(Stream* s, uint64_t upto = UINT64_MAX) {
  while (!s->queue.empty() && s->queue.front().first <= upto) {
    auto op = std::move(s->queue.front());
    s->queue.pop_front();
    op.second();
  }
}

void flush_all() {
  for (Stream* s : g_streams) flush(s);
}

// Runs `op` in stream order; on the legacy default stream (null) it runs now, unordered with stream().
void enqueue(cudaStream_t s, const std::string& what, std::function<void()> op) {
  if (!s) {
    hazard(what + " on the legacy default stream, which is not ordered with the backend's non-blocking stream");
    op();
    return;
  }
  Stream* st = stream_of(s);
  st->queue.emplace_back(st->next++, std::move(op));
}

// ---- fibers -----------------------------------------------------------------------------------------
constexpr size_t kStack = 256u << 10;

struct Fiber {
  jmp_buf jb;
  char* stack = nullptr;  // lowest page inaccessible
  bool parked = false;    // waiting at the top of its loop for the next thread to run
};

Fiber* g_fibers[1024];
jmp_buf g_sched;
Fiber* g_creating = nullptr;
Fiber* g_running = nullptr;
const std::function<void()>* g_body = nullptr;
void thread_done();

void fiber_main() {
  Fiber* self = g_creating;
  if (_setjmp(self->jb) == 0) _longjmp(g_sched, 1);
  for (;;) {
    (*g_body)();
    thread_done();
    self->parked = true;
    if (_setjmp(self->jb) == 0) _longjmp(g_sched, 1);
  }
}

// Thread t's fiber, parked at the top of its loop: new, or rebuilt after it was abandoned mid-kernel.
Fiber& parked_fiber(int t) {
  Fiber*& f = g_fibers[t];
  if (!f) {
    f = new Fiber;
    void* m = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "emu: cannot map a fiber stack\n");
      std::_Exit(70);
    }
    f->stack = static_cast<char*>(m);
    mprotect(f->stack, page_size(), PROT_NONE);
  }
  if (!f->parked) {
    ucontext_t uc;
    getcontext(&uc);
    uc.uc_stack.ss_sp = f->stack;
    uc.uc_stack.ss_size = kStack;
    uc.uc_link = nullptr;
    makecontext(&uc, fiber_main, 0);
    g_creating = f;
    if (_setjmp(g_sched) == 0) setcontext(&uc);
    f->parked = true;
  }
  return *f;
}

// ---- blocks -----------------------------------------------------------------------------------------
enum class St { Ready, Barrier, Warp, Done };
enum class Coll { Shuffle, Vote, Sync };

struct Thread {
  ThreadId id;
  St st;
  Where site;
  Coll coll;
  Shfl kind;
  int arg, width;
  unsigned mask;
  uint64_t value, result;
};

struct Warp {
  int size, live, arrived;
};

struct Kernel {
  Site site;
  dim3 grid, block;
  size_t smem;
  std::function<void()> thread;
};

const Kernel* volatile g_kernel = nullptr;
std::vector<Thread> g_threads;
std::vector<Warp> g_warps;
int g_live = 0, g_at_barrier = 0, g_running_tid = -1;
std::string g_abort;  // why the running block stopped
std::vector<std::pair<void*, size_t>> g_shared;  // the block's __shared__ variables
size_t g_static_shared = 0;
// Shared memory starts as 0xff bytes (NaN, -1) in even blocks and 0x7f bytes (3.4e38, a large positive
// integer) in odd ones: NaN alone would pass unseen through fmaxf and comparisons.
uint8_t g_poison = 0xff;
uint64_t g_blocks_run = 0;
size_t g_optin = 0;  // the largest dynamic shared memory any kernel was allowed by cudaFuncSetAttribute
char* g_dynamic = nullptr;  // the launch's dynamic shared memory, ending at an inaccessible page
size_t g_dynamic_len = 0, g_dynamic_map = 0;
char g_where[512];  // the running kernel, for crash reports

std::string lanes_text(const std::vector<int>& ts) {
  std::string s;
  for (size_t i = 0; i < ts.size();) {
    size_t j = i;
    while (j + 1 < ts.size() && ts[j + 1] == ts[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(ts[i]) + (j > i ? "-" + std::to_string(ts[j]) : "");
    i = j + 1;
  }
  return s;
}

std::string code_site(Where w) { return std::string(w.file) + ":" + std::to_string(w.line); }
bool same_site(Where a, Where b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

// Stops the running block from inside a device thread; its fiber is abandoned (and rebuilt when needed).
[[noreturn]] void fail_here(const std::string& why) {
  g_abort = why;
  g_running->parked = false;
  _longjmp(g_sched, 1);
}

void release_barrier_if_complete() {
  if (g_at_barrier == 0 || g_at_barrier < g_live) return;
  const Where* first = nullptr;
  bool divergent = false;
  for (const Thread& th : g_threads)
    if (th.st == St::Barrier) {
      if (!first) first = &th.site;
      else divergent = divergent || !same_site(th.site, *first);
    }
  if (divergent) {
    std::map<std::string, std::vector<int>> where;
    for (size_t t = 0; t < g_threads.size(); ++t)
      if (g_threads[t].st == St::Barrier) where[code_site(g_threads[t].site)].push_back(static_cast<int>(t));
    std::string s = "__syncthreads reached from different places (divergent barrier):";
    for (const auto& [p, ts] : where) s += " threads " + lanes_text(ts) + " at " + p + ";";
    g_abort = s;
    return;
  }
  for (Thread& th : g_threads)
    if (th.st == St::Barrier) th.st = St::Ready;
  g_at_barrier = 0;
}

int segment_source(const Thread& th, int lane) {
  const int w = th.width, base = lane & ~(w - 1);
  switch (th.kind) {
    case Shfl::Idx: return base + (th.arg & (w - 1));
    case Shfl::Up: return lane - th.arg < base ? lane : lane - th.arg;
    case Shfl::Down: return lane + th.arg >= base + w ? lane : lane + th.arg;
    case Shfl::Xor: return (lane ^ th.arg) >= base + w ? lane : lane ^ th.arg;
  }
  return lane;
}

// All live lanes of warp w have arrived at a collective: check that it is one collective, then deliver.
void release_warp(int w) {
  Warp& W = g_warps[static_cast<size_t>(w)];
  const int first = w * kWarp;
  std::vector<int> lanes;
  for (int l = 0; l < W.size; ++l)
    if (g_threads[static_cast<size_t>(first + l)].st == St::Warp) lanes.push_back(l);
  const Thread& t0 = g_threads[static_cast<size_t>(first + lanes[0])];
  const auto where = [&] {
    return "warp " + std::to_string(w) + " (threads " + std::to_string(first) + "-" + std::to_string(first + W.size - 1) + ")";
  };
  uint64_t live_bits = 0;
  for (int l : lanes) live_bits |= uint64_t{1} << l;
  for (int l : lanes) {
    const Thread& th = g_threads[static_cast<size_t>(first + l)];
    if (!same_site(th.site, t0.site) || th.coll != t0.coll || th.kind != t0.kind || th.width != t0.width) {
      g_abort = where() + ": lanes wait at different warp collectives (lane " + std::to_string(lanes[0]) + " at " +
                code_site(t0.site) + ", lane " + std::to_string(l) + " at " + code_site(th.site) + ")";
      return;
    }
    // The mask must name every lane that takes part; HIP ignores it (64-bit wavefronts).
    if (!kAmd && (th.mask & live_bits) != live_bits) {
      g_abort = where() + ": mask 0x" + [&] {
        char b[16];
        std::snprintf(b, sizeof b, "%x", th.mask);
        return std::string(b);
      }() + " leaves out lanes that take part in the collective at " + code_site(th.site);
      return;
    }
    if (th.coll == Coll::Shuffle && (th.width <= 0 || th.width > kWarp || (th.width & (th.width - 1)))) {
      g_abort = where() + ": shuffle width " + std::to_string(th.width) + " is not a power of two up to warpSize";
      return;
    }
  }
  uint64_t ballot = 0;
  for (int l : lanes) ballot |= (g_threads[static_cast<size_t>(first + l)].value ? uint64_t{1} : 0) << l;
  for (int l : lanes) {
    Thread& th = g_threads[static_cast<size_t>(first + l)];
    if (th.coll == Coll::Vote) {
      th.result = ballot;
    } else if (th.coll == Coll::Shuffle) {
      const int src = segment_source(th, l);
      if (src >= W.size || src < 0) {
        g_abort = where() + ": lane " + std::to_string(l) + " shuffles from lane " + std::to_string(src) +
                  ", which does not exist (the block has " + std::to_string(g_threads.size()) + " threads), at " +
                  code_site(th.site);
        return;
      }
      const Thread& from = g_threads[static_cast<size_t>(first + src)];
      if (from.st != St::Warp) {
        g_abort = where() + ": lane " + std::to_string(l) + " shuffles from lane " + std::to_string(src) +
                  ", which has exited, at " + code_site(th.site);
        return;
      }
      th.result = from.value;
    }
  }
  for (int l : lanes) g_threads[static_cast<size_t>(first + l)].st = St::Ready;
  W.arrived = 0;
}

void yield() {
  Fiber& f = *g_running;
  if (_setjmp(f.jb) == 0) _longjmp(g_sched, 1);
}

uint64_t collective(Coll coll, Shfl kind, int arg, int width, unsigned mask, uint64_t value, Where site) {
  if (!g_kernel) {
    std::fprintf(stderr, "emu: a warp collective outside a kernel\n");
    std::_Exit(70);
  }
  Thread& th = g_threads[static_cast<size_t>(g_running_tid)];
  th.st = St::Warp;
  th.coll = coll;
  th.kind = kind;
  th.arg = arg;
  th.width = width;
  th.mask = mask;
  th.value = value;
  th.site = site;
  const int w = g_running_tid / kWarp;
  Warp& W = g_warps[static_cast<size_t>(w)];
  if (++W.arrived == W.live) release_warp(w);
  if (!g_abort.empty()) fail_here(g_abort);
  yield();
  return th.result;
}

void thread_done() {
  Thread& th = g_threads[static_cast<size_t>(g_running_tid)];
  th.st = St::Done;
  --g_live;
  Warp& W = g_warps[static_cast<size_t>(g_running_tid / kWarp)];
  --W.live;
  if (W.arrived > 0 && W.arrived == W.live) release_warp(g_running_tid / kWarp);
  release_barrier_if_complete();
}

// Thread (or warp) order of one sweep: as numbered, reversed, or random (shuffle, warps).
void order(std::vector<int>& v, size_t n) {
  v.resize(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int>(i);
  if (schedule_name() == "reverse") std::reverse(v.begin(), v.end());
  else if (schedule_name() != "forward") std::shuffle(v.begin(), v.end(), rng());
}

// Runs every thread of the current block to its end; false with g_abort set when it cannot.
bool run_block() {
  const dim3 b = block_dim;
  const int nt = static_cast<int>(b.x * b.y * b.z);
  g_threads.assign(static_cast<size_t>(nt), Thread{});
  for (int t = 0; t < nt; ++t) {
    Thread& th = g_threads[static_cast<size_t>(t)];
    th.id.idx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
    th.st = St::Ready;
  }
  g_warps.assign(static_cast<size_t>((nt + kWarp - 1) / kWarp), Warp{});
  for (size_t w = 0; w < g_warps.size(); ++w) {
    const int size = std::min(kWarp, nt - static_cast<int>(w) * kWarp);
    g_warps[w] = Warp{size, size, 0};
  }
  g_live = nt;
  g_at_barrier = 0;
  g_shared.clear();
  g_static_shared = 0;
  g_poison = g_blocks_run++ % 2 ? 0x7f : 0xff;
  if (g_dynamic_len) std::memset(g_dynamic, g_poison, g_dynamic_len);
  for (int t = 0; t < nt; ++t) parked_fiber(t);
  // Runs thread t until it blocks or ends; false when the block must stop.
  auto step = [&](int t) {
    g_running_tid = t;
    current = &g_threads[static_cast<size_t>(t)].id;
    g_running = g_fibers[t];
    g_running->parked = false;
    if (_setjmp(g_sched) == 0) _longjmp(g_running->jb, 1);
    return g_abort.empty();
  };
  const bool by_warp = schedule_name() == "warps";
  std::vector<int> sweep, lanes;
  while (g_live > 0) {
    bool progressed = false;
    if (by_warp) {
      // One warp at a time, as far as it gets (to a __syncthreads the others have not reached, or its end):
      // the largest skew between warps that the barriers allow.
      order(sweep, g_warps.size());
      for (int w : sweep)
        for (bool more = true; more;) {
          more = false;
          order(lanes, static_cast<size_t>(g_warps[static_cast<size_t>(w)].size));
          for (int l : lanes) {
            const int t = w * kWarp + l;
            if (g_threads[static_cast<size_t>(t)].st != St::Ready) continue;
            more = progressed = true;
            if (!step(t)) return false;
          }
        }
    } else {
      order(sweep, static_cast<size_t>(nt));
      for (int t : sweep) {
        if (g_threads[static_cast<size_t>(t)].st != St::Ready) continue;
        progressed = true;
        if (!step(t)) return false;
      }
    }
    if (!progressed) {
      std::map<std::string, std::vector<int>> groups;
      for (int t = 0; t < nt; ++t) {
        const Thread& th = g_threads[static_cast<size_t>(t)];
        if (th.st == St::Barrier) groups["__syncthreads at " + code_site(th.site)].push_back(t);
        else if (th.st == St::Warp) groups["a warp collective at " + code_site(th.site)].push_back(t);
      }
      std::string s = "deadlock: no thread can proceed;";
      for (const auto& [what, ts] : groups) s += " threads " + lanes_text(ts) + " wait at " + what + ";";
      g_abort = s + " (a barrier or collective that not every thread reaches)";
      return false;
    }
  }
  return true;
}

std::string base_name(const char* kernel);

void execute(const Kernel& k) {
  DeviceAccess open;
  host_access(false);
  g_kernel = &k;
  block_dim = k.block;
  grid_dim = k.grid;
  const size_t len = round_up(k.smem, 16);
  g_dynamic_map = round_up(len, page_size()) + page_size();
  void* m = mmap(nullptr, g_dynamic_map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  mprotect(static_cast<char*>(m) + g_dynamic_map - page_size(), page_size(), PROT_NONE);
  g_dynamic = static_cast<char*>(m) + g_dynamic_map - page_size() - len;
  g_dynamic_len = len;

  const uint64_t nb = uint64_t{k.grid.x} * k.grid.y * k.grid.z;
  std::vector<uint64_t> blocks;
  const bool permute = schedule_name() != "forward" && nb <= (uint64_t{1} << 22);
  if (permute) {
    blocks.resize(nb);
    for (uint64_t i = 0; i < nb; ++i) blocks[i] = i;
    if (schedule_name() == "reverse") std::reverse(blocks.begin(), blocks.end());
    else std::shuffle(blocks.begin(), blocks.end(), rng());
  }
  std::string failure;
  for (uint64_t i = 0; i < nb && failure.empty(); ++i) {
    const uint64_t b = permute ? blocks[i] : i;
    block_index = uint3{static_cast<unsigned>(b % k.grid.x), static_cast<unsigned>((b / k.grid.x) % k.grid.y),
                        static_cast<unsigned>(b / (uint64_t{k.grid.x} * k.grid.y))};
    std::snprintf(g_where, sizeof g_where, "kernel %s (launched at %s:%d) block (%u,%u,%u)", k.site.kernel, k.site.file,
                  k.site.line, block_index.x, block_index.y, block_index.z);
    g_abort.clear();
    if (!run_block()) {
      failure = g_abort;  // threads left mid-kernel keep parked == false: their fibers are rebuilt
    } else if (g_static_shared + k.smem > std::max(kSharedDefault, g_optin)) {
      failure = "uses " + std::to_string(g_static_shared) + " bytes of static and " + std::to_string(k.smem) +
                " of dynamic shared memory, more than a block gets (" + std::to_string(std::max(kSharedDefault, g_optin)) + ")";
    }
    if (!failure.empty())
      failure = std::string(k.site.kernel) + " (launched at " + k.site.file + ":" + std::to_string(k.site.line) +
                ") block (" + std::to_string(block_index.x) + "," + std::to_string(block_index.y) + "," +
                std::to_string(block_index.z) + "): " + failure;
  }
  // LORAKIT_EMU_FAULT=<kernel> plays an asynchronous fault in that kernel (say an illegal address): it is
  // reported at the next synchronising call, as on a device, whichever op that belongs to.
  if (failure.empty() && base_name(k.site.kernel) == env("LORAKIT_EMU_FAULT", "")) {
    g_async = cudaErrorIllegalAddress;
    g_messages[cudaErrorIllegalAddress] = "an illegal memory access was encountered (injected by LORAKIT_EMU_FAULT)";
  }
  munmap(m, g_dynamic_map);
  g_dynamic = nullptr;
  g_dynamic_len = 0;
  g_kernel = nullptr;
  current = nullptr;
  g_where[0] = 0;
  host_access(true);
  if (!failure.empty()) {
    g_async = cudaErrorLaunchFailure;
    g_messages[cudaErrorLaunchFailure] = failure;
  }
}

std::string base_name(const char* kernel) {
  std::string s;
  int depth = 0;
  for (const char* p = kernel; *p; ++p) {
    if (*p == '<') ++depth;
    else if (*p == '>') --depth;
    else if (depth == 0 && *p != ' ' && *p != '\n') s += *p;
  }
  return s;
}

// ---- crash reports ----------------------------------------------------------------------------------
void on_fault(int sig, siginfo_t* info, void*) {
  char msg[1024];
  const void* addr = info->si_addr;
  const Region* r = mapping_of(addr);
  if ((sig == SIGSEGV || sig == SIGBUS) && r && r->kind == Kind::Device && g_device_open > 0 &&
      static_cast<const char*>(addr) < r->base + data_len(*r) && g_opened_count < sizeof g_opened / sizeof g_opened[0]) {
    set_access(*r, true);  // device work touching a device buffer: open it and retry the access
    g_opened[g_opened_count] = r;
    g_opened_count = g_opened_count + 1;
    return;
  }
  const char* what = "invalid memory access";
  char detail[256] = "";
  if (r) {
    const long off = static_cast<long>(static_cast<const char*>(addr) - r->user);
    const char* kind = r->kind == Kind::Device ? "device" : r->kind == Kind::Host ? "host" : "pinned host";
    if (static_cast<const char*>(addr) >= r->base + data_len(*r) || off < 0)
      what = "access outside a buffer";
    else if (r->kind == Kind::Device)
      what = "host code dereferenced device memory";
    else if (r->kind == Kind::Host && g_kernel)
      what = "a kernel dereferenced host memory";
    std::snprintf(detail, sizeof detail, " (byte %ld of a %zu-byte %s buffer)", off, r->bytes, kind);
  } else {
    for (const Region& f : g_freed)
      if (static_cast<const char*>(addr) >= f.base && static_cast<const char*>(addr) < f.base + f.map_len) {
        what = "use of a freed buffer";
        std::snprintf(detail, sizeof detail, " (byte %ld of a %zu-byte buffer)", static_cast<long>(static_cast<const char*>(addr) - f.user), f.bytes);
      }
    for (Fiber* f : g_fibers)
      if (f && addr >= f->stack && addr < f->stack + page_size()) what = "device thread stack overflow";
    if (g_dynamic && addr >= g_dynamic + g_dynamic_len && addr < g_dynamic + g_dynamic_len + page_size())
      what = "access past the end of dynamic shared memory";
  }
  if (sig != SIGSEGV && sig != SIGBUS)
    what = sig == SIGFPE ? "arithmetic exception" : sig == SIGABRT ? "abort (see the message above)" : "fatal signal";
  if (g_kernel && current)
    std::snprintf(msg, sizeof msg, "\nemu: %s at %p%s in %s thread (%u,%u,%u)\n", what, addr, detail, g_where,
                  current->idx.x, current->idx.y, current->idx.z);
  else
    std::snprintf(msg, sizeof msg, "\nemu: %s at %p%s in %s (signal %d)\n", what, addr, detail,
                  g_device_open > 0 ? "a copy or library call queued on a stream" : "host code", sig);
  ssize_t ignored = write(2, msg, std::strlen(msg));
  (void)ignored;
  std::_Exit(128 + sig);
}

struct Init {
  Init() {
#ifdef LORAKIT_EMU_ADDON
    return;
#endif
    static char alt[1 << 16];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(s, &sa, nullptr);
  }
} g_init;

// ---- fake libraries ---------------------------------------------------------------------------------
std::map<std::string, std::map<std::string, void*>> g_libraries;
std::string g_dl_error;
bool g_dl_error_set = false;

// ---- copies -----------------------------------------------------------------------------------------
enum class Mem { Device, Pinned, Pageable };

// What [p, p + n) is; a device range that leaves its buffer is an error.
bool classify(const void* p, size_t n, Mem& m, std::string& why) {
  const Region* r = region_of(p);
  if (!r) {
    const Region* any = mapping_of(p);
    if (any && any->kind == Kind::Device) {
      why = "a device pointer outside its buffer";
      return false;
    }
    m = Mem::Pageable;
    return true;
  }
  if (static_cast<const char*>(p) + n > r->user + r->bytes) {
    why = std::to_string(n) + " bytes from byte " + std::to_string(static_cast<const char*>(p) - r->user) + " of a " +
          std::to_string(r->bytes) + "-byte buffer run past its end";
    return false;
  }
  m = r->kind == Kind::Device ? Mem::Device : r->kind == Kind::Pinned ? Mem::Pinned : Mem::Pageable;
  return true;
}

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    default: return "cudaMemcpyDefault";
  }
}

cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, Mem& md, Mem& ms) {
  std::string why;
  if (!classify(dst, n, md, why)) return raise(cudaErrorInvalidValue, std::string(kind_name(kind)) + ": destination: " + why);
  if (!classify(src, n, ms, why)) return raise(cudaErrorInvalidValue, std::string(kind_name(kind)) + ": source: " + why);
  const bool dd = md == Mem::Device, sd = ms == Mem::Device;
  const bool ok = kind == cudaMemcpyDefault || (kind == cudaMemcpyHostToDevice && dd && !sd) ||
                  (kind == cudaMemcpyDeviceToHost && !dd && sd) || (kind == cudaMemcpyDeviceToDevice && dd && sd) ||
                  (kind == cudaMemcpyHostToHost && !dd && !sd);
  if (!ok)
    return raise(cudaErrorInvalidValue, std::string(kind_name(kind)) + " with a " + (sd ? "device" : "host") +
                                            " source and a " + (dd ? "device" : "host") + " destination");
  return cudaSuccess;
}

void copy_now(void* dst, const void* src, size_t n) {
  DeviceAccess open;
  std::memmove(dst, src, n);
}

cudaError_t bad_stream(cudaStream_t s, const char* call) {
  return raise(cudaErrorInvalidResourceHandle, std::string(call) + ": not a live stream: " +
                                                   std::to_string(reinterpret_cast<uintptr_t>(s)));
}

}  // namespace

// ---- the device side ----------------------------------------------------------------------------------
void submit(const Site& site, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, std::function<void()> thread) {
  const std::string at = std::string(site.kernel) + " at " + site.file + ":" + std::to_string(site.line);
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  std::string bad;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
    bad = "block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) + ")";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    bad = "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) + ")";
  else if (smem > std::max(kSharedDefault, g_optin))
    bad = std::to_string(smem) + " bytes of dynamic shared memory (above " + std::to_string(kSharedDefault) +
          " needs cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize))";
  if (!bad.empty()) {
    raise(cudaErrorInvalidConfiguration, "invalid launch configuration of " + at + ": " + bad);
    return;
  }
  if (stream && !stream_of(stream)) {
    bad_stream(stream, at.c_str());
    return;
  }
  ++g_launches[base_name(site.kernel)];
  auto k = std::make_shared<Kernel>(Kernel{site, grid, block, smem, std::move(thread)});
  enqueue(stream, "launch of " + at, [k] {
    g_body = &k->thread;
    execute(*k);
    g_body = nullptr;
  });
}

void shared_var(void* p, size_t bytes) {
  for (const auto& [q, n] : g_shared)
    if (q == p) return;
  std::memset(p, g_poison, bytes);
  g_shared.emplace_back(p, bytes);
  g_static_shared += bytes;
}

void* dynamic_shared() { return g_dynamic; }

void syncthreads(Where site) {
  if (!g_kernel) {
    std::fprintf(stderr, "emu: __syncthreads outside a kernel\n");
    std::_Exit(70);
  }
  Thread& th = g_threads[static_cast<size_t>(g_running_tid)];
  th.st = St::Barrier;
  th.site = site;
  ++g_at_barrier;
  release_barrier_if_complete();
  if (!g_abort.empty()) fail_here(g_abort);
  yield();
}

uint64_t shuffle(uint64_t bits, Shfl kind, int arg, int width, unsigned mask, Where site) {
  return collective(Coll::Shuffle, kind, arg, width, mask, bits, site);
}
uint64_t vote(bool pred, unsigned mask, Where site) {
  return collective(Coll::Vote, Shfl::Idx, 0, kWarp, mask, pred ? 1 : 0, site);
}
void syncwarp(unsigned mask, Where site) { collective(Coll::Sync, Shfl::Idx, 0, kWarp, mask, 0, site); }

// A path opens a registered fake when the file stands for it: its name is the fake's and it starts with
// kFakeLibraryMarker, so that tests can lay out library folders (CUDA_HOME, pip wheels, conda) while a
// real library installed on the machine is never taken for one. A bare name goes through the loader path:
// the registered fakes, or, when LORAKIT_EMU_LD_PATH is set, only such files in its folders
// (':'-separated; empty: the loader finds nothing).
constexpr char kFakeLibraryMarker[] = "lorakit emulator fake library";
bool stands_for_fake(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char head[sizeof kFakeLibraryMarker - 1] = {};
  const bool ok = std::fread(head, 1, sizeof head, f) == sizeof head && std::memcmp(head, kFakeLibraryMarker, sizeof head) == 0;
  std::fclose(f);
  return ok;
}

void* dl_open(const char* name, int) {
  const std::string n = name ? name : "";
  const size_t slash = n.rfind('/');
  bool found = true;
  if (slash != std::string::npos) {
    found = stands_for_fake(n);
  } else if (const char* ld = std::getenv("LORAKIT_EMU_LD_PATH")) {
    found = false;
    std::string dirs = ld;
    for (size_t at = 0; at <= dirs.size() && !found;) {
      const size_t end = std::min(dirs.find(':', at), dirs.size());
      const std::string dir = dirs.substr(at, end - at);
      found = !dir.empty() && stands_for_fake(dir + "/" + n);
      at = end + 1;
    }
  }
  auto it = g_libraries.find(slash == std::string::npos ? n : n.substr(slash + 1));
  if (found && it != g_libraries.end()) return &it->second;
  g_dl_error = (n.empty() ? std::string("(null)") : n) + ": no such library in the GPU emulator";
  g_dl_error_set = true;
  return nullptr;
}
void* dl_sym(void* handle, const char* name) {
  auto* syms = static_cast<std::map<std::string, void*>*>(handle);
  auto it = syms->find(name);
  if (it != syms->end()) return it->second;
  g_dl_error = std::string("undefined symbol: ") + name;
  g_dl_error_set = true;
  return nullptr;
}
int dl_close(void*) { return 0; }
char* dl_error() {
  if (!g_dl_error_set) return nullptr;
  g_dl_error_set = false;
  return g_dl_error.data();
}

// ---- emu_control.h --------------------------------------------------------------------------------
void* device_alloc(size_t bytes, size_t misalign) { return map_region(bytes, 16, misalign, Kind::Device); }
void device_free(void* p) { (void)cudaFree(p); }
void on_stream(void* stream, std::function<void()> op) {
  enqueue(static_cast<cudaStream_t>(stream), "library work", [op] {
    DeviceAccess open;
    op();
  });
}
void* host_alloc(size_t bytes) { return map_region(bytes, 16, 0, Kind::Host); }
void host_free(void* p) {
  if (const Region* r = region_of(p)) unmap_region(*r);
}
std::map<std::string, int> hazards() { return g_hazards; }
void clear_hazards() { g_hazards.clear(); }
std::map<std::string, long> kernel_launches() { return g_launches; }
void set_memory_limit(size_t bytes) { g_limit = bytes; }
size_t device_bytes_in_use() { return g_in_use; }
void register_library(const std::string& name, const std::map<std::string, void*>& symbols) {
  g_libraries[name] = symbols;
}
std::string schedule() { return schedule_name(); }

}  // namespace emu

// ---- the runtime API --------------------------------------------------------------------------------
using emu::flush_all;
using emu::raise;

cudaError_t cudaGetLastError() {
  cudaError_t e = emu::g_last != cudaSuccess ? emu::g_last : emu::g_async;
  emu::g_last = cudaSuccess;
  if (e == emu::g_async) emu::g_async = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::g_last != cudaSuccess ? emu::g_last : emu::g_async; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

// The detail of the most recent error with this code, where the emulator knows one.
const char* cudaGetErrorString(cudaError_t e) {
  auto it = emu::g_messages.find(e);
  return it != emu::g_messages.end() ? it->second.c_str() : cudaGetErrorName(e);
}

// The emulated runtime is CUDA 12.8. LORAKIT_EMU_DRIVER_VERSION (say 12040) plays a host whose driver is
// older: as with a real statically linked runtime, the device count is then 0 with
// cudaErrorInsufficientDriver, while cudaDriverGetVersion still answers.
constexpr int kRuntimeVersion = 12080;
int driver_version() { return std::atoi(emu::env("LORAKIT_EMU_DRIVER_VERSION", "12080").c_str()); }

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 0;
  if (driver_version() < kRuntimeVersion)
    return raise(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version");
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return d == 0 ? cudaSuccess : raise(cudaErrorInvalidDevice, "device " + std::to_string(d) + " (the emulator has one)");
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return raise(cudaErrorInvalidDevice, "device " + std::to_string(d) + " (the emulator has one)");
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "lorakit emulator (%d-lane warps)", emu::kWarp);
  // LORAKIT_EMU_ARCH plays an AMD card of another architecture (say gfx1201), for the loader's arch report.
  std::snprintf(p->gcnArchName, sizeof p->gcnArchName, "%s", emu::env("LORAKIT_EMU_ARCH", emu::kAmd ? "gfx942" : "").c_str());
  p->totalGlobalMem = emu::g_limit ? emu::g_limit : emu::kDefaultMemory;
  p->sharedMemPerBlock = emu::kSharedDefault;
  p->sharedMemPerBlockOptin = emu::kSharedOptin;
  p->regsPerBlock = 65536;
  p->warpSize = emu::kWarp;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  // Few multiprocessors, so that grids sized from the count take their grid-stride loops.
  p->multiProcessorCount = std::atoi(emu::env("LORAKIT_EMU_SMS", "3").c_str());
  p->major = 9;
  p->minor = 0;
  p->l2CacheSize = 50 << 20;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = kRuntimeVersion;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = driver_version();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  flush_all();
  return emu::take_async();
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  const size_t total = emu::g_limit ? emu::g_limit : emu::kDefaultMemory;
  if (emu::g_in_use + emu::round_up(bytes, emu::page_size()) + emu::page_size() > total)
    return raise(cudaErrorMemoryAllocation, "out of memory: " + std::to_string(bytes) + " bytes asked, " +
                                                std::to_string(total - emu::g_in_use) + " free");
  *p = emu::map_region(bytes, 256, 0, emu::Kind::Device);
  return *p ? cudaSuccess : raise(cudaErrorMemoryAllocation, "mmap failed");
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  const emu::Region* r = emu::region_of(p);
  if (!r || r->user != p || r->kind != emu::Kind::Device)
    return raise(cudaErrorInvalidDevicePointer, "cudaFree of a pointer cudaMalloc did not return");
  flush_all();  // cudaFree waits for the device
  emu::unmap_region(*r);
  return emu::take_async();
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = emu::map_region(bytes ? bytes : 1, 256, 0, emu::Kind::Pinned);
  return *p ? cudaSuccess : raise(cudaErrorMemoryAllocation, "mmap failed");
}

cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  const emu::Region* r = emu::region_of(p);
  if (!r || r->user != p || r->kind != emu::Kind::Pinned)
    return raise(cudaErrorInvalidValue, "cudaFreeHost of a pointer cudaMallocHost did not return");
  flush_all();
  emu::unmap_region(*r);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = emu::g_limit ? emu::g_limit : emu::kDefaultMemory;
  *free_bytes = *total_bytes > emu::g_in_use ? *total_bytes - emu::g_in_use : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  if (s && !emu::stream_of(s)) return emu::bad_stream(s, "cudaMemcpyAsync");
  emu::Mem md, ms;
  if (cudaError_t e = emu::check_copy(dst, src, n, kind, md, ms)) return e;
  const std::string what = std::string("cudaMemcpyAsync (") + emu::kind_name(kind) + ")";
  if (md == emu::Mem::Pageable) {
    // Into pageable memory the call returns once the copy is done, so everything before it has run.
    if (s) emu::flush(emu::stream_of(s));
    else emu::hazard(what + " on the legacy default stream, which is not ordered with the backend's non-blocking stream");
    emu::copy_now(dst, src, n);
    return emu::take_async();
  }
  if (ms == emu::Mem::Pageable) {
    // From pageable memory the source is staged at the call; the device copy happens in stream order.
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + n);
    emu::enqueue(s, what, [dst, staged] { emu::copy_now(dst, staged->data(), staged->size()); });
    return cudaSuccess;
  }
  emu::enqueue(s, what, [dst, src, n] { emu::copy_now(dst, src, n); });
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (n == 0) return cudaSuccess;
  emu::Mem md, ms;
  if (cudaError_t e = emu::check_copy(dst, src, n, kind, md, ms)) return e;
  if ((md == emu::Mem::Device || ms == emu::Mem::Device) && emu::queued() > 0)
    emu::hazard(std::string("synchronous cudaMemcpy (") + emu::kind_name(kind) +
                ") on the legacy default stream while the backend's stream has queued work: the copy is not ordered "
                "with it (use cudaMemcpyAsync on stream())");
  emu::copy_now(dst, src, n);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  if (s && !emu::stream_of(s)) return emu::bad_stream(s, "cudaMemsetAsync");
  emu::Mem md;
  std::string why;
  if (!emu::classify(dst, n, md, why)) return raise(cudaErrorInvalidValue, "cudaMemsetAsync: " + why);
  if (md != emu::Mem::Device) return raise(cudaErrorInvalidValue, "cudaMemsetAsync of host memory");
  emu::enqueue(s, "cudaMemsetAsync", [dst, value, n] {
    emu::DeviceAccess open;
    std::memset(dst, value, n);
  });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t n) {
  if (n == 0) return cudaSuccess;
  emu::Mem md;
  std::string why;
  if (!emu::classify(dst, n, md, why)) return raise(cudaErrorInvalidValue, "cudaMemset: " + why);
  if (md != emu::Mem::Device) return raise(cudaErrorInvalidValue, "cudaMemset of host memory");
  if (emu::queued() > 0)
    emu::hazard("synchronous cudaMemset on the legacy default stream while the backend's stream has queued work");
  emu::DeviceAccess open;
  std::memset(dst, value, n);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  auto* st = new emu::Stream;
  emu::g_streams.insert(st);
  *s = reinterpret_cast<cudaStream_t>(st);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  emu::Stream* st = emu::stream_of(s);
  if (!st) return emu::bad_stream(s, "cudaStreamDestroy");
  emu::flush(st);
  emu::g_streams.erase(st);
  delete st;
  return emu::take_async();
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!s) {
    flush_all();
    return emu::take_async();
  }
  emu::Stream* st = emu::stream_of(s);
  if (!st) return emu::bad_stream(s, "cudaStreamSynchronize");
  emu::flush(st);
  return emu::take_async();
}

cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  auto* ev = new emu::Event;
  emu::g_events.insert(ev);
  *e = reinterpret_cast<cudaEvent_t>(ev);
  return cudaSuccess;
}
static emu::Event* event_of(cudaEvent_t e) {
  auto* p = reinterpret_cast<emu::Event*>(e);
  return emu::g_events.count(p) ? p : nullptr;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  emu::Event* ev = event_of(e);
  if (!ev) return raise(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not a live event");
  emu::g_events.erase(ev);
  delete ev;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  emu::Event* ev = event_of(e);
  if (!ev) return raise(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live event");
  if (s && !emu::stream_of(s)) return emu::bad_stream(s, "cudaEventRecord");
  emu::Stream* st = emu::stream_of(s);
  ev->stream = st;
  ev->seq = st ? st->next - 1 : 0;
  return cudaSuccess;
}
// A query waits as a synchronisation would: the emulated device finishes whatever it is asked about.
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  emu::Event* ev = event_of(e);
  if (!ev) return raise(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  if (ev->stream && emu::g_streams.count(ev->stream)) emu::flush(ev->stream, ev->seq);
  return emu::take_async();
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!event_of(start) || !event_of(end)) return raise(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime");
  *ms = 0.f;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  emu::Event* ev = event_of(e);
  if (!ev) return raise(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: not a live event");
  if (s && !emu::stream_of(s)) return emu::bad_stream(s, "cudaStreamWaitEvent");
  if (ev->stream && emu::g_streams.count(ev->stream)) emu::flush(ev->stream, ev->seq);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || static_cast<size_t>(value) > emu::kSharedOptin)
    return raise(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value));
  emu::g_optin = std::max(emu::g_optin, static_cast<size_t>(value));
  return cudaSuccess;
}
