// The N-API surface: one function per op in csrc/ops.h. Each reads a plain argument object built by
// lib/native (already validated there), re-checks every size against the storages it touches, and
// calls the backend. No kernel runs off the main thread's call, and no N-API call runs off it.
#include "addon.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../cpu/gemm.h"
#include "../cpu/parallel.h"
#include "../ops.h"
#include "args.h"
#ifdef LORAKIT_WITH_GPU
#include "../gpu/optim.h"
#endif

namespace lorakit::napi {

Instance& instance(Napi::Env env) { return *env.GetInstanceData<Instance>(); }

namespace {


// A matrix operand: {s, dtype, trans, rows, cols} stored row-major [rows, cols], or NF4 with
// {nf4: {packed, absmax, blockSize}}. Returns the logical shape through lrows/lcols.
struct OperandHold {
  Operand op;
  NF4View nf4;
  int64_t lrows = 0, lcols = 0;
};

// `numel` is a checked product (at most kMaxSize), so the sums below cannot wrap.
void read_nf4(const Napi::Object& q, int64_t numel, NF4View& v, const char* op, const char* label = nullptr) {
  v.block_size = i64(q, "blockSize", op);
  if (v.block_size < 2 || v.block_size > kMaxSize || (v.block_size & (v.block_size - 1)))
    throw_range(q.Env(), std::string(op) + ": NF4 blockSize must be a power of two");
  v.packed = static_cast<const uint8_t*>(storage(q, "packed", static_cast<size_t>((numel + 1) / 2), op, false, label)->data());
  v.absmax = static_cast<const float*>(
      storage(q, "absmax", static_cast<size_t>((numel + v.block_size - 1) / v.block_size) * 4, op, false, label)->data());
}

void read_operand(const Napi::Object& args, const char* key, OperandHold& h, const char* op) {
  Napi::Env env = args.Env();
  Napi::Value v = args.Get(key);
  if (!v.IsObject()) throw_type(env, std::string(op) + ": '" + key + "' must be an operand object");
  Napi::Object o = v.As<Napi::Object>();
  int64_t rows = i64(o, "rows", op), cols = i64(o, "cols", op);
  const int64_t numel = product(env, op, key, {rows, cols});
  h.op.trans = flag(o, "trans", op);
  h.op.ld = cols;
  Napi::Value q = o.Get("nf4");
  if (q.IsObject()) {
    read_nf4(q.As<Napi::Object>(), numel, h.nf4, op, key);
    h.op.nf4 = &h.nf4;
  } else {
    h.op.dtype = dtype(o, "dtype", op);
    if (h.op.dtype != DType::F32 && h.op.dtype != DType::BF16 && h.op.dtype != DType::F16)
      throw_type(env, std::string(op) + ": '" + key + "' must be float32, bfloat16 or float16, got " + dtype_name(h.op.dtype));
    h.op.data = storage(o, "s", static_cast<size_t>(numel) * dtype_size(h.op.dtype), op, false, key)->data();
  }
  h.lrows = h.op.trans ? cols : rows;
  h.lcols = h.op.trans ? rows : cols;
}

void expect_shape(Napi::Env env, const char* op, const char* key, const OperandHold& h, int64_t rows, int64_t cols) {
  if (h.lrows != rows || h.lcols != cols)
    throw_range(env, std::string(op) + ": '" + key + "' is [" + std::to_string(h.lrows) + ", " + std::to_string(h.lcols) +
                         "] (after transpose), expected [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
}

// A value stored into an integer dtype must be one: converting NaN or an out-of-range double to an
// integer is undefined behaviour in C++ (lib/ checks first, with the element named; this is the floor).
void check_int_value(Napi::Env env, const char* op, DType dt, double v) {
  double lo, hi;
  switch (dt) {
    case DType::I32: lo = -2147483648.0, hi = 2147483647.0; break;
    case DType::I64: lo = -9223372036854775808.0, hi = 9223372036854774784.0; break;
    case DType::U8: lo = 0.0, hi = 255.0; break;
    default: return;
  }
  if (!(v >= lo && v <= hi) || v != std::trunc(v))
    throw_range(env, std::string(op) + ": " + std::to_string(v) + " is not an integer in " + dtype_name(dt) + "'s range");
}

Napi::Value Fill(const Napi::CallbackInfo& info) {
  const char* op = "fill";
  auto o = object_arg(info, 0, op);
  DType dt = dtype(o, "dtype", op);
  int64_t n = i64(o, "n", op);
  const double value = num(o, "value", op);
  check_int_value(info.Env(), op, dt, value);
  void* dst = typed(o, "dst", n, dt, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), fill, dst, dt, n, value); });
  return info.Env().Undefined();
}

