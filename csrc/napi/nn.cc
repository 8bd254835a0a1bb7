// N-API surface of the transformer layer ops (csrc/cpu/{norm,attention,activation,embedding,loss}.cc).
// Same contract as addon.cc: plain argument objects validated in lib/ops/nn.ts, every size re-checked.
#include "addon.h"
#include "args.h"

#include <vector>

namespace lorakit::napi {
namespace {

void positive(const Napi::Object& o, const char* op, std::initializer_list<std::pair<const char*, int64_t>> dims) {
  for (auto& [name, v] : dims)
    if (v < 0) throw_range(o.Env(), std::string(op) + ": '" + name + "' must be non-negative");
}

NormArgs norm_args(const Napi::Object& o, const char* op, bool backward, bool centered) {
  NormArgs a;
  a.rows = i64(o, "rows", op);
  a.dim = i64(o, "dim", op);
  positive(o, op, {{"rows", a.rows}, {"dim", a.dim}});
  const int64_t n = product(o.Env(), op, "x", {a.rows, a.dim});
  a.x = ptr<float>(o, "x", {n}, op);
  a.w = ptr<float>(o, "w", {a.dim}, op);
  a.rstd = ptr<float>(o, "rstd", {a.rows}, op);
  if (centered) a.mean = ptr<float>(o, "mean", {a.rows}, op);
  if (!backward) {
    a.eps = static_cast<float>(num(o, "eps", op));
    a.b = centered ? ptr<float>(o, "b", {a.dim}, op, true) : nullptr;
    a.y = ptr<float>(o, "y", {n}, op);
  } else {
    a.dy = ptr<float>(o, "dy", {n}, op);
    a.dx = ptr<float>(o, "dx", {n}, op, true);
    a.dw = ptr<float>(o, "dw", {a.dim}, op, true);
    if (centered) a.db = ptr<float>(o, "db", {a.dim}, op, true);
  }
  return a;
}

template <bool Backward, bool Centered>
Napi::Value Norm(const Napi::CallbackInfo& info) {
  const char* op = Centered ? (Backward ? "layerNorm.backward" : "layerNorm") : (Backward ? "rmsNorm.backward" : "rmsNorm");
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  NormArgs a = norm_args(o, op, Backward, Centered);
  guarded(env, [&] {
    const bool g = on_gpu(env);
    if (Centered && Backward) LK_CALL(g, layernorm_backward, a);
    else if (Centered) LK_CALL(g, layernorm_forward, a);
    else if (Backward) LK_CALL(g, rmsnorm_backward, a);
    else LK_CALL(g, rmsnorm_forward, a);
  });
  return env.Undefined();
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  const char* op = "rope";
  auto o = object_arg(info, 0, op);
  RopeArgs a;
  a.tokens = i64(o, "tokens", op);
  a.heads = i64(o, "heads", op);
  a.head_dim = i64(o, "headDim", op);
  a.seq = i64(o, "seq", op);
  positive(o, op, {{"tokens", a.tokens}, {"heads", a.heads}, {"headDim", a.head_dim}});
  if (a.head_dim % 2) throw_range(o.Env(), std::string(op) + ": 'headDim' must be even, got " + std::to_string(a.head_dim));
  if (a.seq < 1) throw_range(o.Env(), std::string(op) + ": 'seq' must be positive");
  a.x = ptr<float>(o, "x", {a.tokens, a.heads, a.head_dim}, op);
  a.pos = ptr<int64_t>(o, "pos", {a.tokens}, op, true);
  a.theta = static_cast<float>(num(o, "theta", op));
  a.inverse = flag(o, "inverse", op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), rope, a); });
  return info.Env().Undefined();
}

