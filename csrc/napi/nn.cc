// N-API surface of the transformer layer ops (csrc/cpu/{norm,attention,activation,embedding,loss}.cc) and of
// the generation ops (csrc/cpu/decode.cc).
// Same contract as addon.cc: plain argument objects validated in lib/ops/{nn,decode}.ts, every size re-checked.
#include "addon.h"
#include "args.h"

#include <algorithm>
#include <string>
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

// The pools' dtype: float32, or bfloat16 where memory matters.
DType pool_dtype(const Call& c) {
  const DType dt = c.dtype("dtype");
  if (dt != DType::F32 && dt != DType::BF16) c.type_error(std::string("the pools must be float32 or bfloat16, got ") + dtype_name(dt));
  return dt;
}

// {k, v, slots, kPool, vPool, n, width, poolSlots, dtype}
Napi::Value KvWrite(const Napi::CallbackInfo& info) {
  Call c(info, "kvWrite");
  KvWriteArgs a;
  a.n = c.i64("n");
  a.width = c.i64("width");
  a.pool_slots = c.i64("poolSlots");
  non_negative(c, {{"n", a.n}, {"width", a.width}, {"poolSlots", a.pool_slots}});
  a.kv_dtype = pool_dtype(c);
  a.k = c.ptr<float>("k", {a.n, a.width});
  a.v = c.ptr<float>("v", {a.n, a.width});
  a.slots = c.ptr<int64_t>("slots", {a.n});
  const int64_t pool = c.product("kPool", {a.pool_slots, a.width});
  a.k_pool = c.typed("kPool", pool, a.kv_dtype);
  a.v_pool = c.typed("vPool", pool, a.kv_dtype);
  // A slot past the pool would write outside it. Host slots are refused here; GPU slots are not read
  // back (a copy and a sync on every step): the GPU kernel must skip a slot >= poolSlots as it skips a
  // negative one, which keeps every write in bounds.
  if (!c.on_gpu())
    for (int64_t i = 0; i < a.n; ++i)
      if (a.slots[i] >= a.pool_slots)
        c.range_error("'slots'[" + std::to_string(i) + "] = " + std::to_string(a.slots[i]) + " must be below the pools' " +
                      std::to_string(a.pool_slots) + " slots (or negative, to skip the row)");
  LK_RUN(c, kv_write, a);
  return info.Env().Undefined();
}

// {q, kPool, vPool, blockTable, seq, ctx, out, dtype, n, hq, hkv, d, blockSize, maxBlocks, numSeqs, poolSlots, scale}
Napi::Value PagedAttention(const Napi::CallbackInfo& info) {
  Call c(info, "pagedAttention");
  PagedAttentionArgs a;
  a.n = c.i64("n");
  a.hq = c.i64("hq");
  a.hkv = c.i64("hkv");
  a.d = c.i64("d");
  a.block_size = c.i64("blockSize");
  a.max_blocks = c.i64("maxBlocks");
  a.num_seqs = c.i64("numSeqs");
  a.pool_slots = c.i64("poolSlots");
  non_negative(c, {{"n", a.n}, {"d", a.d}, {"maxBlocks", a.max_blocks}, {"numSeqs", a.num_seqs}, {"poolSlots", a.pool_slots}});
  if (a.hq < 1 || a.hkv < 1 || a.hq % a.hkv)
    c.range_error("query heads (" + std::to_string(a.hq) + ") must be a positive multiple of kv heads (" + std::to_string(a.hkv) + ")");
  if (a.block_size < 1) c.range_error("'blockSize' must be positive, got " + std::to_string(a.block_size));
  a.scale = static_cast<float>(c.num("scale"));
  a.kv_dtype = pool_dtype(c);
  const int64_t nq = c.product("q", {a.n, a.hq, a.d});
  a.q = c.ptr<float>("q", {nq});
  a.out = c.ptr<float>("out", {nq});
  const int64_t pool = c.product("kPool", {a.pool_slots, a.hkv, a.d});
  a.k_pool = c.typed("kPool", pool, a.kv_dtype);
  a.v_pool = c.typed("vPool", pool, a.kv_dtype);
  a.block_table = c.ptr<int64_t>("blockTable", {a.num_seqs, a.max_blocks});
  a.seq = c.ptr<int64_t>("seq", {a.n});
  a.ctx = c.ptr<int64_t>("ctx", {a.n});
  // A bad sequence id, context length or block id would read outside the table or the pools. Host
  // values are refused here, each entry of the table a row reaches included; GPU values are not read
  // back (a copy and a sync on every step): the GPU kernel must clamp instead (the sequence to
  // [0, numSeqs), the context to [1, maxBlocks * blockSize], each block id to the pools' blocks), which
  // keeps every read in bounds. lib/ builds valid ones.
  if (!c.on_gpu()) {
    const int64_t max_ctx = c.product("ctx", {a.max_blocks, a.block_size}), blocks = a.pool_slots / a.block_size;
    for (int64_t i = 0; i < a.n; ++i) {
      const std::string at = "[" + std::to_string(i) + "] = ";
      const int64_t s = a.seq[i], t = a.ctx[i];
      if (s < 0 || s >= a.num_seqs)
        c.range_error("'seq'" + at + std::to_string(s) + " must lie in [0, " + std::to_string(a.num_seqs) + "), the rows of 'blockTable'");
      if (t < 1 || t > max_ctx)
        c.range_error("'ctx'" + at + std::to_string(t) + " must lie in [1, " + std::to_string(max_ctx) + "] (maxBlocks " +
                      std::to_string(a.max_blocks) + " x blockSize " + std::to_string(a.block_size) + ")");
      for (int64_t b = 0; b <= (t - 1) / a.block_size; ++b) {
        const int64_t id = a.block_table[s * a.max_blocks + b];
        if (id < 0 || id >= blocks)
          c.range_error("'blockTable'[" + std::to_string(s) + ", " + std::to_string(b) + "] = " + std::to_string(id) + " (read by row " +
                        std::to_string(i) + ") must lie in [0, " + std::to_string(blocks) + "), the pools' blocks of " +
                        std::to_string(a.block_size) + " slots");
      }
    }
  }
  LK_RUN(c, paged_attention, a);
  return info.Env().Undefined();
}

