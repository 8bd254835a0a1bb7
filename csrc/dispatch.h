// One dispatch point for every op: csrc/cpu and csrc/gpu implement the same list (ops.h), and the
// napi layer calls LK_CALL(device, op, args...) with the device its storages live on. A build without
// the GPU backend (the plain CPU addon) compiles the GPU branch away.
#pragma once
#include "ops.h"

#ifdef LORAKIT_WITH_GPU
#include "gpu/device.h"
namespace lorakit {
LORAKIT_DECLARE_OPS(gpu)
}
#define LK_CALL(gpu_device, fn, ...) \
  ((gpu_device) ? ::lorakit::gpu::fn(__VA_ARGS__) : ::lorakit::cpu::fn(__VA_ARGS__))
#else
#define LK_CALL(gpu_device, fn, ...) ((void)(gpu_device), ::lorakit::cpu::fn(__VA_ARGS__))
#endif