Napi::Value Arange(const Napi::CallbackInfo& info) {
  const char* op = "arange";
  auto o = object_arg(info, 0, op);
  DType dt = dtype(o, "dtype", op);
  int64_t n = i64(o, "n", op);
  const double start = num(o, "start", op), step = num(o, "step", op);
  // Elements are truncated start + step * i; the ends bound every one of them.
  if (n > 0)
    for (double v : {start, start + step * static_cast<double>(n - 1)}) check_int_value(info.Env(), op, dt, std::trunc(v));
  void* dst = typed(o, "dst", n, dt, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), arange, dst, dt, n, start, step); });
  return info.Env().Undefined();
}

Napi::Value Cast(const Napi::CallbackInfo& info) {
  const char* op = "cast";
  auto o = object_arg(info, 0, op);
  DType from = dtype(o, "from", op), to = dtype(o, "to", op);
  int64_t n = i64(o, "n", op);
  const void* src = typed(o, "src", n, from, op);
  void* dst = typed(o, "dst", n, to, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), cast, src, from, dst, to, n); });
  return info.Env().Undefined();
}

Napi::Value Rand(const Napi::CallbackInfo& info, bool normal) {
  const char* op = normal ? "randn" : "rand";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  float* dst = ptr<float>(o, "dst", {n}, op);
  uint64_t seed = static_cast<uint64_t>(i64(o, "seed", op)), offset = static_cast<uint64_t>(i64(o, "offset", op));
  float p0 = static_cast<float>(num(o, "p0", op)), p1 = static_cast<float>(num(o, "p1", op));
  guarded(info.Env(), [&] {
    if (normal)
      LK_CALL(on_gpu(info.Env()), rand_normal, dst, n, seed, offset, p0, p1);
    else
      LK_CALL(on_gpu(info.Env()), rand_uniform, dst, n, seed, offset, p0, p1);
  });
  return info.Env().Undefined();
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const char* op = "matmul";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  GemmArgs g;
  g.m = i64(o, "m", op);
  g.n = i64(o, "n", op);
  g.k = i64(o, "k", op);
  OperandHold a, b;
  read_operand(o, "a", a, op);
  read_operand(o, "b", b, op);
  expect_shape(env, op, "a", a, g.m, g.k);
  expect_shape(env, op, "b", b, g.k, g.n);
  g.a = a.op;
  g.b = b.op;
  g.ldc = g.n;
  g.c = ptr<float>(o, "c", {g.m, g.n}, op);
  g.alpha = static_cast<float>(num(o, "alpha", op));
  g.beta = static_cast<float>(num(o, "beta", op));
  g.bias = ptr<float>(o, "bias", {g.n}, op, true);
  guarded(env, [&] { LK_CALL(on_gpu(info.Env()), gemm, g); });
  return env.Undefined();
}

void read_lora_common(const Napi::Object& o, const char* op, int64_t& m, int64_t& in, int64_t& out, int64_t& r,
                      float& scale, float& dropout, uint64_t& seed) {
  m = i64(o, "m", op);
  in = i64(o, "in", op);
  out = i64(o, "out", op);
  r = i64(o, "r", op);
  if (m < 0 || in < 1 || out < 1 || r < 1) throw_range(o.Env(), std::string(op) + ": sizes must be positive");
  scale = static_cast<float>(num(o, "scale", op));
  dropout = static_cast<float>(num(o, "dropout", op));
  if (!(dropout >= 0.f && dropout < 1.f)) throw_range(o.Env(), std::string(op) + ": dropout must be in [0, 1)");
  seed = static_cast<uint64_t>(i64(o, "seed", op));
}

