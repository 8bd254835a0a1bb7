// Dense GEMM on the GPU, with the semantics of csrc/cpu/gemm.cc:
//
//   C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C + bias[n]      (C float32, row-major, ldc)
//
// beta == 0 never reads C. Operands are float32, bfloat16 or float16 (each its own), either one
// transposed, each with its own leading dimension, or NF4-packed.
//
// Engines, tried in order:
//  1. The vendor library, opened at run time (dlopen) so that the addon loads and works where it is
//     missing: cuBLASLt on CUDA, rocBLAS on HIP. Row-major C is column-major C^T, so the library computes
//     C^T = op(B)^T op(A)^T on the same buffers, with B as its first operand. It accumulates in fp32
//     (CUBLAS_COMPUTE_32F: no TF32, so float32 inputs match the CPU closely) and writes fp32 C in place
//     (C passed as both C and D). It takes equal 16-bit dtypes or float32 pairs; for mixed pairs the 16-bit
//     operand is widened to float32 in scratch, since narrowing the float32 one would round values the CPU
//     multiplies exactly.
//  2. A tiled SIMT kernel of our own (fp32 accumulate, any dtypes, any shape, portable to HIP): used when
//     no library loaded, when the library declines a shape (NOT_SUPPORTED, no heuristic result), for k = 0,
//     and when set_gemm_fallback(true) forces it for parity tests and benchmarks.
//
// NF4 operands are dequantized into scratch first (nf4.cu), to the other operand's dtype (bfloat16 when
// both are NF4) so that the pair needs no second conversion: bfloat16 against bfloat16 activations, as
// bitsandbytes does, and exact float32 against float32 ones.
//
// Scratch slots used here: kScratchWeight (NF4 dequantization), kScratchA / kScratchB (the first and
// second operand widened, or a second NF4 operand), kScratchWorkspace (the library's workspace).
#include <dlfcn.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "common.cuh"
#include "cublaslt.h"
#include "device.h"

namespace lorakit {
LORAKIT_DECLARE_OPS(gpu)
}

