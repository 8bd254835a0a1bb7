#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

namespace lorakit::napi {

// Per-environment state (main thread and each worker_thread get their own), never globals.
struct Instance {
  Napi::FunctionReference storage_ctor;
  int64_t host_bytes = 0;
  // The device of the current call's storages (see object_arg/on_gpu), and the argument that set it.
  int call_device = -1;
  std::string call_device_key;
};

Instance& instance(Napi::Env env);


void register_ops(Napi::Env env, Napi::Object exports);
void register_nn(Napi::Env env, Napi::Object exports);
void register_linalg(Napi::Env env, Napi::Object exports);
void register_gpu(Napi::Env env, Napi::Object exports);

}  // namespace lorakit::napi
