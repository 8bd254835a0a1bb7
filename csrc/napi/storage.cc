#include <cmath>
#include <cstring>

#include "addon.h"
#include "args.h"

namespace lorakit::napi {

namespace {
// "cpu" -> -1; "cuda" / "cuda:N" -> N in a build with the GPU backend and a device N present.
int parse_device(Napi::Env env, const std::string& device) {
  if (device == "cpu") return -1;
  int ordinal = -1;
  if (device == "cuda") ordinal = 0;
  else if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() < 9 &&
           device.find_first_not_of("0123456789", 5) == std::string::npos)
    ordinal = std::stoi(device.substr(5));
  if (ordinal < 0) throw_type(env, "Storage: device must be 'cpu' or 'cuda[:N]', got '" + device + "'");
#ifdef LORAKIT_WITH_GPU
  const int n = gpu::device_count();
  if (ordinal >= n)
    throw_type(env, "Storage: device '" + device + "' is not available: " + std::to_string(n) + " GPU(s) visible");
  return ordinal;
#else
  throw_type(env, "Storage: device '" + device + "' is not available in the CPU addon (expected 'cpu')");
#endif
}

void* alloc_on(int device, size_t bytes) {
  if (device >= 0) gpu_select(device);
  return LK_CALL(device >= 0, alloc, bytes);
}

void release_on(int device, void* p, size_t bytes) {
  if (device >= 0) gpu_select(device);
  LK_CALL(device >= 0, release, p, bytes);
}
}  // namespace

std::string device_name(int device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

Napi::Function Storage::Define(Napi::Env env) {
  return DefineClass(env, "Storage",
                     {InstanceMethod("upload", &Storage::Upload), InstanceMethod("download", &Storage::Download),
                      InstanceMethod("free", &Storage::Free), InstanceAccessor("bytes", &Storage::GetBytes, nullptr),
                      InstanceAccessor("device", &Storage::GetDevice, nullptr)});
}

// new Storage(bytes, device)
Storage::Storage(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Storage>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsString())
    throw_type(env, "Storage: expected (bytes: number, device: string)");
  double bytes = info[0].As<Napi::Number>().DoubleValue();
  if (!(bytes >= 0) || bytes > 9007199254740992.0 || bytes != static_cast<double>(static_cast<int64_t>(bytes)))
    throw_range(env, "Storage: bytes must be a non-negative integer, got " + std::to_string(bytes));
  device_ = parse_device(env, info[1].As<Napi::String>().Utf8Value());
  try {
    data_ = alloc_on(device_, static_cast<size_t>(bytes));
  } catch (const Error& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", e.code);
    throw err;
  }
  bytes_ = static_cast<size_t>(bytes);
  live_ = true;
  instance(env).host_bytes += static_cast<int64_t>(bytes_);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes_));
}

Storage::~Storage() {
  // Garbage collection is only a safety net; dispose() normally released the bytes already. The
  // external-memory counter cannot be adjusted from a finalizer, which is one more reason to dispose.
  if (!live_) return;
  try {
    release_on(device_, data_, bytes_);
  } catch (...) {
    // A finalizer cannot throw; a failing driver at exit leaves nothing to protect.
  }
}

void Storage::release(Napi::Env env) {
  if (!live_) return;
  guarded(env, [&] { release_on(device_, data_, bytes_); });
  data_ = nullptr;
  live_ = false;
  instance(env).host_bytes -= static_cast<int64_t>(bytes_);
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(bytes_));
}

namespace {
// The bytes a TypedArray argument views, checked against the storage size.
std::pair<uint8_t*, size_t> view(const Napi::CallbackInfo& info, const char* what, size_t storage_bytes, bool live) {
  Napi::Env env = info.Env();
  if (!live) throw_type(env, std::string("Storage.") + what + ": the storage has been freed");
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw_type(env, std::string("Storage.") + what + ": expected a TypedArray");
  auto arr = info[0].As<Napi::TypedArray>();
  size_t n = arr.ByteLength();
  if (n != storage_bytes)
    throw_range(env, std::string("Storage.") + what + ": the array has " + std::to_string(n) + " bytes, the storage " +
                         std::to_string(storage_bytes));
  return {static_cast<uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset(), n};
}
}  // namespace

Napi::Value Storage::Copy(const Napi::CallbackInfo& info, bool upload) {
  // Plain variables, not a structured binding: C++17 lambdas cannot capture those.
  const auto span = view(info, upload ? "upload" : "download", bytes_, live_);
  uint8_t* p = span.first;
  const size_t n = span.second;
  if (!n) return info.Env().Undefined();
  if (device_ < 0) std::memcpy(upload ? data_ : p, upload ? p : data_, n);
#ifdef LORAKIT_WITH_GPU
  else
    guarded(info.Env(), [&] {
      gpu_select(device_);
      if (upload) gpu::copy_to_device(data_, p, n);
      else gpu::copy_to_host(p, data_, n);
    });
#endif
  return info.Env().Undefined();
}

