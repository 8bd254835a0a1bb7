// N-API surface of the transformer layer ops (csrc/cpu/{norm,attention,activation,embedding,loss}.cc).
// Same contract as addon.cc: plain argument objects validated in lib/ops/nn.ts, every size re-checked.
#include "addon.h"
#include "args.h"

#include <vector>

namespace lorakit::napi {
namespace {

void non_negative(const Call& c, std::initializer_list<std::pair<const char*, int64_t>> dims) {
  for (auto& [name, v] : dims)
    if (v < 0) c.range_error(std::string("'") + name + "' must be non-negative");
}

NormArgs norm_args(Call& c, bool backward, bool centered) {
  NormArgs a;
  a.rows = c.i64("rows");
  a.dim = c.i64("dim");
  non_negative(c, {{"rows", a.rows}, {"dim", a.dim}});
  const int64_t n = c.product("x", {a.rows, a.dim});
  a.x = c.ptr<float>("x", {n});
  a.w = c.ptr<float>("w", {a.dim});
  a.rstd = c.ptr<float>("rstd", {a.rows});
  if (centered) a.mean = c.ptr<float>("mean", {a.rows});
  if (!backward) {
    a.eps = static_cast<float>(c.num("eps"));
    a.b = centered ? c.ptr<float>("b", {a.dim}, true) : nullptr;
    a.y = c.ptr<float>("y", {n});
  } else {
    a.dy = c.ptr<float>("dy", {n});
    a.dx = c.ptr<float>("dx", {n}, true);
    a.dw = c.ptr<float>("dw", {a.dim}, true);
    if (centered) a.db = c.ptr<float>("db", {a.dim}, true);
  }
  return a;
}

template <bool Backward, bool Centered>
Napi::Value Norm(const Napi::CallbackInfo& info) {
  Call c(info, Centered ? (Backward ? "layerNorm.backward" : "layerNorm") : (Backward ? "rmsNorm.backward" : "rmsNorm"));
  NormArgs a = norm_args(c, Backward, Centered);
  c.run([&](bool g) {
    if (Centered && Backward) LK_CALL(g, layernorm_backward, a);
    else if (Centered) LK_CALL(g, layernorm_forward, a);
    else if (Backward) LK_CALL(g, rmsnorm_backward, a);
    else LK_CALL(g, rmsnorm_forward, a);
  });
  return info.Env().Undefined();
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Call c(info, "rope");
  RopeArgs a;
  a.tokens = c.i64("tokens");
  a.heads = c.i64("heads");
  a.head_dim = c.i64("headDim");
  a.seq = c.i64("seq");
  non_negative(c, {{"tokens", a.tokens}, {"heads", a.heads}, {"headDim", a.head_dim}});
  if (a.head_dim % 2) c.range_error("'headDim' must be even, got " + std::to_string(a.head_dim));
  if (a.seq < 1) c.range_error("'seq' must be positive");
  a.x = c.ptr<float>("x", {a.tokens, a.heads, a.head_dim});
  a.pos = c.ptr<int64_t>("pos", {a.tokens}, true);
  a.theta = static_cast<float>(c.num("theta"));
  a.inverse = c.flag("inverse");
  LK_RUN(c, rope, a);
  return info.Env().Undefined();
}

template <bool Backward>
Napi::Value Attention(const Napi::CallbackInfo& info) {
  Call c(info, Backward ? "attention.backward" : "attention");
  AttentionArgs a;
  a.batch = c.i64("batch");
  a.seq = c.i64("seq");
  a.hq = c.i64("hq");
  a.hkv = c.i64("hkv");
  a.d = c.i64("d");
  non_negative(c, {{"batch", a.batch}, {"seq", a.seq}, {"d", a.d}});
  if (a.hq < 1 || a.hkv < 1 || a.hq % a.hkv)
    c.range_error("query heads (" + std::to_string(a.hq) + ") must be a positive multiple of kv heads (" + std::to_string(a.hkv) + ")");
  a.scale = static_cast<float>(c.num("scale"));
  const int64_t nq = c.product("q", {a.batch, a.seq, a.hq, a.d}), nkv = c.product("k", {a.batch, a.seq, a.hkv, a.d});
  a.q = c.ptr<float>("q", {nq});
  a.k = c.ptr<float>("k", {nkv});
  a.v = c.ptr<float>("v", {nkv});
  a.out = c.ptr<float>("out", {nq});
  a.lse = c.ptr<float>("lse", {a.batch, a.hq, a.seq});
  a.starts = c.ptr<int64_t>("starts", {a.batch, a.seq}, true);
  // A bad document start would index outside its row. Host starts are refused here; GPU starts are not
  // read back (a copy and a sync on every call): the GPU kernels clamp each start to [0, t] instead
  // (doc_start in csrc/gpu/attention.cu), which keeps every read in bounds. lib/data makes valid ones.
  if (a.starts && !c.on_gpu())
    for (int64_t i = 0; i < a.batch * a.seq; ++i)
      if (a.starts[i] < 0 || a.starts[i] > i % a.seq)
        c.range_error("starts[" + std::to_string(i) + "] = " + std::to_string(a.starts[i]) + " must lie in [0, its position in the row]");
  if (Backward) {
    a.dout = c.ptr<float>("dout", {nq});
    a.dq = c.ptr<float>("dq", {nq});
    a.dk = c.ptr<float>("dk", {nkv});
    a.dv = c.ptr<float>("dv", {nkv});
  }
  c.run([&](bool g) {
    if (Backward) LK_CALL(g, attention_backward, a);
    else LK_CALL(g, attention_forward, a);
  });
  return info.Env().Undefined();
}

// An elementwise op's count 'n' and its float storages at `keys`, n elements each, read in that order.
struct Elementwise {
  int64_t n;
  std::vector<float*> p;
};

Elementwise elementwise(Call& c, std::initializer_list<const char*> keys) {
  Elementwise e{c.i64("n"), {}};
  non_negative(c, {{"n", e.n}});
  for (const char* key : keys) e.p.push_back(c.ptr<float>(key, {e.n}));
  return e;
}

Napi::Value Gelu(const Napi::CallbackInfo& info) {
  Call c(info, "gelu");
  const Elementwise e = elementwise(c, {"x", "y"});
  LK_RUN(c, gelu_tanh_forward, e.p[0], e.p[1], e.n);
  return info.Env().Undefined();
}

Napi::Value GeluBackward(const Napi::CallbackInfo& info) {
  Call c(info, "gelu.backward");
  const Elementwise e = elementwise(c, {"dy", "x", "dx"});
  LK_RUN(c, gelu_tanh_backward, e.p[0], e.p[1], e.p[2], e.n);
  return info.Env().Undefined();
}

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Call c(info, "swiglu");
  const Elementwise e = elementwise(c, {"gate", "up", "y"});
  LK_RUN(c, swiglu_forward, e.p[0], e.p[1], e.p[2], e.n);
  return info.Env().Undefined();
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  Call c(info, "swiglu.backward");
  const Elementwise e = elementwise(c, {"dy", "gate", "up", "dgate", "dup"});
  LK_RUN(c, swiglu_backward, e.p[0], e.p[1], e.p[2], e.p[3], e.p[4], e.n);
  return info.Env().Undefined();
}

Napi::Value Axpy(const Napi::CallbackInfo& info) {
  Call c(info, "axpy");
  const Elementwise e = elementwise(c, {"x", "y"});
  const float alpha = static_cast<float>(c.num("alpha"));
  LK_RUN(c, axpy, alpha, e.p[0], e.p[1], e.n);
  return info.Env().Undefined();
}

template <bool Backward>
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Call c(info, Backward ? "embedding.backward" : "embedding");
  int64_t n = c.i64("n"), dim = c.i64("dim"), vocab = c.i64("vocab");
  non_negative(c, {{"n", n}, {"dim", dim}, {"vocab", vocab}});
  const int64_t* ids = c.ptr<int64_t>("ids", {n});
  if (Backward) {
    const float* dout = c.ptr<float>("dout", {n, dim});
    float* dtable = c.ptr<float>("dtable", {vocab, dim});
    LK_RUN(c, embedding_backward, ids, dout, dtable, n, dim, vocab);
  } else {
    const float* table = c.ptr<float>("table", {vocab, dim});
    float* out = c.ptr<float>("out", {n, dim});
    LK_RUN(c, embedding_forward, ids, table, out, n, dim, vocab);
  }
  return info.Env().Undefined();
}

Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Call c(info, "crossEntropy");
  int64_t rows = c.i64("rows"), vocab = c.i64("vocab");
  non_negative(c, {{"rows", rows}, {"vocab", vocab}});
  if (vocab < 1) c.range_error("'vocab' must be positive");
  float* logits = c.ptr<float>("logits", {rows, vocab});
  const int64_t* labels = c.ptr<int64_t>("labels", {rows});
  int64_t ignore = c.i64("ignoreIndex"), count = 0;
  float scale = static_cast<float>(c.num("gradScale"));
  bool grad = c.flag("wantGrad");
  double loss = LK_RUN(c, cross_entropy, logits, labels, rows, vocab, ignore, scale, grad, &count);
  Napi::Object r = Napi::Object::New(env);
  r.Set("loss", loss);
  r.Set("count", static_cast<double>(count));
  return r;
}

