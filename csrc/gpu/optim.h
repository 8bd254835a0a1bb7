// Gradient clipping that never waits for the device: the global norm is written to device memory and the
// AdamW step reads it there, so a clipped step costs the trainer no device-to-host round trip. Plain C++
// (no CUDA or HIP headers), like device.h, for csrc/napi. The kernels are in adamw.cu.
#pragma once
#include <cstdint>

#include "../ops.h"

namespace lorakit::gpu {

// A device double that holds the norm between the two calls below (one per device, reused every step).
double* norm_slot();

// grad_norm, with the result (the same double) stored at `norm` on the device instead of returned.
void grad_norm_device(const float* const* grads, const int64_t* numels, int64_t count, double* norm);

// adamw_step with the gradient factor taken from the device norm as lib/train/adamw.ts forms it on the
// host (torch's clip_grad_norm_ applied to gradients already multiplied by grad_scale):
//   n = norm * grad_scale;  clip = min(1, max_norm / (n + 1e-6));  factor = float(grad_scale * clip)
// in double. Where the host path throws on a non-finite n and updates nothing, this one leaves every
// parameter and moment untouched (the trainer reads the norm back later and reports the step).
void adamw_step_device_scale(const AdamWTensor* tensors, int64_t count, int64_t step, double grad_scale,
                             const double* norm, double max_norm);

}  // namespace lorakit::gpu