// {x, y, m, in, out, ldx, ldy, segments: [{start, end, r, a, b, scale}]}
Napi::Value LoraSegments(const Napi::CallbackInfo& info) {
  Call c(info, "loraSegments");
  LoraSegmentsArgs a;
  a.m = c.i64("m");
  a.in = c.i64("in");
  a.out = c.i64("out");
  a.ldx = c.i64("ldx");
  a.ldy = c.i64("ldy");
  non_negative(c, {{"m", a.m}, {"in", a.in}, {"out", a.out}});
  if (a.ldx < a.in || a.ldy < a.out) c.range_error("row strides must be at least the row widths ('ldx' >= 'in', 'ldy' >= 'out')");
  // The elements up to the end of the last row: (m - 1) * ld + width.
  const auto extent = [&](const char* key, int64_t ld, int64_t width) { return a.m == 0 ? 0 : c.product(key, {a.m - 1, ld}) + width; };
  a.x = c.ptr<float>("x", {extent("x", a.ldx, a.in)});
  a.y = c.ptr<float>("y", {extent("y", a.ldy, a.out)});
  Napi::Value list = c.args().Get("segments");
  if (!list.IsArray()) c.type_error("'segments' must be an array");
  Napi::Array arr = list.As<Napi::Array>();
  std::vector<LoraSegment> segs(arr.Length());
  std::vector<std::string> labels(segs.size());
  for (uint32_t j = 0; j < arr.Length(); ++j) {
    const std::string name = "segments[" + std::to_string(j) + "]";
    Napi::Value v = arr.Get(j);
    if (!v.IsObject()) c.type_error("'" + name + "' must be an object {start, end, r, a, b, scale}");
    Napi::Object o = v.As<Napi::Object>();
    LoraSegment& s = segs[j];
    s.start = c.i64(o, "start");
    s.end = c.i64(o, "end");
    s.r = c.i64(o, "r");
    s.scale = static_cast<float>(c.num(o, "scale"));
    if (s.start < 0 || s.start > s.end || s.end > a.m)
      c.range_error("'" + name + "' covers rows [" + std::to_string(s.start) + ", " + std::to_string(s.end) +
                    "), but must have 0 <= start <= end <= m = " + std::to_string(a.m));
    if (s.r < 0) c.range_error("'" + name + "' has rank " + std::to_string(s.r) + ", which must be non-negative");
    const std::string la = name + ".a", lb = name + ".b";
    s.a = static_cast<const float*>(c.storage(o, "a", static_cast<size_t>(c.product(la.c_str(), {s.r, a.in}, 4)), false, la.c_str())->data());
    s.b = static_cast<const float*>(c.storage(o, "b", static_cast<size_t>(c.product(lb.c_str(), {a.out, s.r}, 4)), false, lb.c_str())->data());
    const std::string lbt = name + ".bt";
    if (Storage* bt = c.storage(o, "bt", static_cast<size_t>(c.product(lbt.c_str(), {s.r, a.out}, 4)), true, lbt.c_str())) s.bt = static_cast<const float*>(bt->data());
  }
  // Two segments adding into one row would race between threads (and is not what a batch means).
  std::vector<size_t> order;
  for (size_t j = 0; j < segs.size(); ++j)
    if (segs[j].start < segs[j].end) order.push_back(j);
  std::sort(order.begin(), order.end(), [&](size_t p, size_t q) { return segs[p].start < segs[q].start; });
  for (size_t i = 1; i < order.size(); ++i)
    if (segs[order[i]].start < segs[order[i - 1]].end)
      c.range_error("'segments[" + std::to_string(order[i]) + "]' overlaps 'segments[" + std::to_string(order[i - 1]) + "]'");
  a.count = static_cast<int64_t>(segs.size());
  a.segments = segs.data();
  LK_RUN(c, lora_segments, a);
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
      {"kvWrite", KvWrite},
      {"pagedAttention", PagedAttention},
      {"loraSegments", LoraSegments},
  });
}

}  // namespace lorakit::napi
