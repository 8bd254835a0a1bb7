#pragma once
#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

namespace lorakit::napi {

// Per-environment state (main thread and each worker_thread get their own), never globals.
struct Instance {
  Napi::FunctionReference storage_ctor;
  int64_t host_bytes = 0;
};

Instance& instance(Napi::Env env);

using Binding = Napi::Value (*)(const Napi::CallbackInfo&);

// exports[name] = a JavaScript function calling f, for each {name, f}.
void export_all(Napi::Env env, Napi::Object exports, std::initializer_list<std::pair<const char*, Binding>> fns);

void register_ops(Napi::Env env, Napi::Object exports);
void register_nn(Napi::Env env, Napi::Object exports);
void register_linalg(Napi::Env env, Napi::Object exports);
void register_gpu(Napi::Env env, Napi::Object exports);

}  // namespace lorakit::napi