template <bool Backward>
Napi::Value Attention(const Napi::CallbackInfo& info) {
  const char* op = Backward ? "attention.backward" : "attention";
  auto o = object_arg(info, 0, op);
  AttentionArgs a;
  a.batch = i64(o, "batch", op);
  a.seq = i64(o, "seq", op);
  a.hq = i64(o, "hq", op);
  a.hkv = i64(o, "hkv", op);
  a.d = i64(o, "d", op);
  positive(o, op, {{"batch", a.batch}, {"seq", a.seq}, {"d", a.d}});
  if (a.hq < 1 || a.hkv < 1 || a.hq % a.hkv)
    throw_range(o.Env(), std::string(op) + ": query heads (" + std::to_string(a.hq) + ") must be a positive multiple of kv heads (" +
                             std::to_string(a.hkv) + ")");
  a.scale = static_cast<float>(num(o, "scale", op));
  const int64_t nq = product(o.Env(), op, "q", {a.batch, a.seq, a.hq, a.d}), nkv = product(o.Env(), op, "k", {a.batch, a.seq, a.hkv, a.d});
  a.q = ptr<float>(o, "q", {nq}, op);
  a.k = ptr<float>(o, "k", {nkv}, op);
  a.v = ptr<float>(o, "v", {nkv}, op);
  a.out = ptr<float>(o, "out", {nq}, op);
  a.lse = ptr<float>(o, "lse", {a.batch, a.hq, a.seq}, op);
  a.starts = ptr<int64_t>(o, "starts", {a.batch, a.seq}, op, true);
  // A bad document start would index outside the row, so it is checked here, on a host copy for a GPU.
  std::vector<int64_t> host_starts;
  const int64_t* starts = a.starts;
#ifdef LORAKIT_WITH_GPU
  if (starts && instance(o.Env()).call_device >= 0) {
    host_starts.resize(static_cast<size_t>(a.batch * a.seq));
    guarded(o.Env(), [&] {
      gpu_select(instance(o.Env()).call_device);
      gpu::copy_to_host(host_starts.data(), a.starts, host_starts.size() * sizeof(int64_t));
    });
    starts = host_starts.data();
  }
#endif
  if (starts)
    for (int64_t i = 0; i < a.batch * a.seq; ++i)
      if (starts[i] < 0 || starts[i] > i % a.seq)
        throw_range(o.Env(), std::string(op) + ": starts[" + std::to_string(i) + "] = " + std::to_string(starts[i]) +
                                 " must lie in [0, its position in the row]");
  if (Backward) {
    a.dout = ptr<float>(o, "dout", {nq}, op);
    a.dq = ptr<float>(o, "dq", {nq}, op);
    a.dk = ptr<float>(o, "dk", {nkv}, op);
    a.dv = ptr<float>(o, "dv", {nkv}, op);
  }
  guarded(info.Env(), [&] {
    if (Backward) LK_CALL(on_gpu(info.Env()), attention_backward, a);
    else LK_CALL(on_gpu(info.Env()), attention_forward, a);
  });
  return info.Env().Undefined();
}

Napi::Value Gelu(const Napi::CallbackInfo& info) {
  const char* op = "gelu";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  positive(o, op, {{"n", n}});
  const float* x = ptr<float>(o, "x", {n}, op);
  float* y = ptr<float>(o, "y", {n}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), gelu_tanh_forward, x, y, n); });
  return info.Env().Undefined();
}

Napi::Value GeluBackward(const Napi::CallbackInfo& info) {
  const char* op = "gelu.backward";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  positive(o, op, {{"n", n}});
  const float* dy = ptr<float>(o, "dy", {n}, op);
  const float* x = ptr<float>(o, "x", {n}, op);
  float* dx = ptr<float>(o, "dx", {n}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), gelu_tanh_backward, dy, x, dx, n); });
  return info.Env().Undefined();
}

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  const char* op = "swiglu";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  positive(o, op, {{"n", n}});
  const float* gate = ptr<float>(o, "gate", {n}, op);
  const float* up = ptr<float>(o, "up", {n}, op);
  float* y = ptr<float>(o, "y", {n}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), swiglu_forward, gate, up, y, n); });
  return info.Env().Undefined();
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  const char* op = "swiglu.backward";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  positive(o, op, {{"n", n}});
  const float* dy = ptr<float>(o, "dy", {n}, op);
  const float* gate = ptr<float>(o, "gate", {n}, op);
  const float* up = ptr<float>(o, "up", {n}, op);
  float* dgate = ptr<float>(o, "dgate", {n}, op);
  float* dup = ptr<float>(o, "dup", {n}, op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), swiglu_backward, dy, gate, up, dgate, dup, n); });
  return info.Env().Undefined();
}