// {src, srcLd, srcOffset, dst, dstLd, dstOffset, rows, cols, accumulate}: offsets in elements.
Napi::Value Copy2d(const Napi::CallbackInfo& info) {
  Call c(info, "copy2d");
  int64_t rows = c.i64("rows"), cols = c.i64("cols");
  int64_t sld = c.i64("srcLd"), soff = c.i64("srcOffset"), dld = c.i64("dstLd"), doff = c.i64("dstOffset");
  non_negative(c, {{"rows", rows}, {"cols", cols}, {"srcOffset", soff}, {"dstOffset", doff}});
  if (sld < cols || dld < cols) c.range_error("row strides must be at least 'cols'");
  if (rows == 0 || cols == 0) return info.Env().Undefined();
  // The elements up to the last one read or written: offset + (rows - 1) * ld + cols. The offset and
  // cols are below 2^54 (i64) and the checked product below 2^53, so the sum cannot wrap.
  const auto extent = [&](const char* key, int64_t off, int64_t ld) { return off + c.product(key, {rows - 1, ld}) + cols; };
  const float* src = c.ptr<float>("src", {extent("src", soff, sld)}) + soff;
  float* dst = c.ptr<float>("dst", {extent("dst", doff, dld)}) + doff;
  bool acc = c.flag("accumulate");
  LK_RUN(c, copy2d, src, sld, dst, dld, rows, cols, acc);
  return info.Env().Undefined();
}

}  // namespace

void register_nn(Napi::Env env, Napi::Object exports) {
  export_all(env, exports, {
      {"layerNormForward", Norm<false, true>},
      {"layerNormBackward", Norm<true, true>},
      {"rmsNormForward", Norm<false, false>},
      {"rmsNormBackward", Norm<true, false>},
      {"rope", Rope},
      {"attentionForward", Attention<false>},
      {"attentionBackward", Attention<true>},
      {"geluForward", Gelu},
      {"geluBackward", GeluBackward},
      {"swigluForward", Swiglu},
      {"swigluBackward", SwigluBackward},
      {"embeddingForward", Embedding<false>},
      {"embeddingBackward", Embedding<true>},
      {"crossEntropy", CrossEntropy},
      {"copy2d", Copy2d},
      {"axpy", Axpy},
  });
}

}  // namespace lorakit::napi
