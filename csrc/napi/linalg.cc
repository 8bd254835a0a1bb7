// N-API surface of the float64 linear algebra (csrc/cpu/linalg.cc) behind lib/analysis. Same contract as
// addon.cc: plain argument objects validated in lib/analysis, every size re-checked here.
#include "addon.h"
#include "args.h"

namespace lorakit::napi {
namespace {

Napi::Value SvdLeft(const Napi::CallbackInfo& info) {
  const char* op = "svdLeft";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  const int64_t m = i64(o, "m", op), n = i64(o, "n", op), k = i64(o, "k", op);
  if (m < 1 || n < 1) throw_range(env, std::string(op) + ": 'm' and 'n' must be positive");
  if (k < 1 || k > std::min(m, n))
    throw_range(env, std::string(op) + ": 'k' must be in [1, min(m, n) = " + std::to_string(std::min(m, n)) + "], got " + std::to_string(k));
  const float* w = ptr<float>(o, "w", {m, n}, op);
  double* u = ptr<double>(o, "u", {m, k}, op);
  double* s = ptr<double>(o, "s", {k}, op);
  guarded(env, [&] { LK_CALL(on_gpu(info.Env()), svd_left, w, m, n, u, s, k); });
  return env.Undefined();
}

}  // namespace

void register_linalg(Napi::Env env, Napi::Object exports) {
  exports.Set("svdLeft", Napi::Function::New(env, SvdLeft, "svdLeft"));
}

}  // namespace lorakit::napi