namespace lorakit::gpu {
namespace {

size_t elem_bytes(DType dt) { return dt == DType::F32 ? 4 : 2; }

const char* dtype_label(DType dt) {
  switch (dt) {
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    default: return "f32";
  }
}

// ---- fallback: tiled SIMT GEMM ----------------------------------------------------------------------
// Each 256-thread block computes a 64x64 tile of C, walking k in steps of 16: the block stages op(A)'s
// 64x16 and op(B)'s 16x64 slices in shared memory as float32 (k-major, so a thread reads its 4 rows and 4
// columns as float4), and each thread accumulates a 4x4 sub-tile in registers. Global loads are assigned
// so that consecutive threads read consecutive addresses for either storage order of each operand.
// Out-of-range rows, columns and k steps load as zero, so any m, n, k works; an empty reduction adds an
// exact 0 (alpha * 0 would be -0 for negative alpha). The epilogue rounds each product on its own, as the
// CPU (built without contraction) does, so beta*C + bias comes out with the CPU's bits.
constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTileThreads = 256;

struct TiledArgs {
  const void* a;
  const void* b;
  int64_t lda, ldb;
  bool ta, tb;
  int64_t m, n, k;
  float* c;
  int64_t ldc;
  float alpha, beta;
  const float* bias;
};

template <DType DA, DType DB>
__global__ void __launch_bounds__(kTileThreads) gemm_tiled_kernel(const TiledArgs g) {
  __shared__ __align__(16) float as[kTileK][kTileM + 4];
  __shared__ __align__(16) float bs[kTileK][kTileN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  // Grid y is capped at 65535 blocks, so very wide C is walked in strides of the grid.
  for (int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTileN; col0 < g.n;
       col0 += static_cast<int64_t>(gridDim.y) * kTileN) {
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < g.k; k0 += kTileK) {
#pragma unroll
      for (int e = 0; e < kTileM * kTileK / kTileThreads; ++e) {
        const int l = tid + e * kTileThreads;
        // Stored [m,k] is contiguous along k; stored [k,m] (transposed) along m.
        const int i = g.ta ? l % kTileM : l / kTileK, p = g.ta ? l / kTileM : l % kTileK;
        const int64_t gi = row0 + i, gp = k0 + p;
        as[p][i] = gi < g.m && gp < g.k ? load_as_f32(g.a, DA, g.ta ? gp * g.lda + gi : gi * g.lda + gp) : 0.f;
      }
#pragma unroll
      for (int e = 0; e < kTileN * kTileK / kTileThreads; ++e) {
        const int l = tid + e * kTileThreads;
        // Stored [k,n] is contiguous along n; stored [n,k] (transposed) along k.
        const int j = g.tb ? l / kTileK : l % kTileN, p = g.tb ? l % kTileK : l / kTileN;
        const int64_t gj = col0 + j, gp = k0 + p;
        bs[p][j] = gj < g.n && gp < g.k ? load_as_f32(g.b, DB, g.tb ? gj * g.ldb + gp : gp * g.ldb + gj) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int p = 0; p < kTileK; ++p) {
        const float4 av = *reinterpret_cast<const float4*>(&as[p][ty * 4]);
        const float4 bv = *reinterpret_cast<const float4*>(&bs[p][tx * 4]);
        const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(ar[r], br[c], acc[r][c]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t gi = row0 + ty * 4 + r;
      if (gi >= g.m) continue;
      float* crow = g.c + gi * g.ldc;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t gj = col0 + tx * 4 + c;
        if (gj >= g.n) continue;
        float v = g.k > 0 ? mul_rn(g.alpha, acc[r][c]) : 0.f;
        if (g.beta != 0.f) v += mul_rn(g.beta, crow[gj]);
        if (g.bias) v += g.bias[gj];
        crow[gj] = v;
      }
    }
  }
}

template <DType DA>
void launch_tiled(const TiledArgs& t, DType db, dim3 grid) {
  switch (db) {
    case DType::BF16: gemm_tiled_kernel<DA, DType::BF16><<<grid, kTileThreads, 0, stream()>>>(t); break;
    case DType::F16: gemm_tiled_kernel<DA, DType::F16><<<grid, kTileThreads, 0, stream()>>>(t); break;
    default: gemm_tiled_kernel<DA, DType::F32><<<grid, kTileThreads, 0, stream()>>>(t); break;
  }
  LK_LAUNCHED("gemm_tiled_kernel");
}

void gemm_tiled(const GemmArgs& g) {
  const TiledArgs t{g.a.data, g.b.data, g.a.ld, g.b.ld, g.a.trans, g.b.trans, g.m, g.n, g.k,
                    g.c,      g.ldc,    g.alpha, g.beta, g.bias};
  const int64_t tiles_n = (g.n + kTileN - 1) / kTileN;
  const dim3 grid(static_cast<unsigned>((g.m + kTileM - 1) / kTileM),
                  static_cast<unsigned>(tiles_n < 65535 ? tiles_n : 65535));
  switch (g.a.dtype) {
    case DType::BF16: launch_tiled<DType::BF16>(t, g.b.dtype, grid); break;
    case DType::F16: launch_tiled<DType::F16>(t, g.b.dtype, grid); break;
    default: launch_tiled<DType::F32>(t, g.b.dtype, grid); break;
  }
}

// ---- operand preparation ----------------------------------------------------------------------------
// dst = float32(src) for a stored rows x cols 16-bit matrix with row stride ld; dst is packed (ld = cols).
// Each thread converts 8 consecutive elements of dst: one 16-byte load and two 16-byte stores when the
// rows allow it (vec), element by element otherwise.
__global__ void widen_kernel(const uint16_t* src, DType dt, int64_t ld, int64_t rows, int64_t cols, bool vec,
                             float* dst) {
  const int64_t total = rows * cols, groups = (total + 7) / 8;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < groups;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = q * 8;
    if (vec) {
      const int64_t r = e0 / cols, c = e0 - r * cols;
      const Pack16<uint16_t> h = load16(src + r * ld + c);
      Pack16<float> lo, hi;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        lo.v[u] = dt == DType::BF16 ? bf16_to_f32(h.v[u]) : f16_to_f32(h.v[u]);
        hi.v[u] = dt == DType::BF16 ? bf16_to_f32(h.v[u + 4]) : f16_to_f32(h.v[u + 4]);
      }
      store16(dst + e0, lo);
      store16(dst + e0 + 4, hi);
    } else {
      const int64_t e1 = e0 + 8 < total ? e0 + 8 : total;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t r = e / cols;
        dst[e] = load_as_f32(src, dt, r * ld + (e - r * cols));
      }
    }
  }
}

// Replaces a 16-bit operand (stored rows x cols) by a packed float32 copy in scratch slot `slot`.
void widen(Operand& op, int64_t rows, int64_t cols, int slot) {
  float* dst = static_cast<float*>(scratch(slot, static_cast<size_t>(rows * cols) * 4));
  const bool vec = cols % 8 == 0 && op.ld % 8 == 0 && is_aligned16(op.data);
  widen_kernel<<<grid_for((rows * cols + 7) / 8, 256), 256, 0, stream()>>>(static_cast<const uint16_t*>(op.data),
                                                                         op.dtype, op.ld, rows, cols, vec, dst);
  LK_LAUNCHED("widen_kernel");
  op.data = dst;
  op.dtype = DType::F32;
  op.ld = cols;
}