Napi::Value LoraForward(const Napi::CallbackInfo& info) {
  const char* op = "loraLinear.forward";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  LoraForwardArgs L;
  read_lora_common(o, op, L.m, L.in, L.out, L.r, L.scale, L.dropout, L.seed);
  OperandHold x, w;
  read_operand(o, "x", x, op);
  read_operand(o, "w", w, op);
  expect_shape(env, op, "x", x, L.m, L.in);
  expect_shape(env, op, "w", w, L.out, L.in);
  if (x.op.trans || w.op.trans) throw_type(env, std::string(op) + ": x and w are taken as stored");
  L.x = x.op;
  L.w = w.op;
  L.bias = ptr<float>(o, "bias", {L.out}, op, true);
  L.a = ptr<float>(o, "a", {L.r, L.in}, op);
  L.b = ptr<float>(o, "b", {L.out, L.r}, op);
  L.y = ptr<float>(o, "y", {L.m, L.out}, op);
  L.xa = ptr<float>(o, "xa", {L.m, L.r}, op);
  guarded(env, [&] { LK_CALL(on_gpu(info.Env()), lora_forward, L); });
  return env.Undefined();
}

Napi::Value LoraBackward(const Napi::CallbackInfo& info) {
  const char* op = "loraLinear.backward";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  LoraBackwardArgs L;
  read_lora_common(o, op, L.m, L.in, L.out, L.r, L.scale, L.dropout, L.seed);
  L.accumulate = flag(o, "accumulate", op);
  OperandHold dy, x, w;
  read_operand(o, "dy", dy, op);
  read_operand(o, "x", x, op);
  read_operand(o, "w", w, op);
  expect_shape(env, op, "dy", dy, L.m, L.out);
  expect_shape(env, op, "x", x, L.m, L.in);
  expect_shape(env, op, "w", w, L.out, L.in);
  if (dy.op.trans || x.op.trans || w.op.trans) throw_type(env, std::string(op) + ": dy, x and w are taken as stored");
  L.dy = dy.op;
  L.x = x.op;
  L.w = w.op;
  L.a = ptr<float>(o, "a", {L.r, L.in}, op);
  L.b = ptr<float>(o, "b", {L.out, L.r}, op);
  L.xa = ptr<float>(o, "xa", {L.m, L.r}, op);
  L.dx = ptr<float>(o, "dx", {L.m, L.in}, op, true);
  L.da = ptr<float>(o, "da", {L.r, L.in}, op, true);
  L.db = ptr<float>(o, "db", {L.out, L.r}, op, true);
  L.dbias = ptr<float>(o, "dbias", {L.out}, op, true);
  L.dw = ptr<float>(o, "dw", {L.out, L.in}, op, true);
  guarded(env, [&] { LK_CALL(on_gpu(info.Env()), lora_backward, L); });
  return env.Undefined();
}

Napi::Value Nf4Quantize(const Napi::CallbackInfo& info) {
  const char* op = "nf4.quantize";
  auto o = object_arg(info, 0, op);
  DType dt = dtype(o, "dtype", op);
  int64_t n = i64(o, "n", op), bs = i64(o, "blockSize", op);
  if (bs < 2 || (bs & (bs - 1))) throw_range(info.Env(), std::string(op) + ": blockSize must be a power of two");
  const void* src = typed(o, "src", n, dt, op);
  uint8_t* packed = ptr<uint8_t>(o, "packed", {(n + 1) / 2}, op);
  float* absmax = ptr<float>(o, "absmax", {(n + bs - 1) / bs}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), nf4_quantize, src, dt, n, bs, packed, absmax); });
  return info.Env().Undefined();
}

// Index of the first NaN or infinity among n elements of a float dtype in host memory, or -1: the
// exponent bits are all ones exactly for those.
int64_t first_non_finite(const uint8_t* p, DType dt, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (dt == DType::F32) {
      uint32_t u;
      std::memcpy(&u, p + 4 * i, 4);
      if ((u & 0x7f800000u) == 0x7f800000u) return i;
    } else {
      uint16_t u;
      std::memcpy(&u, p + 2 * i, 2);
      const uint16_t e = dt == DType::BF16 ? 0x7f80 : 0x7c00;
      if ((u & e) == e) return i;
    }
  }
  return -1;
}

// {src, dtype, n} of a float dtype -> the index of its first NaN or infinity, or -1. A GPU storage is
// read back in chunks.
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  const char* op = "firstNonFinite";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  DType dt = dtype(o, "dtype", op);
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16) throw_type(env, std::string(op) + ": 'dtype' must be a float dtype");
  int64_t n = i64(o, "n", op);
  const auto* src = static_cast<const uint8_t*>(typed(o, "src", n, dt, op));
  const int64_t elem = static_cast<int64_t>(dtype_size(dt));
  if (!on_gpu(env)) return Napi::Number::New(env, static_cast<double>(first_non_finite(src, dt, n)));
  int64_t found = -1;
