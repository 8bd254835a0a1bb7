// Reading plain values out of the argument objects that lib/native passes. TypeScript has validated
// them already; these checks exist so that a call that bypasses lib/ still gets an exception, never a
// crash or an out-of-bounds access.
#pragma once
#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>

#include "../dispatch.h"

namespace lorakit::napi {

// Native bytes on one device, owned by exactly one JavaScript Storage object.
class Storage : public Napi::ObjectWrap<Storage> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Storage(const Napi::CallbackInfo& info);
  ~Storage() override;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool live() const { return live_; }
  // -1 for host memory, else the GPU ordinal.
  int device() const { return device_; }

 private:
  Napi::Value Upload(const Napi::CallbackInfo& info) { return Copy(info, true); }
  Napi::Value Download(const Napi::CallbackInfo& info) { return Copy(info, false); }
  // Copies a TypedArray argument of exactly bytes() bytes into the storage (upload) or out of it.
  Napi::Value Copy(const Napi::CallbackInfo& info, bool upload);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool live_ = false;
  int device_ = -1;
};

// "cpu" or "cuda:N".
std::string device_name(int device);

[[noreturn]] void throw_type(Napi::Env env, const std::string& msg);
[[noreturn]] void throw_range(Napi::Env env, const std::string& msg);

double num(const Napi::Object& o, const char* key, const char* op);
int64_t i64(const Napi::Object& o, const char* key, const char* op);
bool flag(const Napi::Object& o, const char* key, const char* op);
DType dtype(const Napi::Object& o, const char* key, const char* op);

// Makes a GPU the current device for what follows (no-op in the CPU addon, where no storage is on one).
inline void gpu_select(int device) {
#ifdef LORAKIT_WITH_GPU
  gpu::set_device(device);
#else
  (void)device;
#endif
}

// The largest element count or byte size a call may name: 2^53, the largest integer JavaScript holds
// exactly, and more than any storage holds.
constexpr int64_t kMaxSize = int64_t{1} << 53;

// dims[0] * dims[1] * ... * elem, or an ERR_OUT_OF_RANGE error naming `what` when a factor is negative
// or the product passes kMaxSize. Every size a kernel trusts is a product of numbers from JavaScript,
// compared with a storage's bytes: a product that wrapped around int64 passed that comparison (a
// [4096, 2^52] shape needed "0 bytes") and sent the kernel far past the end of its buffers.
int64_t product(Napi::Env env, const char* op, const char* what, std::initializer_list<int64_t> dims, int64_t elem = 1);

// Kernels throw lorakit::Error for conditions only they can see; JavaScript gets an Error with its code.
template <typename F>
auto guarded(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", e.code);
    throw err;
  } catch (const std::bad_alloc&) {
    Napi::Error err = Napi::Error::New(env, "out of host memory");
    err.Set("code", "ERR_OUT_OF_MEMORY");
    throw err;
  } catch (const std::exception& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", "ERR_NATIVE");
    throw err;
  }
}

// One op call: the argument object that lib/native passed, and the device of the storages read from it
// so far. Each binding makes one and hands it to its helpers; every storage is read through it, so all
// of a call's storages must share one device, and nothing about a call outlives it.
class Call {
 public:
  // info[i] must be the argument object; `op` names the call in every error.
  Call(const Napi::CallbackInfo& info, const char* op, size_t i = 0);

  const Napi::Object& args() const { return args_; }

  // "<op>: <msg>" as a TypeError (ERR_INVALID_ARG) or a RangeError (ERR_OUT_OF_RANGE).
  [[noreturn]] void type_error(const std::string& msg) const;
  [[noreturn]] void range_error(const std::string& msg) const;

  // Plain values of the argument object, or of an object nested in it.
  double num(const char* key) const { return napi::num(args_, key, op_); }
  double num(const Napi::Object& o, const char* key) const { return napi::num(o, key, op_); }
  int64_t i64(const char* key) const { return napi::i64(args_, key, op_); }
  int64_t i64(const Napi::Object& o, const char* key) const { return napi::i64(o, key, op_); }
  bool flag(const char* key) const { return napi::flag(args_, key, op_); }
  bool flag(const Napi::Object& o, const char* key) const { return napi::flag(o, key, op_); }
  DType dtype(const char* key) const { return napi::dtype(args_, key, op_); }
  DType dtype(const Napi::Object& o, const char* key) const { return napi::dtype(o, key, op_); }
  int64_t product(const char* what, std::initializer_list<int64_t> dims, int64_t elem = 1) const {
    return napi::product(env_, op_, what, dims, elem);
  }

  // The live storage at o[key] holding at least `bytes`; null when the key is absent or null and
  // optional. `label` names the argument in errors when the key alone would not (an operand's 's').
  // The first storage read fixes the call's device; one on another device is an ERR_DEVICE error.
  Storage* storage(const Napi::Object& o, const char* key, size_t bytes, bool optional = false, const char* label = nullptr);

  // The live storage at o[key] (or args()[key]) with room for the product of `dims` elements of T.
  template <typename T>
  T* ptr(const Napi::Object& o, const char* key, std::initializer_list<int64_t> dims, bool optional = false) {
    const int64_t bytes = product(key, dims, static_cast<int64_t>(sizeof(T)));
    Storage* s = storage(o, key, static_cast<size_t>(bytes), optional);
    return s ? static_cast<T*>(s->data()) : nullptr;
  }
  template <typename T>
  T* ptr(const char* key, std::initializer_list<int64_t> dims, bool optional = false) {
    return ptr<T>(args_, key, dims, optional);
  }

  // The live storage at args()[key] with room for n elements of dtype dt.
  void* typed(const char* key, int64_t n, DType dt) { return ptr<uint8_t>(key, {n, static_cast<int64_t>(dtype_size(dt))}); }

  // Whether the storages read so far live on a GPU, which this then makes the current device. A call
  // that has read none runs on the CPU.
  bool on_gpu() const;

  // f(on_gpu()) under guarded(): the kernel launch of a binding.
  template <typename F>
  auto run(F&& f) const -> decltype(f(true)) {
    return guarded(env_, [&] { return f(on_gpu()); });
  }

 private:
  Napi::Env env_;
  const char* op_;
  Napi::Object args_;
  // -2 until the first storage is read, then its device (-1: host); the key that set it names it in errors.
  int device_ = -2;
  std::string device_key_;
};

// Runs op `fn` of the backend that call `c`'s storages live on, guarded: LK_RUN(c, fill, dst, dt, n, v).
#define LK_RUN(c, fn, ...) (c).run([&](bool gpu_) { return LK_CALL(gpu_, fn, __VA_ARGS__); })

}  // namespace lorakit::napi