// Replaces an NF4 operand (stored rows x ld, the whole packed tensor) by its dequantization to `to`.
void dequantize(Operand& op, int64_t rows, DType to, int slot) {
  const int64_t n = rows * op.ld;
  void* dst = scratch(slot, static_cast<size_t>(n) * elem_bytes(to));
  nf4_dequantize(*op.nf4, n, dst, to);
  op.data = dst;
  op.dtype = to;
  op.nf4 = nullptr;
}

int64_t stored_rows(const Operand& op, int64_t logical_rows, int64_t logical_cols) {
  return op.trans ? logical_cols : logical_rows;
}
int64_t stored_cols(const Operand& op, int64_t logical_rows, int64_t logical_cols) {
  return op.trans ? logical_rows : logical_cols;
}

// C[i, j] += bias[j], for libraries that did not fuse the bias.
__global__ void add_bias_kernel(float* c, int64_t ldc, int64_t m, int64_t n, const float* bias) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < m * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e - i * n;
    c[i * ldc + j] += bias[j];
  }
}

void add_bias(const GemmArgs& g) {
  add_bias_kernel<<<grid_for(g.m * g.n, 256), 256, 0, stream()>>>(g.c, g.ldc, g.m, g.n, g.bias);
  LK_LAUNCHED("add_bias_kernel");
}

// Whether every stored row fits within its leading dimension, as the libraries require (the fallback
// kernel takes any stride).
bool rows_fit(const GemmArgs& g) {
  return g.a.ld >= stored_cols(g.a, g.m, g.k) && g.b.ld >= stored_cols(g.b, g.k, g.n) && g.ldc >= g.n;
}

std::string shape_label(const GemmArgs& g) {
  return std::to_string(g.m) + "x" + std::to_string(g.n) + "x" + std::to_string(g.k) + " " + dtype_label(g.a.dtype) +
         (g.a.trans ? "T" : "N") + "*" + dtype_label(g.b.dtype) + (g.b.trans ? "T" : "N");
}

// Both libraries take one input dtype: a 16-bit operand against a float32 one is widened to float32.
void widen_mixed(GemmArgs& g) {
  if (g.a.dtype == g.b.dtype) return;
  if (g.a.dtype != DType::F32) widen(g.a, stored_rows(g.a, g.m, g.k), stored_cols(g.a, g.m, g.k), kScratchA);
  if (g.b.dtype != DType::F32) widen(g.b, stored_rows(g.b, g.k, g.n), stored_cols(g.b, g.k, g.n), kScratchB);
}

// The library's name for a status code (defined with each library below).
const char* status_name(int s);

// The library handle of the current device, created on first use; false (with the reason in
// L.declined) when the library cannot make one.
template <typename Lib, typename Handle>
bool device_handle(Lib& L, const char* create_name, Handle& h) {
  const int dev = current_device();
  auto hit = L.handles.find(dev);
  if (hit == L.handles.end()) {
    const int st = L.create(&h);
    if (st) {
      L.declined = std::string(create_name) + " on device " + std::to_string(dev) + ": " + status_name(st);
      return false;
    }
    hit = L.handles.emplace(dev, h).first;
  }
  h = hit->second;
  return true;
}

// ---- the vendor library -----------------------------------------------------------------------------
// Loaded once per process; the state is leaked on purpose, because the handles must not be destroyed by
// static destructors after the driver has already been torn down at exit.

template <typename F>
void resolve(void* so, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(so, name));
  if (!fn) missing += (missing.empty() ? "" : ", ") + std::string(name);
}

// Without the library every GEMM runs on the hand-written kernel, 30-50x slower, so the library is
// looked for where users' installs put it, not only on the loader path: a toolkit named by the
// environment or under /usr/local (ROCm: /opt/rocm), the pip wheels of the active Python environments
// (nvidia/cublas/lib), and a conda environment's lib. Newest versioned toolkit folders first.
std::vector<std::string> matches(const std::string& pattern) {
  std::vector<std::string> out;
  glob_t g{};
  if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) { return strverscmp(a.c_str(), b.c_str()) > 0; });
  return out;
}

