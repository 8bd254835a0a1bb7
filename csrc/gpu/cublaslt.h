// The slice of the vendor GEMM libraries' C ABI that gemm.cu loads at run time with dlopen: cuBLASLt on
// CUDA, rocBLAS on HIP. The build machines carry neither library's headers, and a lorakit binary must
// still load (and fall back to its own kernel) where the library is missing, so nothing here is linked.
// Every number below is the value NVIDIA's cublasLt.h / cublas_api.h / library_types.h and AMD's
// rocblas-types.h document; enums travel as int-sized values, as they do in the C ABI.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lorakit::gpu::blas {

// ---- cuBLASLt ---------------------------------------------------------------------------------------
using LtHandle = void*;      // cublasLtHandle_t
using LtMatmulDesc = void*;  // cublasLtMatmulDesc_t
using LtLayout = void*;      // cublasLtMatrixLayout_t
using LtPreference = void*;  // cublasLtMatmulPreference_t

struct LtAlgo {  // cublasLtMatmulAlgo_t: opaque, filled by the heuristic
  uint64_t data[8];
};
struct LtHeuristicResult {  // cublasLtMatmulHeuristicResult_t
  LtAlgo algo;
  size_t workspaceSize;
  int state;  // cublasStatus_t
  float wavesCount;
  int reserved[4];
};

// cublasStatus_t
constexpr int CUBLAS_STATUS_SUCCESS = 0;
constexpr int CUBLAS_STATUS_NOT_INITIALIZED = 1;
constexpr int CUBLAS_STATUS_ALLOC_FAILED = 3;
constexpr int CUBLAS_STATUS_INVALID_VALUE = 7;
constexpr int CUBLAS_STATUS_ARCH_MISMATCH = 8;
constexpr int CUBLAS_STATUS_MAPPING_ERROR = 11;
constexpr int CUBLAS_STATUS_EXECUTION_FAILED = 13;
constexpr int CUBLAS_STATUS_INTERNAL_ERROR = 14;
constexpr int CUBLAS_STATUS_NOT_SUPPORTED = 15;
constexpr int CUBLAS_STATUS_LICENSE_ERROR = 16;

// cublasComputeType_t: plain fp32 accumulation (TF32 down-conversion is the separate _FAST_TF32 = 77).
constexpr int CUBLAS_COMPUTE_32F = 68;
// cudaDataType_t
constexpr int CUDA_R_32F = 0;
constexpr int CUDA_R_16F = 2;
constexpr int CUDA_R_16BF = 14;
// cublasOperation_t
constexpr int CUBLAS_OP_N = 0;
constexpr int CUBLAS_OP_T = 1;
// cublasLtMatmulDescAttributes_t
constexpr int CUBLASLT_MATMUL_DESC_TRANSA = 3;       // int32_t (cublasOperation_t)
constexpr int CUBLASLT_MATMUL_DESC_TRANSB = 4;       // int32_t (cublasOperation_t)
constexpr int CUBLASLT_MATMUL_DESC_EPILOGUE = 7;     // uint32_t (cublasLtEpilogue_t)
constexpr int CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8;  // const void*; elements of D's type unless BIAS_DATA_TYPE
// cublasLtEpilogue_t: BIAS adds a vector with one element per row of (column-major) D.
constexpr uint32_t CUBLASLT_EPILOGUE_BIAS = 4;
// cublasLtMatmulPreferenceAttributes_t
constexpr int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;  // uint64_t
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;  // uint32_t, each
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

using LtCreateFn = int (*)(LtHandle*);
using LtMatmulDescCreateFn = int (*)(LtMatmulDesc*, int compute_type, int scale_type);
using LtMatmulDescDestroyFn = int (*)(LtMatmulDesc);
using LtMatmulDescSetAttributeFn = int (*)(LtMatmulDesc, int attr, const void* buf, size_t bytes);
using LtMatrixLayoutCreateFn = int (*)(LtLayout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
using LtMatrixLayoutDestroyFn = int (*)(LtLayout);
using LtMatmulPreferenceCreateFn = int (*)(LtPreference*);
using LtMatmulPreferenceDestroyFn = int (*)(LtPreference);
using LtMatmulPreferenceSetAttributeFn = int (*)(LtPreference, int attr, const void* buf, size_t bytes);
using LtMatmulAlgoGetHeuristicFn = int (*)(LtHandle, LtMatmulDesc, LtLayout a, LtLayout b, LtLayout c, LtLayout d,
                                           LtPreference, int requested, LtHeuristicResult* results, int* returned);
using LtMatmulFn = int (*)(LtHandle, LtMatmulDesc, const void* alpha, const void* a, LtLayout a_desc, const void* b,
                           LtLayout b_desc, const void* beta, const void* c, LtLayout c_desc, void* d,
                           LtLayout d_desc, const LtAlgo* algo, void* workspace, size_t workspace_bytes,
                           void* stream);

// ---- rocBLAS ----------------------------------------------------------------------------------------
using RocHandle = void*;  // rocblas_handle

// rocblas_status
constexpr int rocblas_status_success = 0;
constexpr int rocblas_status_not_implemented = 2;
constexpr int rocblas_status_invalid_size = 4;
constexpr int rocblas_status_perf_degraded = 7;  // computed, with less workspace than it wanted
// rocblas_operation
constexpr int rocblas_operation_none = 111;
constexpr int rocblas_operation_transpose = 112;
// rocblas_datatype
constexpr int rocblas_datatype_f16_r = 150;
constexpr int rocblas_datatype_f32_r = 151;
constexpr int rocblas_datatype_bf16_r = 168;
// rocblas_gemm_algo
constexpr int rocblas_gemm_algo_standard = 0;

using RocCreateHandleFn = int (*)(RocHandle*);
using RocSetStreamFn = int (*)(RocHandle, void* stream);
// rocblas_gemm_ex: D = alpha op(A) op(B) + beta C, column-major, 32-bit sizes; C and D may alias.
using RocGemmExFn = int (*)(RocHandle, int trans_a, int trans_b, int32_t m, int32_t n, int32_t k, const void* alpha,
                            const void* a, int a_type, int32_t lda, const void* b, int b_type, int32_t ldb,
                            const void* beta, const void* c, int c_type, int32_t ldc, void* d, int d_type,
                            int32_t ldd, int compute_type, int algo, int32_t solution_index, uint32_t flags);

}  // namespace lorakit::gpu::blas
