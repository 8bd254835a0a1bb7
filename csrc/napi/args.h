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
  Napi::Value Upload(const Napi::CallbackInfo& info);
  Napi::Value Download(const Napi::CallbackInfo& info);
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

// The argument object of an op. Reading it starts a new call: the storages read from it afterwards must
// all live on one device, which on_gpu() then reports (and selects, for a GPU).
Napi::Object object_arg(const Napi::CallbackInfo& info, size_t i, const char* op);
bool on_gpu(Napi::Env env);
double num(const Napi::Object& o, const char* key, const char* op);
int64_t i64(const Napi::Object& o, const char* key, const char* op);
bool flag(const Napi::Object& o, const char* key, const char* op);
DType dtype(const Napi::Object& o, const char* key, const char* op);
// The live storage at `key` holding at least `bytes`; null when the key is absent or null and optional.
// `label` names the argument in errors when the key alone would not (an operand's 's').
Storage* storage(const Napi::Object& o, const char* key, size_t bytes, const char* op, bool optional = false,
                 const char* label = nullptr);

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

// The live storage at `key` with room for the product of `dims` elements of T.
template <typename T>
T* ptr(const Napi::Object& o, const char* key, std::initializer_list<int64_t> dims, const char* op, bool optional = false) {
  const int64_t bytes = product(o.Env(), op, key, dims, static_cast<int64_t>(sizeof(T)));
  Storage* s = storage(o, key, static_cast<size_t>(bytes), op, optional);
  return s ? static_cast<T*>(s->data()) : nullptr;
}

// The live storage at `key` with room for n elements of dtype dt.
inline void* typed(const Napi::Object& o, const char* key, int64_t n, DType dt, const char* op) {
  return ptr<uint8_t>(o, key, {n, static_cast<int64_t>(dtype_size(dt))}, op);
}

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

}  // namespace lorakit::napi
