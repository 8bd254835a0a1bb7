// The N-API surface: one function per op in csrc/ops.h. Each reads a plain argument object built by
// lib/native (already validated there), re-checks every size against the storages it touches, and
// calls the backend. No kernel runs off the main thread's call, and no N-API call runs off it.
#include "addon.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "../bnb_codes.h"
#include "../cpu/gemm.h"
#include "../cpu/parallel.h"
#include "../ops.h"
#include "args.h"
#ifdef LORAKIT_WITH_GPU
#include "../gpu/optim.h"
#endif

namespace lorakit::napi {

Instance& instance(Napi::Env env) { return *env.GetInstanceData<Instance>(); }

void export_all(Napi::Env env, Napi::Object exports, std::initializer_list<std::pair<const char*, Binding>> fns) {
  for (const auto& [name, f] : fns) exports.Set(name, Napi::Function::New(env, f, name));
}

namespace {


// A matrix operand: {s, dtype, trans, rows, cols} stored row-major [rows, cols], or NF4 with
// {nf4: {packed, absmax, blockSize}}. Returns the logical shape through lrows/lcols.
struct OperandHold {
  Operand op;
  NF4View nf4;
  int64_t lrows = 0, lcols = 0;
};

// `numel` is a checked product (at most kMaxSize), so the sums below cannot wrap.
void read_nf4(Call& c, const Napi::Object& q, int64_t numel, NF4View& v, const char* label = nullptr) {
  v.block_size = c.i64(q, "blockSize");
  if (v.block_size < 2 || v.block_size > kMaxSize || (v.block_size & (v.block_size - 1)))
    c.range_error("NF4 blockSize must be a power of two");
  v.packed = static_cast<const uint8_t*>(c.storage(q, "packed", static_cast<size_t>((numel + 1) / 2), false, label)->data());
  v.absmax = static_cast<const float*>(
      c.storage(q, "absmax", static_cast<size_t>((numel + v.block_size - 1) / v.block_size) * 4, false, label)->data());
}

void read_operand(Call& c, const char* key, OperandHold& h) {
  Napi::Value v = c.args().Get(key);
  if (!v.IsObject()) c.type_error(std::string("'") + key + "' must be an operand object");
  Napi::Object o = v.As<Napi::Object>();
  int64_t rows = c.i64(o, "rows"), cols = c.i64(o, "cols");
  const int64_t numel = c.product(key, {rows, cols});
  h.op.trans = c.flag(o, "trans");
  h.op.ld = cols;
  Napi::Value q = o.Get("nf4");
  if (q.IsObject()) {
    read_nf4(c, q.As<Napi::Object>(), numel, h.nf4, key);
    h.op.nf4 = &h.nf4;
  } else {
    h.op.dtype = c.dtype(o, "dtype");
    if (h.op.dtype != DType::F32 && h.op.dtype != DType::BF16 && h.op.dtype != DType::F16)
      c.type_error(std::string("'") + key + "' must be float32, bfloat16 or float16, got " + dtype_name(h.op.dtype));
    h.op.data = c.storage(o, "s", static_cast<size_t>(numel) * dtype_size(h.op.dtype), false, key)->data();
  }
  h.lrows = h.op.trans ? cols : rows;
  h.lcols = h.op.trans ? rows : cols;
}

void expect_shape(const Call& c, const char* key, const OperandHold& h, int64_t rows, int64_t cols) {
  if (h.lrows != rows || h.lcols != cols)
    c.range_error(std::string("'") + key + "' is [" + std::to_string(h.lrows) + ", " + std::to_string(h.lcols) +
                  "] (after transpose), expected [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
}

// A value stored into an integer dtype must be one: converting NaN or an out-of-range double to an
// integer is undefined behaviour in C++ (lib/ checks first, with the element named; this is the floor).
void check_int_value(const Call& c, DType dt, double v) {
  double lo, hi;
  switch (dt) {
    case DType::I32: lo = -2147483648.0, hi = 2147483647.0; break;
    case DType::I64: lo = -9223372036854775808.0, hi = 9223372036854774784.0; break;
    case DType::U8: lo = 0.0, hi = 255.0; break;
    default: return;
  }
  if (!(v >= lo && v <= hi) || v != std::trunc(v))
    c.range_error(std::to_string(v) + " is not an integer in " + dtype_name(dt) + "'s range");
}

Napi::Value Fill(const Napi::CallbackInfo& info) {
  Call c(info, "fill");
  DType dt = c.dtype("dtype");
  int64_t n = c.i64("n");
  const double value = c.num("value");
  check_int_value(c, dt, value);
  void* dst = c.typed("dst", n, dt);
  LK_RUN(c, fill, dst, dt, n, value);
  return info.Env().Undefined();
}

Napi::Value Arange(const Napi::CallbackInfo& info) {
  Call c(info, "arange");
  DType dt = c.dtype("dtype");
  int64_t n = c.i64("n");
  const double start = c.num("start"), step = c.num("step");
  // Elements are truncated start + step * i; the ends bound every one of them.
  if (n > 0)
    for (double v : {start, start + step * static_cast<double>(n - 1)}) check_int_value(c, dt, std::trunc(v));
  void* dst = c.typed("dst", n, dt);
  LK_RUN(c, arange, dst, dt, n, start, step);
  return info.Env().Undefined();
}

Napi::Value Cast(const Napi::CallbackInfo& info) {
  Call c(info, "cast");
  DType from = c.dtype("from"), to = c.dtype("to");
  int64_t n = c.i64("n");
  const void* src = c.typed("src", n, from);
  void* dst = c.typed("dst", n, to);
  LK_RUN(c, cast, src, from, dst, to, n);
  return info.Env().Undefined();
}

Napi::Value Rand(const Napi::CallbackInfo& info, bool normal) {
  Call c(info, normal ? "randn" : "rand");
  int64_t n = c.i64("n");
  float* dst = c.ptr<float>("dst", {n});
  uint64_t seed = static_cast<uint64_t>(c.i64("seed")), offset = static_cast<uint64_t>(c.i64("offset"));
  float p0 = static_cast<float>(c.num("p0")), p1 = static_cast<float>(c.num("p1"));
  if (normal)
    LK_RUN(c, rand_normal, dst, n, seed, offset, p0, p1);
  else
    LK_RUN(c, rand_uniform, dst, n, seed, offset, p0, p1);
  return info.Env().Undefined();
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Call c(info, "matmul");
  GemmArgs g;
  g.m = c.i64("m");
  g.n = c.i64("n");
  g.k = c.i64("k");
  OperandHold a, b;
  read_operand(c, "a", a);
  read_operand(c, "b", b);
  expect_shape(c, "a", a, g.m, g.k);
  expect_shape(c, "b", b, g.k, g.n);
  g.a = a.op;
  g.b = b.op;
  g.ldc = g.n;
  g.c = c.ptr<float>("c", {g.m, g.n});
  g.alpha = static_cast<float>(c.num("alpha"));
  g.beta = static_cast<float>(c.num("beta"));
  g.bias = c.ptr<float>("bias", {g.n}, true);
  LK_RUN(c, gemm, g);
  return info.Env().Undefined();
}

// The sizes and dropout both LoRA directions share.
template <typename L>
void read_lora_common(const Call& c, L& l) {
  l.m = c.i64("m");
  l.in = c.i64("in");
  l.out = c.i64("out");
  l.r = c.i64("r");
  if (l.m < 0 || l.in < 1 || l.out < 1 || l.r < 1) c.range_error("sizes must be positive");
  l.scale = static_cast<float>(c.num("scale"));
  l.dropout = static_cast<float>(c.num("dropout"));
  if (!(l.dropout >= 0.f && l.dropout < 1.f)) c.range_error("dropout must be in [0, 1)");
  l.seed = static_cast<uint64_t>(c.i64("seed"));
}

Napi::Value LoraForward(const Napi::CallbackInfo& info) {
  Call c(info, "loraLinear.forward");
  LoraForwardArgs L;
  OperandHold x, w;
  read_lora_common(c, L);
  read_operand(c, "x", x);
  read_operand(c, "w", w);
  expect_shape(c, "x", x, L.m, L.in);
  expect_shape(c, "w", w, L.out, L.in);
  if (x.op.trans || w.op.trans) c.type_error("x and w are taken as stored");
  L.x = x.op;
  L.w = w.op;
  L.bias = c.ptr<float>("bias", {L.out}, true);
  L.a = c.ptr<float>("a", {L.r, L.in});
  L.b = c.ptr<float>("b", {L.out, L.r});
  L.y = c.ptr<float>("y", {L.m, L.out});
  L.xa = c.ptr<float>("xa", {L.m, L.r});
  LK_RUN(c, lora_forward, L);
  return info.Env().Undefined();
}

Napi::Value LoraBackward(const Napi::CallbackInfo& info) {
  Call c(info, "loraLinear.backward");
  LoraBackwardArgs L;
  OperandHold dy, x, w;
  read_lora_common(c, L);
  L.accumulate = c.flag("accumulate");
  read_operand(c, "dy", dy);
  read_operand(c, "x", x);
  read_operand(c, "w", w);
  expect_shape(c, "dy", dy, L.m, L.out);
  expect_shape(c, "x", x, L.m, L.in);
  expect_shape(c, "w", w, L.out, L.in);
  if (dy.op.trans || x.op.trans || w.op.trans) c.type_error("dy, x and w are taken as stored");
  L.dy = dy.op;
  L.x = x.op;
  L.w = w.op;
  L.a = c.ptr<float>("a", {L.r, L.in});
  L.b = c.ptr<float>("b", {L.out, L.r});
  L.xa = c.ptr<float>("xa", {L.m, L.r});
  L.dx = c.ptr<float>("dx", {L.m, L.in}, true);
  L.da = c.ptr<float>("da", {L.r, L.in}, true);
  L.db = c.ptr<float>("db", {L.out, L.r}, true);
  L.dbias = c.ptr<float>("dbias", {L.out}, true);
  L.dw = c.ptr<float>("dw", {L.out, L.in}, true);
  LK_RUN(c, lora_backward, L);
  return info.Env().Undefined();
}

Napi::Value Nf4Quantize(const Napi::CallbackInfo& info) {
  Call c(info, "nf4.quantize");
  DType dt = c.dtype("dtype");
  int64_t n = c.i64("n"), bs = c.i64("blockSize");
  if (bs < 2 || (bs & (bs - 1))) c.range_error("blockSize must be a power of two");
  const void* src = c.typed("src", n, dt);
  uint8_t* packed = c.ptr<uint8_t>("packed", {(n + 1) / 2});
  float* absmax = c.ptr<float>("absmax", {(n + bs - 1) / bs});
  LK_RUN(c, nf4_quantize, src, dt, n, bs, packed, absmax);
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
  Call c(info, "firstNonFinite");
  DType dt = c.dtype("dtype");
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16) c.type_error("'dtype' must be a float dtype");
  int64_t n = c.i64("n");
  const auto* src = static_cast<const uint8_t*>(c.typed("src", n, dt));
  const int64_t found = c.run([&](bool gpu) {
    if (!gpu) return first_non_finite(src, dt, n);
    int64_t first_bad = -1;
#ifdef LORAKIT_WITH_GPU
    const int64_t elem = static_cast<int64_t>(dtype_size(dt));
    const int64_t chunk = (int64_t{16} << 20) / elem;
    std::vector<uint8_t> host(static_cast<size_t>(std::min(n, chunk) * elem));
    for (int64_t first = 0; first < n && first_bad < 0; first += chunk) {
      const int64_t len = std::min(chunk, n - first);
      gpu::copy_to_host(host.data(), src + first * elem, static_cast<size_t>(len * elem));
      const int64_t i = first_non_finite(host.data(), dt, len);
      if (i >= 0) first_bad = first + i;
    }
#endif
    return first_bad;
  });
  return Napi::Number::New(info.Env(), static_cast<double>(found));
}

Napi::Value Nf4Dequantize(const Napi::CallbackInfo& info) {
  Call c(info, "nf4.dequantize");
  DType dt = c.dtype("dtype");
  int64_t n = c.i64("n");
  NF4View q;
  read_nf4(c, c.args(), n, q);
  void* dst = c.typed("dst", n, dt);
  LK_RUN(c, nf4_dequantize, q, n, dst, dt);
  return info.Env().Undefined();
}

Napi::Value AbsmaxQuantize(const Napi::CallbackInfo& info) {
  Call c(info, "nf4.quantize(doubleQuant)");
  int64_t n = c.i64("n");
  const float* absmax = c.ptr<float>("absmax", {n});
  uint8_t* codes = c.ptr<uint8_t>("codes", {n});
  float* scales = c.ptr<float>("scales", {(n + 255) / 256});
  float offset = 0.f;
  LK_RUN(c, absmax_quantize, absmax, n, codes, scales, &offset);
  return Napi::Number::New(info.Env(), offset);
}

Napi::Value AbsmaxDequantize(const Napi::CallbackInfo& info) {
  Call c(info, "nf4.dequantize(doubleQuant)");
  NestedAbsmax q;
  q.n = c.i64("n");
  q.codes = c.ptr<uint8_t>("codes", {q.n});
  q.scales = c.ptr<float>("scales", {(q.n + 255) / 256});
  q.offset = static_cast<float>(c.num("offset"));
  float* absmax = c.ptr<float>("absmax", {q.n});
  LK_RUN(c, absmax_dequantize, q, absmax);
  return info.Env().Undefined();
}

// The objects of array args()[key], each checked to be one ("<key>[i] must be an object").
std::vector<Napi::Object> object_list(const Call& c, const char* key) {
  Napi::Value v = c.args().Get(key);
  if (!v.IsArray()) c.type_error(std::string("'") + key + "' must be an array");
  auto arr = v.As<Napi::Array>();
  std::vector<Napi::Object> out;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    if (!e.IsObject()) c.type_error(std::string(key) + "[" + std::to_string(i) + "] must be an object");
    out.push_back(e.As<Napi::Object>());
  }
  return out;
}

Napi::Value AdamWStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Call c(info, "adamw.step");
  const std::vector<Napi::Object> objs = object_list(c, "tensors");
  std::vector<AdamWTensor> ts(objs.size());
  for (size_t i = 0; i < objs.size(); ++i) {
    const Napi::Object& t = objs[i];
    AdamWTensor& a = ts[i];
    a.numel = c.i64(t, "numel");
    a.param = c.ptr<float>(t, "param", {a.numel});
    a.grad = c.ptr<float>(t, "grad", {a.numel});
    a.exp_avg = c.ptr<float>(t, "expAvg", {a.numel});
    a.exp_avg_sq = c.ptr<float>(t, "expAvgSq", {a.numel});
    a.lr = c.num(t, "lr");
    a.beta1 = c.num(t, "beta1");
    a.beta2 = c.num(t, "beta2");
    a.eps = c.num(t, "eps");
    a.weight_decay = c.num(t, "weightDecay");
  }
  int64_t step = c.i64("step");
  if (step < 1) c.range_error("step counts from 1");
  const double grad_scale = c.num("gradScale");
  const int64_t count = static_cast<int64_t>(ts.size());
  if (c.args().Get("maxGradNorm").IsUndefined()) {
    LK_RUN(c, adamw_step, ts.data(), count, step, static_cast<float>(grad_scale));
    return env.Undefined();
  }
  // Clipped step, as torch's clip_grad_norm_ on gradients already multiplied by grad_scale:
  //   n = |g| * grad_scale,  clip = min(1, max / (n + 1e-6)),  factor = float(grad_scale * clip)   (doubles)
  // A non-finite n updates nothing. On a GPU the norm stays on the device between the two launches, so
  // the step never waits for it; it is read back once the update is queued.
  const double max_norm = c.num("maxGradNorm");
  std::vector<const float*> grads(ts.size());
  std::vector<int64_t> numels(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    grads[i] = ts[i].grad;
    numels[i] = ts[i].numel;
  }
  double norm = 0;
  bool updated = false;
  c.run([&](bool gpu) {
#ifdef LORAKIT_WITH_GPU
    if (gpu) {
      double* dev = gpu::norm_slot();
      gpu::grad_norm_device(grads.data(), numels.data(), count, dev);
      gpu::adamw_step_device_scale(ts.data(), count, step, grad_scale, dev, max_norm);
      gpu::copy_to_host(&norm, dev, sizeof(double));
      norm *= grad_scale;
      updated = std::isfinite(norm);
      return;
    }
#else
    (void)gpu;
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
  Call c(info, "gradNorm");
  const std::vector<Napi::Object> objs = object_list(c, "grads");
  std::vector<const float*> ptrs(objs.size());
  std::vector<int64_t> numels(objs.size());
  for (size_t i = 0; i < objs.size(); ++i) {
    numels[i] = c.i64(objs[i], "numel");
    ptrs[i] = c.ptr<float>(objs[i], "s", {numels[i]});
  }
  const double norm = LK_RUN(c, grad_norm, ptrs.data(), numels.data(), static_cast<int64_t>(ptrs.size()));
  return Napi::Number::New(info.Env(), norm);
}

// The NF4 code book of csrc/bnb_codes.h, the one source of the table that lib/nf4 exports as NF4_CODE.
Napi::Value Nf4CodeBook(const Napi::CallbackInfo& info) {
  static constexpr float kCodes[] = {LORAKIT_NF4_CODES};
  Napi::Float32Array out = Napi::Float32Array::New(info.Env(), std::size(kCodes));
  std::copy(std::begin(kCodes), std::end(kCodes), out.Data());
  return out;
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
  export_all(env, exports, {
      {"fill", Fill},
      {"arange", Arange},
      {"cast", Cast},
      {"randUniform", [](const Napi::CallbackInfo& i) { return Rand(i, false); }},
      {"randNormal", [](const Napi::CallbackInfo& i) { return Rand(i, true); }},
      {"gemm", Gemm},
      {"loraForward", LoraForward},
      {"loraBackward", LoraBackward},
      {"nf4Quantize", Nf4Quantize},
      {"nf4Dequantize", Nf4Dequantize},
      {"firstNonFinite", FirstNonFinite},
      {"absmaxQuantize", AbsmaxQuantize},
      {"absmaxDequantize", AbsmaxDequantize},
      {"nf4CodeBook", Nf4CodeBook},
      {"adamwStep", AdamWStep},
      {"gradNorm", GradNorm},
      {"backendInfo", BackendInfo},
      {"setGemmKernel", SetGemmKernel},
      {"memory", Memory},
  });
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
