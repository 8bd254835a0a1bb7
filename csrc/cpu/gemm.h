#pragma once
#include <string>

namespace lorakit::cpu {

// Which micro-kernel the GEMM uses: the widest the CPU supports unless overridden (tests pin each one).
// Returns false for an unknown or unsupported name.
bool set_gemm_kernel(const std::string& name);
std::string gemm_kernel();
bool cpu_has_avx2();
bool cpu_has_avx512();

}  // namespace lorakit::cpu