#ifdef LORAKIT_WITH_GPU
  guarded(env, [&] {
    const int64_t chunk = (int64_t{16} << 20) / elem;
    std::vector<uint8_t> host(static_cast<size_t>(std::min(n, chunk) * elem));
    for (int64_t first = 0; first < n && found < 0; first += chunk) {
      const int64_t len = std::min(chunk, n - first);
      gpu::copy_to_host(host.data(), src + first * elem, static_cast<size_t>(len * elem));
      const int64_t i = first_non_finite(host.data(), dt, len);
      if (i >= 0) found = first + i;
    }
  });
#endif
  return Napi::Number::New(env, static_cast<double>(found));
}

Napi::Value Nf4Dequantize(const Napi::CallbackInfo& info) {
  const char* op = "nf4.dequantize";
  auto o = object_arg(info, 0, op);
  DType dt = dtype(o, "dtype", op);
  int64_t n = i64(o, "n", op);
  NF4View q;
  read_nf4(o, n, q, op);
  void* dst = typed(o, "dst", n, dt, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), nf4_dequantize, q, n, dst, dt); });
  return info.Env().Undefined();
}

Napi::Value AbsmaxQuantize(const Napi::CallbackInfo& info) {
  const char* op = "nf4.quantize(doubleQuant)";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  const float* absmax = ptr<float>(o, "absmax", {n}, op);
  uint8_t* codes = ptr<uint8_t>(o, "codes", {n}, op);
  float* scales = ptr<float>(o, "scales", {(n + 255) / 256}, op);
  float offset = 0.f;
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), absmax_quantize, absmax, n, codes, scales, &offset); });
  return Napi::Number::New(info.Env(), offset);
}

Napi::Value AbsmaxDequantize(const Napi::CallbackInfo& info) {
  const char* op = "nf4.dequantize(doubleQuant)";
  auto o = object_arg(info, 0, op);
  NestedAbsmax q;
  q.n = i64(o, "n", op);
  q.codes = ptr<uint8_t>(o, "codes", {q.n}, op);
  q.scales = ptr<float>(o, "scales", {(q.n + 255) / 256}, op);
  q.offset = static_cast<float>(num(o, "offset", op));
  float* absmax = ptr<float>(o, "absmax", {q.n}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), absmax_dequantize, q, absmax); });
  return info.Env().Undefined();
}

Napi::Value AdamWStep(const Napi::CallbackInfo& info) {
  const char* op = "adamw.step";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  Napi::Value tv = o.Get("tensors");
  if (!tv.IsArray()) throw_type(env, std::string(op) + ": 'tensors' must be an array");
  auto arr = tv.As<Napi::Array>();
  std::vector<AdamWTensor> ts(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    if (!e.IsObject()) throw_type(env, std::string(op) + ": tensors[" + std::to_string(i) + "] must be an object");
    auto t = e.As<Napi::Object>();
    AdamWTensor& a = ts[i];
    a.numel = i64(t, "numel", op);
    a.param = ptr<float>(t, "param", {a.numel}, op);
    a.grad = ptr<float>(t, "grad", {a.numel}, op);
    a.exp_avg = ptr<float>(t, "expAvg", {a.numel}, op);
    a.exp_avg_sq = ptr<float>(t, "expAvgSq", {a.numel}, op);
    a.lr = num(t, "lr", op);
    a.beta1 = num(t, "beta1", op);
    a.beta2 = num(t, "beta2", op);
    a.eps = num(t, "eps", op);
    a.weight_decay = num(t, "weightDecay", op);
  }
  int64_t step = i64(o, "step", op);
  if (step < 1) throw_range(env, std::string(op) + ": step counts from 1");
  const double grad_scale = num(o, "gradScale", op);
  const int64_t count = static_cast<int64_t>(ts.size());
  if (o.Get("maxGradNorm").IsUndefined()) {
    guarded(env, [&] { LK_CALL(on_gpu(env), adamw_step, ts.data(), count, step, static_cast<float>(grad_scale)); });
    return env.Undefined();
  }
  // Clipped step, as torch's clip_grad_norm_ on gradients already multiplied by grad_scale:
  //   n = |g| * grad_scale,  clip = min(1, max / (n + 1e-6)),  factor = float(grad_scale * clip)   (doubles)
  // A non-finite n updates nothing. On a GPU the norm stays on the device between the two launches, so
  // the step never waits for it; it is read back once the update is queued.
  const double max_norm = num(o, "maxGradNorm", op);
  std::vector<const float*> grads(ts.size());
  std::vector<int64_t> numels(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    grads[i] = ts[i].grad;
    numels[i] = ts[i].numel;
  }
  double norm = 0;
  bool updated = false;
  guarded(env, [&] {
#ifdef LORAKIT_WITH_GPU
    if (on_gpu(env)) {
      double* dev = gpu::norm_slot();
      gpu::grad_norm_device(grads.data(), numels.data(), count, dev);
      gpu::adamw_step_device_scale(ts.data(), count, step, grad_scale, dev, max_norm);
      gpu::copy_to_host(&norm, dev, sizeof(double));
      norm *= grad_scale;
      updated = std::isfinite(norm);
      return;
    }
#endif
    norm = cpu::grad_norm(grads.data(), numels.data(), count) * grad_scale;
    if (!std::isfinite(norm)) return;
    const double clip = std::min(1.0, max_norm / (norm + 1e-6));
    cpu::adamw_step(ts.data(), count, step, static_cast<float>(grad_scale * clip));
    updated = true;
  });
  Napi::Object r = Napi::Object::New(env);
  r.Set("gradNorm", norm);
  r.Set("clipScale", updated ? std::min(1.0, max_norm / (norm + 1e-6)) : 0.0);
  r.Set("updated", updated);
  return r;
}