std::vector<std::string> library_folders() {
  std::vector<std::string> dirs;
  auto add = [&](const std::string& d) {
    if (!d.empty() && std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  };
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v && *v ? v : "";
  };
  // Prefixes of the active Python environments, then the user's and the system's (pip as root on Debian
  // and Ubuntu installs under /usr/local/lib/python3.X/dist-packages).
  std::vector<std::string> pythons;
  for (const char* v : {"VIRTUAL_ENV", "CONDA_PREFIX"})
    if (!env(v).empty()) pythons.push_back(env(v));
  if (!env("HOME").empty()) pythons.push_back(env("HOME") + "/.local");
  pythons.push_back("/usr/local");
  pythons.push_back("/usr");
#ifdef LORAKIT_CUDA
  for (const char* v : {"CUDA_HOME", "CUDA_PATH"})
    if (!env(v).empty()) {
      add(env(v) + "/lib64");
      add(env(v) + "/lib");
    }
  add("/usr/local/cuda/lib64");
  for (const std::string& d : matches("/usr/local/cuda-*/lib64")) add(d);
  // CUDA 12's wheel (nvidia-cublas-cu12) puts the library in nvidia/cublas/lib, CUDA 13's in nvidia/cu13/lib.
  for (const std::string& py : pythons)
    for (const char* sub : {"nvidia/cublas/lib", "nvidia/cu13/lib"})
      for (const char* pkgs : {"site-packages", "dist-packages"})
        for (const std::string& d : matches(py + "/lib/python3*/" + pkgs + "/" + sub)) add(d);
#else
  for (const char* v : {"ROCM_PATH", "HIP_PATH"})
    if (!env(v).empty()) add(env(v) + "/lib");
  add("/opt/rocm/lib");
  for (const std::string& d : matches("/opt/rocm-*/lib")) add(d);
  for (const std::string& py : pythons)
    for (const char* pkgs : {"site-packages", "dist-packages"})
      for (const std::string& d : matches(py + "/lib/python3*/" + pkgs + "/rocblas/lib")) add(d);
#endif
  if (!env("CONDA_PREFIX").empty()) add(env("CONDA_PREFIX") + "/lib");
  return dirs;
}

// Where a library opened by its bare name came from (the loader's answer), for the report.
std::string loaded_from(void* symbol) {
#ifdef LORAKIT_EMU
  (void)symbol;  // the emulator's fake libraries have no file
  return "the loader path";
#else
  Dl_info info{};
  return dladdr(symbol, &info) && info.dli_fname ? std::string(info.dli_fname) : "the loader path";
#endif
}

// LORAKIT_REQUIRE_GPU_BLAS=1 makes a missing library an error instead of a slow fallback.
bool blas_required() {
  const char* v = std::getenv("LORAKIT_REQUIRE_GPU_BLAS");
  return v && *v && std::strcmp(v, "0") != 0;
}

// Opens the first of `names` found on the loader path or in library_folders() that has every symbol
// `bind` resolves; fills so/name/from, or why_not with what was tried. Says on stderr, once, which file
// serves the GEMMs, or that none does. Only the first call looks (`attempted`).
template <typename Lib, typename Bind>
void open_library(Lib& L, const char* label, std::initializer_list<const char*> names, Bind bind) {
  if (L.attempted) return;
  L.attempted = true;
  std::string errors;
  const std::vector<std::string> dirs = library_folders();
  for (const char* name : names) {
    std::vector<std::string> tries{name};
    for (const std::string& d : dirs)
      if (access((d + "/" + name).c_str(), F_OK) == 0) tries.push_back(d + "/" + name);
    for (const std::string& path : tries) {
      dlerror();
      void* so = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!so) {
        if (path == name) continue;  // not on the loader path: the folders follow
        const char* e = dlerror();
        errors += (errors.empty() ? "" : "; ") + path + ": " + (e ? e : "dlopen failed");
        continue;
      }
      std::string missing;
      void* probe = bind(L, so, missing);
      if (!missing.empty()) {
        errors += (errors.empty() ? "" : "; ") + path + " lacks " + missing;
        dlclose(so);
        continue;
      }
      L.so = so;
      L.name = name;
      L.from = path == name ? loaded_from(probe) : path;
      std::fprintf(stderr, "lorakit: GPU GEMMs use %s (%s from %s)\n", label, name, L.from.c_str());
      return;
    }
  }
  std::string searched = "the loader path";
  for (const std::string& d : dirs) searched += ", " + d;
  std::string tried;
  for (const char* name : names) tried += (tried.empty() ? "" : ", ") + std::string(name);
  L.why_not = tried + " not found in " + searched + (errors.empty() ? "" : " (" + errors + ")");
  std::fprintf(stderr,
               "lorakit: WARNING: %s not found: GPU GEMMs run on lorakit's own kernel, 30-50x slower (%s). Install it "
               "(or point CUDA_HOME/ROCM_PATH at it); LORAKIT_REQUIRE_GPU_BLAS=1 makes this an error.\n",
               label, L.why_not.c_str());
}