template <bool Backward>
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  const char* op = Backward ? "embedding.backward" : "embedding";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op), dim = i64(o, "dim", op), vocab = i64(o, "vocab", op);
  positive(o, op, {{"n", n}, {"dim", dim}, {"vocab", vocab}});
  const int64_t* ids = ptr<int64_t>(o, "ids", {n}, op);
  if (Backward) {
    const float* dout = ptr<float>(o, "dout", {n, dim}, op);
    float* dtable = ptr<float>(o, "dtable", {vocab, dim}, op);
    guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), embedding_backward, ids, dout, dtable, n, dim, vocab); });
  } else {
    const float* table = ptr<float>(o, "table", {vocab, dim}, op);
    float* out = ptr<float>(o, "out", {n, dim}, op);
    guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), embedding_forward, ids, table, out, n, dim, vocab); });
  }
  return info.Env().Undefined();
}

Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropy";
  Napi::Env env = info.Env();
  auto o = object_arg(info, 0, op);
  int64_t rows = i64(o, "rows", op), vocab = i64(o, "vocab", op);
  positive(o, op, {{"rows", rows}, {"vocab", vocab}});
  if (vocab < 1) throw_range(env, std::string(op) + ": 'vocab' must be positive");
  float* logits = ptr<float>(o, "logits", {rows, vocab}, op);
  const int64_t* labels = ptr<int64_t>(o, "labels", {rows}, op);
  int64_t ignore = i64(o, "ignoreIndex", op), count = 0;
  float scale = static_cast<float>(num(o, "gradScale", op));
  bool grad = flag(o, "wantGrad", op);
  double loss = guarded(env, [&] { return LK_CALL(on_gpu(env), cross_entropy, logits, labels, rows, vocab, ignore, scale, grad, &count); });
  Napi::Object r = Napi::Object::New(env);
  r.Set("loss", loss);
  r.Set("count", static_cast<double>(count));
  return r;
}

// {src, srcLd, srcOffset, dst, dstLd, dstOffset, rows, cols, accumulate}: offsets in elements.
Napi::Value Copy2d(const Napi::CallbackInfo& info) {
  const char* op = "copy2d";
  auto o = object_arg(info, 0, op);
  int64_t rows = i64(o, "rows", op), cols = i64(o, "cols", op);
  int64_t sld = i64(o, "srcLd", op), soff = i64(o, "srcOffset", op), dld = i64(o, "dstLd", op), doff = i64(o, "dstOffset", op);
  positive(o, op, {{"rows", rows}, {"cols", cols}, {"srcOffset", soff}, {"dstOffset", doff}});
  if (sld < cols || dld < cols) throw_range(o.Env(), std::string(op) + ": row strides must be at least 'cols'");
  if (rows == 0 || cols == 0) return info.Env().Undefined();
  // The elements up to the last one read or written: offset + (rows - 1) * ld + cols. The offset and
  // cols are below 2^54 (i64) and the checked product below 2^53, so the sum cannot wrap.
  const auto extent = [&](const char* key, int64_t off, int64_t ld) { return off + product(o.Env(), op, key, {rows - 1, ld}) + cols; };
  const float* src = ptr<float>(o, "src", {extent("src", soff, sld)}, op) + soff;
  float* dst = ptr<float>(o, "dst", {extent("dst", doff, dld)}, op) + doff;
  bool acc = flag(o, "accumulate", op);
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), copy2d, src, sld, dst, dld, rows, cols, acc); });
  return info.Env().Undefined();
}

Napi::Value Axpy(const Napi::CallbackInfo& info) {
  const char* op = "axpy";
  auto o = object_arg(info, 0, op);
  int64_t n = i64(o, "n", op);
  positive(o, op, {{"n", n}});
  const float* x = ptr<float>(o, "x", {n}, op);
  float* y = ptr<float>(o, "y", {n}, op);
  float alpha = static_cast<float>(num(o, "alpha", op));
  guarded(info.Env(), [&] { LK_CALL(on_gpu(info.Env()), axpy, alpha, x, y, n); });
  return info.Env().Undefined();
}

}  // namespace

void register_nn(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  fn("layerNormForward", Norm<false, true>);
  fn("layerNormBackward", Norm<true, true>);
  fn("rmsNormForward", Norm<false, false>);
  fn("rmsNormBackward", Norm<true, false>);
  fn("rope", Rope);
  fn("attentionForward", Attention<false>);
  fn("attentionBackward", Attention<true>);
  fn("geluForward", Gelu);
  fn("geluBackward", GeluBackward);
  fn("swigluForward", Swiglu);
  fn("swigluBackward", SwigluBackward);
  fn("embeddingForward", Embedding<false>);
  fn("embeddingBackward", Embedding<true>);
  fn("crossEntropy", CrossEntropy);
  fn("copy2d", Copy2d);
  fn("axpy", Axpy);
}

}  // namespace lorakit::napi