Napi::Value GradNorm(const Napi::CallbackInfo& info) {
  const char* op = "gradNorm";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  Napi::Value gv = o.Get("grads");
  if (!gv.IsArray()) throw_type(env, std::string(op) + ": 'grads' must be an array");
  auto arr = gv.As<Napi::Array>();
  std::vector<const float*> ptrs(arr.Length());
  std::vector<int64_t> numels(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    if (!e.IsObject()) throw_type(env, std::string(op) + ": grads[" + std::to_string(i) + "] must be an object");
    auto t = e.As<Napi::Object>();
    numels[i] = i64(t, "numel", op);
    ptrs[i] = ptr<float>(t, "s", {numels[i]}, op);
  }
  double norm = guarded(env, [&] { return LK_CALL(on_gpu(env), grad_norm, ptrs.data(), numels.data(), static_cast<int64_t>(ptrs.size())); });
  return Napi::Number::New(env, norm);
}

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("threads", cpu::num_threads());
  r.Set("gemmKernel", cpu::gemm_kernel());
  r.Set("avx2", cpu::cpu_has_avx2());
  r.Set("avx512", cpu::cpu_has_avx512());
#ifdef LORAKIT_WITH_GPU
  r.Set("gpu", true);
#else
  r.Set("gpu", false);
#endif
  return r;
}

Napi::Value SetGemmKernel(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) throw_type(info.Env(), "setGemmKernel: expected a kernel name");
  return Napi::Boolean::New(info.Env(), cpu::set_gemm_kernel(info[0].As<Napi::String>().Utf8Value()));
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("hostBytes", static_cast<double>(instance(info.Env()).host_bytes));
  r.Set("hostCachedBytes", static_cast<double>(cpu::cached_bytes()));
  return r;
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  register_nn(env, exports);
  register_linalg(env, exports);
#ifdef LORAKIT_WITH_GPU
  register_gpu(env, exports);
#endif
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  fn("fill", Fill);
  fn("arange", Arange);
  fn("cast", Cast);
  fn("randUniform", [](const Napi::CallbackInfo& i) { return Rand(i, false); });
  fn("randNormal", [](const Napi::CallbackInfo& i) { return Rand(i, true); });
  fn("gemm", Gemm);
  fn("loraForward", LoraForward);
  fn("loraBackward", LoraBackward);
  fn("nf4Quantize", Nf4Quantize);
  fn("nf4Dequantize", Nf4Dequantize);
  fn("firstNonFinite", FirstNonFinite);
  fn("absmaxQuantize", AbsmaxQuantize);
  fn("absmaxDequantize", AbsmaxDequantize);
  fn("adamwStep", AdamWStep);
  fn("gradNorm", GradNorm);
  fn("backendInfo", BackendInfo);
  fn("setGemmKernel", SetGemmKernel);
  fn("memory", Memory);
}

}  // namespace lorakit::napi

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* inst = new lorakit::napi::Instance();
  env.SetInstanceData(inst);
  Napi::Function ctor = lorakit::napi::Storage::Define(env);
  inst->storage_ctor = Napi::Persistent(ctor);
  exports.Set("Storage", ctor);
  lorakit::napi::register_ops(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(lorakit, Init)
