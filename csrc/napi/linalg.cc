// N-API surface of the float64 linear algebra (csrc/cpu/linalg.cc) behind lib/analysis. Same contract as
// addon.cc: plain argument objects validated in lib/analysis, every size re-checked here.
#include "addon.h"
#include "args.h"

namespace lorakit::napi {
namespace {

Napi::Value SvdLeft(const Napi::CallbackInfo& info) {
  Call c(info, "svdLeft");
  const int64_t m = c.i64("m"), n = c.i64("n"), k = c.i64("k");
  if (m < 1 || n < 1) c.range_error("'m' and 'n' must be positive");
  if (k < 1 || k > std::min(m, n))
    c.range_error("'k' must be in [1, min(m, n) = " + std::to_string(std::min(m, n)) + "], got " + std::to_string(k));
  const float* w = c.ptr<float>("w", {m, n});
  double* u = c.ptr<double>("u", {m, k});
  double* s = c.ptr<double>("s", {k});
  LK_RUN(c, svd_left, w, m, n, u, s, k);
  return info.Env().Undefined();
}

}  // namespace

void register_linalg(Napi::Env env, Napi::Object exports) {
  export_all(env, exports, {{"svdLeft", SvdLeft}});
}

}  // namespace lorakit::napi
