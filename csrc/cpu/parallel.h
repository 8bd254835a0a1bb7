// A fixed pool of worker threads for the CPU kernels. Work is split into contiguous ranges by index, so
// results never depend on scheduling; kernels that reduce keep their reduction order independent of the
// thread count (see grad_norm) so the same inputs give the same bits on every machine.
#pragma once
#include <cstdint>
#include <functional>

namespace lorakit::cpu {

int num_threads();

// Calls fn(begin, end, thread) on `parts` contiguous slices of [0, n), one slice per thread, and
// returns when all are done. parts == 0 means one per pool thread. Nested calls run inline.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int parts = 0);

}  // namespace lorakit::cpu