Napi::Value Storage::Free(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

Napi::Value Storage::GetBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(bytes_));
}

Napi::Value Storage::GetDevice(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_name(device_)); }

// ---- argument readers -------------------------------------------------------------------------------

void throw_type(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  e.Set("code", "ERR_INVALID_ARG");
  throw e;
}

void throw_range(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::RangeError::New(env, msg);
  e.Set("code", "ERR_OUT_OF_RANGE");
  throw e;
}

Call::Call(const Napi::CallbackInfo& info, const char* op, size_t i) : env_(info.Env()), op_(op) {
  if (info.Length() <= i || !info[i].IsObject()) napi::throw_type(env_, std::string(op) + ": expected an argument object");
  args_ = info[i].As<Napi::Object>();
}

void Call::type_error(const std::string& msg) const { napi::throw_type(env_, std::string(op_) + ": " + msg); }

void Call::range_error(const std::string& msg) const { napi::throw_range(env_, std::string(op_) + ": " + msg); }

bool Call::on_gpu() const {
  if (device_ >= 0) gpu_select(device_);
  return device_ >= 0;
}

double num(const Napi::Object& o, const char* key, const char* op) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_type(o.Env(), std::string(op) + ": '" + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t i64(const Napi::Object& o, const char* key, const char* op) {
  Napi::Value v = o.Get(key);
  if (v.IsBigInt()) {
    bool lossless = true;
    int64_t r = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) throw_range(o.Env(), std::string(op) + ": '" + key + "' does not fit in 64 bits");
    return r;
  }
  double d = num(o, key, op);
  // The range first: converting a NaN or a double beyond int64 to int64 is undefined behaviour.
  if (!(d >= -9.0e15 && d <= 9.0e15) || d != std::trunc(d))
    throw_range(o.Env(), std::string(op) + ": '" + key + "' must be an integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

bool flag(const Napi::Object& o, const char* key, const char* op) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) throw_type(o.Env(), std::string(op) + ": '" + key + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

DType dtype(const Napi::Object& o, const char* key, const char* op) {
  int64_t d = i64(o, key, op);
  if (d < 0 || d > static_cast<int64_t>(DType::U8)) throw_range(o.Env(), std::string(op) + ": unknown dtype code " + std::to_string(d));
  return static_cast<DType>(d);
}

int64_t product(Napi::Env env, const char* op, const char* what, std::initializer_list<int64_t> dims, int64_t elem) {
  int64_t p = elem;
  bool over = false;
  for (int64_t d : dims) {
    if (d < 0) throw_range(env, std::string(op) + ": a size of '" + what + "' is negative (" + std::to_string(d) + ")");
    // Division instead of a multiply that could wrap; a zero factor still has every other one checked.
    if (d > kMaxSize || (d != 0 && p > kMaxSize / d)) over = true;
    else p *= d;
  }
  if (over || p > kMaxSize) {
    std::string factors;
    for (int64_t d : dims) factors += (factors.empty() ? "" : " x ") + std::to_string(d);
    throw_range(env, std::string(op) + ": '" + what + "' would need " + factors + (elem > 1 ? " elements of " + std::to_string(elem) + " bytes" : "") +
                         ", more than the 2^53 a call can address; the sizes are wrong");
  }
  return p;
}

Storage* Call::storage(const Napi::Object& o, const char* key, size_t bytes, bool optional, const char* label) {
  if (!label) label = key;
  Napi::Value v = o.Get(key);
  if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(instance(env_).storage_ctor.Value()))
    type_error(std::string("'") + label + "' must be a Storage");
  Storage* s = Storage::Unwrap(v.As<Napi::Object>());
  if (!s->live()) type_error(std::string("'") + label + "' has been disposed");
  if (device_ == -2) {
    device_ = s->device();
    device_key_ = label;
  } else if (device_ != s->device()) {
    Napi::Error e = Napi::TypeError::New(env_, std::string(op_) + ": '" + label + "' is on " + device_name(s->device()) + " but '" +
                                                   device_key_ + "' is on " + device_name(device_) +
                                                   "; move tensors with .to(device) first");
    e.Set("code", "ERR_DEVICE");
    throw e;
  }
  if (s->bytes() < bytes)
    range_error(std::string("'") + label + "' holds " + std::to_string(s->bytes()) + " bytes, the call needs " + std::to_string(bytes));
  return s;
}

}  // namespace lorakit::napi
