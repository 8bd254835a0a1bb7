// N-API surface of the GPU runtime (csrc/gpu/device.h): what backend() reports, memory statistics,
// synchronisation and the GEMM engine switch. Compiled into the GPU addon only; the CPU addon's exports
// lack these functions, which is how lib/native tells the two apart.
#include "addon.h"
#include "args.h"

namespace lorakit::napi {
namespace {

int ordinal_arg(const Napi::CallbackInfo& info, const char* op) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw_type(info.Env(), std::string(op) + ": expected a device ordinal");
  const int d = info[0].As<Napi::Number>().Int32Value();
  if (d < 0 || d >= gpu::device_count())
    throw_range(info.Env(), std::string(op) + ": device " + std::to_string(d) + " does not exist (" +
                                std::to_string(gpu::device_count()) + " visible)");
  return d;
}

Napi::Value GpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("platform", gpu::platform());
  r.Set("runtime", gpu::runtime_version());
  r.Set("driver", gpu::driver_version());
#ifdef LORAKIT_BUILT_ARCHS
  // The architectures this binary has code for (HIP has no PTX-like fallback): the loader compares them
  // with each device's.
  r.Set("builtArchs", LORAKIT_BUILT_ARCHS);
#endif
  Napi::Array devices = Napi::Array::New(env);
  guarded(env, [&] {
    const int n = gpu::device_count();
    for (int i = 0; i < n; ++i) {
      gpu::DeviceInfo d = gpu::device_info(i);
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", d.name);
      o.Set("arch", d.arch);
      o.Set("totalBytes", static_cast<double>(d.total_bytes));
      o.Set("multiprocessors", d.sm_count);
      o.Set("warpSize", d.warp_size);
      devices.Set(static_cast<uint32_t>(i), o);
    }
    if (n == 0) r.Set("error", gpu::device_error());
    if (n > 0) {
      gpu::set_device(0);
      r.Set("gemmEngine", gpu::gemm_engine());
    }
  });
  r.Set("devices", devices);
  return r;
}

Napi::Value GpuMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int d = ordinal_arg(info, "gpuMemory");
  Napi::Object r = Napi::Object::New(env);
  guarded(env, [&] {
    gpu::set_device(d);
    r.Set("allocatedBytes", static_cast<double>(gpu::allocated_bytes()));
    r.Set("cachedBytes", static_cast<double>(gpu::cached_bytes()));
    r.Set("peakBytes", static_cast<double>(gpu::peak_bytes()));
  });
  return r;
}

template <void (*F)()>
Napi::Value OnDevice(const Napi::CallbackInfo& info) {
  const int d = ordinal_arg(info, "gpu");
  guarded(info.Env(), [&] {
    gpu::set_device(d);
    F();
  });
  return info.Env().Undefined();
}

Napi::Value SetGemmFallback(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[1].IsBoolean()) throw_type(info.Env(), "setGemmFallback: expected (device, on: boolean)");
  const int d = ordinal_arg(info, "setGemmFallback");
  guarded(info.Env(), [&] {
    gpu::set_device(d);
    gpu::set_gemm_fallback(info[1].As<Napi::Boolean>().Value());
  });
  return Napi::String::New(info.Env(), gpu::gemm_engine());
}

}  // namespace

void register_gpu(Napi::Env env, Napi::Object exports) {
  export_all(env, exports, {
      {"gpuInfo", GpuInfo},
      {"gpuMemory", GpuMemory},
      {"gpuSynchronize", OnDevice<gpu::synchronize>},
      {"gpuEmptyCache", OnDevice<gpu::empty_cache>},
      {"gpuResetPeak", OnDevice<gpu::reset_peak>},
      {"setGemmFallback", SetGemmFallback},
  });
}

}  // namespace lorakit::napi
