// Reading plain values out of the argument objects that lib/native passes. TypeScript has validated
// them already; these checks exist so that a call that bypasses lib/ still gets an exception, never a
// crash or an out-of-bounds access.
#pragma once
#include <napi.h>

#include <cstdint>
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

inline size_t sz(int64_t n, size_t elem) { return static_cast<size_t>(n) * elem; }

template <typename T>
T* ptr(const Napi::Object& o, const char* key, int64_t n, const char* op, bool optional = false) {
  Storage* s = storage(o, key, sz(n, sizeof(T)), op, optional);
  return s ? static_cast<T*>(s->data()) : nullptr;
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