// Either vendor's library as open_library fills it and gemm_engine() reports it; each branch below adds
// its entry points and handles. `mu` guards the whole.
struct LoadedLibrary {
  std::mutex mu;
  bool attempted = false;
  void* so = nullptr;
  std::string name, from, why_not, declined;
  bool forced = false;
};

#ifdef LORAKIT_CUDA

constexpr size_t kWorkspaceBytes = 32u << 20;

// The largest power of two (up to 256) dividing both the base address and the row stride in bytes: the
// alignment a library kernel can rely on for every row of the matrix.
uint32_t alignment(const void* p, int64_t ld, size_t elem) {
  const uint64_t v = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld) * elem | 256u;
  return static_cast<uint32_t>(v & (~v + 1));
}

const char* status_name(int s) {
  switch (s) {
    case blas::CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case blas::CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case blas::CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case blas::CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case blas::CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case blas::CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case blas::CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case blas::CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case blas::CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case blas::CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

// One cached matmul: descriptors and the heuristic's algorithm for one shape/dtype/alignment, or the
// reason cuBLASLt declined it.
struct Plan {
  blas::LtMatmulDesc desc = nullptr;
  blas::LtLayout first = nullptr, second = nullptr, out = nullptr;
  blas::LtAlgo algo{};
  bool fused_bias = false;
  std::string declined;
};

// device, dtype, transposes, the two operands' column-major shapes and strides, C's, the alignments,
// and the bias pointer's alignment (0: bias added by add_bias_kernel or absent).
using PlanKey = std::array<int64_t, 17>;
constexpr size_t kMaxPlans = 512;

struct Library : LoadedLibrary {
  blas::LtCreateFn create = nullptr;
  blas::LtMatmulDescCreateFn desc_create = nullptr;
  blas::LtMatmulDescDestroyFn desc_destroy = nullptr;
  blas::LtMatmulDescSetAttributeFn desc_set = nullptr;
  blas::LtMatrixLayoutCreateFn layout_create = nullptr;
  blas::LtMatrixLayoutDestroyFn layout_destroy = nullptr;
  blas::LtMatmulPreferenceCreateFn pref_create = nullptr;
  blas::LtMatmulPreferenceDestroyFn pref_destroy = nullptr;
  blas::LtMatmulPreferenceSetAttributeFn pref_set = nullptr;
  blas::LtMatmulAlgoGetHeuristicFn heuristic = nullptr;
  blas::LtMatmulFn matmul = nullptr;
  std::map<int, blas::LtHandle> handles;
  std::map<PlanKey, Plan> plans;
};

void load_locked(Library& L) {
  // The library of the toolkit this addon was built with first: cuBLASLt 13 needs the driver CUDA 13 does.
#if defined(CUDART_VERSION) && CUDART_VERSION < 13000
  const auto names = {"libcublasLt.so.12", "libcublasLt.so.13"};
#else
  const auto names = {"libcublasLt.so.13", "libcublasLt.so.12"};
#endif
  open_library(L, "cuBLASLt", names, [](Library& L, void* so, std::string& missing) -> void* {
    resolve(so, "cublasLtCreate", L.create, missing);
    resolve(so, "cublasLtMatmulDescCreate", L.desc_create, missing);
    resolve(so, "cublasLtMatmulDescDestroy", L.desc_destroy, missing);
    resolve(so, "cublasLtMatmulDescSetAttribute", L.desc_set, missing);
    resolve(so, "cublasLtMatrixLayoutCreate", L.layout_create, missing);
    resolve(so, "cublasLtMatrixLayoutDestroy", L.layout_destroy, missing);
    resolve(so, "cublasLtMatmulPreferenceCreate", L.pref_create, missing);
    resolve(so, "cublasLtMatmulPreferenceDestroy", L.pref_destroy, missing);
    resolve(so, "cublasLtMatmulPreferenceSetAttribute", L.pref_set, missing);
    resolve(so, "cublasLtMatmulAlgoGetHeuristic", L.heuristic, missing);
    resolve(so, "cublasLtMatmul", L.matmul, missing);
    return reinterpret_cast<void*>(L.create);
  });
}

void destroy_plan(Library& L, Plan& p) {
  if (p.desc) L.desc_destroy(p.desc);
  for (blas::LtLayout l : {p.first, p.second, p.out})
    if (l) L.layout_destroy(l);
}

// The cuBLASLt problem: column-major D[n,m] = op1(first) * op2(second), first = our B, second = our A.
struct LtProblem {
  int type;
  int op1, op2;
  uint64_t r1, c1, r2, c2;
  int64_t ld1, ld2;
  uint64_t n, m;
  int64_t ldc;
  uint32_t al1, al2, alc, al_bias;
  const float* bias;
};

Plan make_plan(Library& L, blas::LtHandle h, const LtProblem& q) {
  Plan p;
  auto fail = [&](const char* call, int st) {
    p.declined = std::string(status_name(st)) + " from " + call;
    return p;
  };
  int st = L.desc_create(&p.desc, blas::CUBLAS_COMPUTE_32F, blas::CUDA_R_32F);
  if (st) return fail("cublasLtMatmulDescCreate", st);
  const int32_t op1 = q.op1, op2 = q.op2;
  if ((st = L.desc_set(p.desc, blas::CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof op1)) ||
      (st = L.desc_set(p.desc, blas::CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof op2)))
    return fail("cublasLtMatmulDescSetAttribute", st);
  if (q.bias) {
    // The heuristic reads the bias pointer only for its alignment; each call sets the real one.
    const uint32_t epilogue = blas::CUBLASLT_EPILOGUE_BIAS;
    if ((st = L.desc_set(p.desc, blas::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue)) ||
        (st = L.desc_set(p.desc, blas::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &q.bias, sizeof q.bias)))
      return fail("cublasLtMatmulDescSetAttribute", st);
    p.fused_bias = true;
  }
  if ((st = L.layout_create(&p.first, q.type, q.r1, q.c1, q.ld1)) ||
      (st = L.layout_create(&p.second, q.type, q.r2, q.c2, q.ld2)) ||
      (st = L.layout_create(&p.out, blas::CUDA_R_32F, q.n, q.m, q.ldc)))
    return fail("cublasLtMatrixLayoutCreate", st);
  blas::LtPreference pref = nullptr;
  if ((st = L.pref_create(&pref))) return fail("cublasLtMatmulPreferenceCreate", st);
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t al[4] = {q.al1, q.al2, q.alc, q.alc};
  st = L.pref_set(pref, blas::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  const int al_attr[4] = {blas::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, blas::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          blas::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, blas::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && !st; ++i) st = L.pref_set(pref, al_attr[i], &al[i], sizeof al[i]);
  if (st) {
    L.pref_destroy(pref);
    return fail("cublasLtMatmulPreferenceSetAttribute", st);
  }
  blas::LtHeuristicResult result{};
  int found = 0;
  st = L.heuristic(h, p.desc, p.first, p.second, p.out, p.out, pref, 1, &result, &found);
  L.pref_destroy(pref);
  if (st) return fail("cublasLtMatmulAlgoGetHeuristic", st);
  if (found < 1) {
    p.declined = "no algorithm from cublasLtMatmulAlgoGetHeuristic";
    return p;
  }
  if (result.state) return fail("cublasLtMatmulAlgoGetHeuristic's result", result.state);
  p.algo = result.algo;
  return p;
}

// Runs g on cuBLASLt; false when the library declined it (the caller falls back).
bool library_gemm(Library& L, GemmArgs g) {
  const cudaStream_t queue = stream();  // also makes the device current before a handle is created
  const int dev = current_device();
  blas::LtHandle h = nullptr;
  if (!device_handle(L, "cublasLtCreate", h)) return false;
  if (!rows_fit(g)) {
    L.declined = shape_label(g) + ": a leading dimension is shorter than its row";
    return false;
  }
  widen_mixed(g);
  const int type = g.a.dtype == DType::BF16 ? blas::CUDA_R_16BF : g.a.dtype == DType::F16 ? blas::CUDA_R_16F
                                                                                           : blas::CUDA_R_32F;
  const size_t elem = elem_bytes(g.a.dtype);
  LtProblem q{};
  q.type = type;
  q.op1 = g.b.trans ? blas::CUBLAS_OP_T : blas::CUBLAS_OP_N;
  q.op2 = g.a.trans ? blas::CUBLAS_OP_T : blas::CUBLAS_OP_N;
  q.r1 = static_cast<uint64_t>(g.b.trans ? g.k : g.n);
  q.c1 = static_cast<uint64_t>(g.b.trans ? g.n : g.k);
  q.r2 = static_cast<uint64_t>(g.a.trans ? g.m : g.k);
  q.c2 = static_cast<uint64_t>(g.a.trans ? g.k : g.m);
  q.ld1 = g.b.ld;
  q.ld2 = g.a.ld;
  q.n = static_cast<uint64_t>(g.n);
  q.m = static_cast<uint64_t>(g.m);
  q.ldc = g.ldc;
  q.al1 = alignment(g.b.data, g.b.ld, elem);
  q.al2 = alignment(g.a.data, g.a.ld, elem);
  q.alc = alignment(g.c, g.ldc, 4);
  q.al_bias = g.bias ? alignment(g.bias, 0, 4) : 0;
  q.bias = g.bias;

  const PlanKey key{dev,   q.type,  q.op1,  q.op2,   static_cast<int64_t>(q.r1), static_cast<int64_t>(q.c1),
                    q.ld1, static_cast<int64_t>(q.r2), static_cast<int64_t>(q.c2), q.ld2,   g.n, g.m, q.ldc, q.al1,
                    q.al2, q.alc,   q.al_bias};
  auto it = L.plans.find(key);
  if (it == L.plans.end()) {
    if (L.plans.size() >= kMaxPlans) {
      for (auto& [k, p] : L.plans) destroy_plan(L, p);
      L.plans.clear();
    }
    Plan p = make_plan(L, h, q);
    if (!p.declined.empty() && q.bias) {
      // Without a fused bias the shape may still run; add_bias_kernel then adds it.
      LtProblem plain = q;
      plain.bias = nullptr;
      Plan without = make_plan(L, h, plain);
      if (without.declined.empty()) std::swap(p, without);
      destroy_plan(L, without);
    }
    it = L.plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  if (!p.declined.empty()) {
    L.declined = shape_label(g) + ": " + p.declined;
    return false;
  }
  if (p.fused_bias) {
    const int st = L.desc_set(p.desc, blas::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias);
    if (st) throw Error("ERR_GPU", std::string("cuBLASLt: setting the bias pointer failed: ") + status_name(st));
  }
  void* workspace = scratch(kScratchWorkspace, kWorkspaceBytes);
  const int st = L.matmul(h, p.desc, &g.alpha, g.b.data, p.first, g.a.data, p.second, &g.beta, g.c, p.out, g.c, p.out,
                          &p.algo, workspace, kWorkspaceBytes, queue);
  if (st == blas::CUBLAS_STATUS_NOT_SUPPORTED) {
    p.declined = std::string(status_name(st)) + " from cublasLtMatmul";
    L.declined = shape_label(g) + ": " + p.declined;
    return false;
  }
  if (st) throw Error("ERR_GPU", "cuBLASLt: cublasLtMatmul failed for " + shape_label(g) + ": " + status_name(st));
  LK_LAUNCHED("cublasLtMatmul");
  if (g.bias && !p.fused_bias) add_bias(g);
  return true;
}

constexpr const char kLibraryLabel[] = "cublaslt";

#else  // LORAKIT_HIP

const char* status_name(int s) {
  switch (s) {
    case blas::rocblas_status_success: return "rocblas_status_success";
    case blas::rocblas_status_not_implemented: return "rocblas_status_not_implemented";
    case blas::rocblas_status_invalid_size: return "rocblas_status_invalid_size";
    case blas::rocblas_status_perf_degraded: return "rocblas_status_perf_degraded";
    default: return "rocblas status";
  }
}

struct Library : LoadedLibrary {
  blas::RocCreateHandleFn create = nullptr;
  blas::RocSetStreamFn set_stream = nullptr;
  blas::RocGemmExFn gemm_ex = nullptr;
  std::map<int, blas::RocHandle> handles;
};

void load_locked(Library& L) {
  // The unversioned name comes with the development package; the runtime packages carry the sonames.
  open_library(L, "rocBLAS", {"librocblas.so", "librocblas.so.5", "librocblas.so.4", "librocblas.so.0"},
               [](Library& L, void* so, std::string& missing) -> void* {
                 resolve(so, "rocblas_create_handle", L.create, missing);
                 resolve(so, "rocblas_set_stream", L.set_stream, missing);
                 resolve(so, "rocblas_gemm_ex", L.gemm_ex, missing);
                 return reinterpret_cast<void*>(L.create);
               });
}

bool fits_int32(int64_t v) { return v >= 0 && v <= 0x7fffffff; }

// Runs g on rocblas_gemm_ex; false when rocBLAS declined it (the caller falls back).
bool library_gemm(Library& L, GemmArgs g) {
  const cudaStream_t queue = stream();  // also makes the device current before a handle is created
  blas::RocHandle h = nullptr;
  if (!device_handle(L, "rocblas_create_handle", h)) return false;
  if (!fits_int32(g.m) || !fits_int32(g.n) || !fits_int32(g.k) || !fits_int32(g.a.ld) || !fits_int32(g.b.ld) ||
      !fits_int32(g.ldc)) {
    L.declined = shape_label(g) + ": sizes beyond rocBLAS's 32-bit arguments";
    return false;
  }
  if (!rows_fit(g)) {
    L.declined = shape_label(g) + ": a leading dimension is shorter than its row";
    return false;
  }
  widen_mixed(g);
  const int type = g.a.dtype == DType::BF16 ? blas::rocblas_datatype_bf16_r
                   : g.a.dtype == DType::F16 ? blas::rocblas_datatype_f16_r
                                             : blas::rocblas_datatype_f32_r;
  int st = L.set_stream(h, queue);
  if (st) throw Error("ERR_GPU", std::string("rocBLAS: rocblas_set_stream failed: ") + status_name(st));
  const int op1 = g.b.trans ? blas::rocblas_operation_transpose : blas::rocblas_operation_none;
  const int op2 = g.a.trans ? blas::rocblas_operation_transpose : blas::rocblas_operation_none;
  const int f32 = blas::rocblas_datatype_f32_r;
  st = L.gemm_ex(h, op1, op2, static_cast<int32_t>(g.n), static_cast<int32_t>(g.m), static_cast<int32_t>(g.k), &g.alpha,
                 g.b.data, type, static_cast<int32_t>(g.b.ld), g.a.data, type, static_cast<int32_t>(g.a.ld), &g.beta, g.c,
                 f32, static_cast<int32_t>(g.ldc), g.c, f32, static_cast<int32_t>(g.ldc), f32,
                 blas::rocblas_gemm_algo_standard, 0, 0);
  if (st == blas::rocblas_status_not_implemented) {
    L.declined = shape_label(g) + ": " + status_name(st) + " from rocblas_gemm_ex";
    return false;
  }
  if (st && st != blas::rocblas_status_perf_degraded)
    throw Error("ERR_GPU", "rocBLAS: rocblas_gemm_ex failed for " + shape_label(g) + ": " + status_name(st) + " (" +
                               std::to_string(st) + ")");
  LK_LAUNCHED("rocblas_gemm_ex");
  if (g.bias) add_bias(g);
  return true;
}

constexpr const char kLibraryLabel[] = "rocblas";

#endif

Library& library() {
  static Library* lib = new Library;
  return *lib;
}

}  // namespace

void gemm(const GemmArgs& args) {
  if (args.m <= 0 || args.n <= 0) return;
  // An empty reduction reads neither operand: C = beta*C + bias.
  if (args.k <= 0) return gemm_tiled(args);
  GemmArgs g = args;
  if (g.a.nf4 || g.b.nf4) {
    const DType a_to = g.b.nf4 ? DType::BF16 : g.b.dtype, b_to = g.a.nf4 ? DType::BF16 : g.a.dtype;
    if (g.b.nf4) dequantize(g.b, stored_rows(g.b, g.k, g.n), b_to, kScratchWeight);
    if (g.a.nf4) dequantize(g.a, stored_rows(g.a, g.m, g.k), a_to, args.b.nf4 ? kScratchA : kScratchWeight);
  }
  Library& L = library();
  {
    std::lock_guard<std::mutex> lock(L.mu);
    load_locked(L);
    if (!L.so && !L.forced && blas_required())
      throw Error("ERR_GPU", std::string("LORAKIT_REQUIRE_GPU_BLAS=1, but the vendor GEMM library was not found: ") + L.why_not);
    if (L.so && !L.forced && library_gemm(L, g)) return;
  }
  gemm_tiled(g);
}

std::string gemm_engine() {
  Library& L = library();
  std::lock_guard<std::mutex> lock(L.mu);
  load_locked(L);
  if (L.forced) return "fallback (forced by set_gemm_fallback)";
  if (!L.so) return "fallback (" + L.why_not + ")";
  std::string s = std::string(kLibraryLabel) + " (" + L.name + " from " + L.from + ")";
  if (!L.declined.empty()) s += "; fallback for what it declined, last: " + L.declined;
  return s;
}

void set_gemm_fallback(bool on) {
  Library& L = library();
  std::lock_guard<std::mutex> lock(L.mu);
  L.forced = on;
}

}  // namespace lorakit::gpu
