// kernels/gated_linear.h on CUDA: residual + gate ⊙ (x Wᵀ + b) as one cuBLASLt matmul.
//
// cuBLAS is column-major, so the row-major product out [L, N] = x [L, K] · Wᵀ is computed as
// D [N, L] = op(A) · B with A = W read as a column-major [K, N] matrix (transposed: "TN"), B = x
// read as [K, L], and C = residual, D = out read as [N, L]. The rows of D are the output channels,
// which is what the alpha vector of CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST and the
// bias vector of CUBLASLT_EPILOGUE_BIAS run along. Samples are a strided batch: x, residual and out
// step by their batch strides, W by 0, the alpha vector by N (CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_
// BATCH_STRIDE) and a per-sample bias by N (CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace dgrid::kernels {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;

// How the probe found cuBLASLt to combine the alpha vector with the bias epilogue.
enum class BiasMode { kUnsupported, kUnscaled, kScaled };

// alpha[s, n] = gate[s, n] as float; with `scale_bias`, bias_out[s, n] = bf16(gate * bias[n]).
__global__ void GateAlphaKernel(const __nv_bfloat16* __restrict__ gate, int64_t gate_stride,
                                const __nv_bfloat16* __restrict__ bias, int64_t n, bool scale_bias,
                                float* __restrict__ alpha, __nv_bfloat16* __restrict__ bias_out) {
  const int64_t s = blockIdx.y;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = __bfloat162float(gate[s * gate_stride + i]);
    alpha[s * n + i] = g;
    if (scale_bias) bias_out[s * n + i] = __float2bfloat16(g * __bfloat162float(bias[i]));
  }
}

// Owns the descriptors of one matmul call.
struct LtCall {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

// Shape, strides and alignments of one call: the key of the algorithm cache.
struct GemmShape {
  int device, batch;
  int64_t m, n, k;  // m tokens per sample, n output channels, k inputs
  int64_t ldw, ldx, stride_x, ldr, stride_r, ldo, stride_o;
  bool bias, batched_bias, in_place;
  uint32_t align_w, align_x, align_r, align_o;
  auto Tie() const {
    return std::tie(device, batch, m, n, k, ldw, ldx, stride_x, ldr, stride_r, ldo, stride_o, bias,
                    batched_bias, in_place, align_w, align_x, align_r, align_o);
  }
  bool operator<(const GemmShape& o) const { return Tie() < o.Tie(); }
};

// The largest power of two (at most 256) that divides the address.
uint32_t Alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

cublasLtHandle_t HandleFor(int device) {
  static std::mutex mu;
  static std::map<int, cublasLtHandle_t> handles;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cublasLtHandle_t h = nullptr;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) return nullptr;
  handles[device] = h;
  return h;
}

#define DGRID_LT_OR_RETURN(expr)                                                   \
  do {                                                                             \
    const cublasStatus_t s_ = (expr);                                              \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                             \
      if (why != nullptr)                                                          \
        *why = std::string(#expr) + " -> " + std::to_string(static_cast<int>(s_)); \
      return false;                                                                \
    }                                                                              \
  } while (0)

// Sets up the descriptors of `s` in `call`.
bool Describe(const GemmShape& s, const void* bias, LtCall& call, std::string* why) {
  DGRID_LT_OR_RETURN(cublasLtMatmulDescCreate(&call.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &transa,
                                                    sizeof(transa)));
  DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &transb,
                                                    sizeof(transb)));
  const cublasLtPointerMode_t mode = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST;
  DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_POINTER_MODE,
                                                    &mode, sizeof(mode)));
  const int64_t alpha_stride = s.n;
  DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op,
                                                    CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE,
                                                    &alpha_stride, sizeof(alpha_stride)));
  if (s.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                      &epilogue, sizeof(epilogue)));
    const cudaDataType_t bias_type = CUDA_R_16BF;
    DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                      &bias_type, sizeof(bias_type)));
    DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &bias, sizeof(bias)));
    const int64_t bias_stride = s.batched_bias ? s.n : 0;
    DGRID_LT_OR_RETURN(cublasLtMatmulDescSetAttribute(
        call.op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride, sizeof(bias_stride)));
  }
  DGRID_LT_OR_RETURN(cublasLtMatrixLayoutCreate(&call.a, CUDA_R_16BF, s.k, s.n, s.ldw));
  DGRID_LT_OR_RETURN(cublasLtMatrixLayoutCreate(&call.b, CUDA_R_16BF, s.k, s.m, s.ldx));
  DGRID_LT_OR_RETURN(cublasLtMatrixLayoutCreate(&call.c, CUDA_R_16BF, s.n, s.m, s.ldr));
  DGRID_LT_OR_RETURN(cublasLtMatrixLayoutCreate(&call.d, CUDA_R_16BF, s.n, s.m, s.ldo));
  const int32_t batch = s.batch;
  const int64_t strides[4] = {0, s.stride_x, s.stride_r, s.stride_o};
  cublasLtMatrixLayout_t layouts[4] = {call.a, call.b, call.c, call.d};
  for (int i = 0; i < 4; ++i) {
    DGRID_LT_OR_RETURN(cublasLtMatrixLayoutSetAttribute(
        layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
    DGRID_LT_OR_RETURN(cublasLtMatrixLayoutSetAttribute(
        layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i], sizeof(strides[i])));
  }
  DGRID_LT_OR_RETURN(cublasLtMatmulPreferenceCreate(&call.pref));
  const uint64_t workspace = kWorkspaceBytes;
  DGRID_LT_OR_RETURN(cublasLtMatmulPreferenceSetAttribute(
      call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[4] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, s.align_w},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, s.align_x},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, s.align_r},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, s.align_o}};
  for (const auto& [attr, value] : aligns) {
    DGRID_LT_OR_RETURN(
        cublasLtMatmulPreferenceSetAttribute(call.pref, attr, &value, sizeof(value)));
  }
  return true;
}

// Runs D = alpha ⊙ (Wᵀ-product) + 1 · C (+ bias) for shape `s`; false (with `why`) where cuBLASLt
// has no algorithm for it or refuses it.
bool RunGemm(const GemmShape& s, const void* w, const void* x, const void* r, void* o,
             const float* alpha, const void* bias, std::string* why) {
  static std::mutex mu;
  static std::map<GemmShape, std::pair<bool, cublasLtMatmulAlgo_t>> algos;
  cublasLtHandle_t handle = HandleFor(s.device);
  if (handle == nullptr) {
    if (why != nullptr) *why = "cublasLtCreate failed";
    return false;
  }
  LtCall call;
  if (!Describe(s, bias, call, why)) return false;
  cublasLtMatmulAlgo_t algo{};
  {
    const std::lock_guard<std::mutex> lock(mu);
    auto it = algos.find(s);
    if (it == algos.end()) {
      cublasLtMatmulHeuristicResult_t result{};
      int returned = 0;
      const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, call.op, call.a, call.b,
                                                               call.c, s.in_place ? call.c : call.d,
                                                               call.pref, 1, &result, &returned);
      const bool ok = st == CUBLAS_STATUS_SUCCESS && returned > 0;
      it = algos.emplace(s, std::make_pair(ok, result.algo)).first;
      if (!ok && why != nullptr) {
        *why = "cublasLtMatmulAlgoGetHeuristic -> " + std::to_string(static_cast<int>(st)) + ", " +
               std::to_string(returned) + " algorithms";
      }
    }
    if (!it->second.first) {
      if (why != nullptr && why->empty()) *why = "no cuBLASLt algorithm for this shape";
      return false;
    }
    algo = it->second.second;
  }
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(kWorkspaceBytes)},
                at::TensorOptions().dtype(at::kByte).device(at::kCUDA, s.device));
  const float beta = 1.0f;
  DGRID_LT_OR_RETURN(cublasLtMatmul(handle, call.op, alpha, w, call.a, x, call.b, &beta, r, call.c,
                                    o, s.in_place ? call.c : call.d, &algo, workspace.data_ptr(),
                                    kWorkspaceBytes, at::cuda::getCurrentCUDAStream()));
  return true;
}

// Layout checks and the call itself, with an explicit bias mode (the probe runs both).
bool Launch(const at::Tensor& residual, const at::Tensor& gate, const at::Tensor& x,
            const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out, BiasMode mode,
            std::string* why) {
  const auto bf16 = at::kBFloat16;
  const bool types = x.scalar_type() == bf16 && weight.scalar_type() == bf16 &&
                     residual.scalar_type() == bf16 && gate.scalar_type() == bf16 &&
                     out.scalar_type() == bf16 && (!bias.defined() || bias.scalar_type() == bf16);
  const bool devices = weight.is_cuda() && residual.is_cuda() && gate.is_cuda() && out.is_cuda() &&
                       weight.device() == x.device() && residual.device() == x.device() &&
                       gate.device() == x.device() && out.device() == x.device() &&
                       (!bias.defined() || bias.device() == x.device());
  const bool in_place = out.data_ptr() == residual.data_ptr();
  const bool strides = x.stride(2) == 1 && weight.stride(1) == 1 && residual.stride(2) == 1 &&
                       out.stride(2) == 1 && gate.stride(1) == 1 &&
                       (!bias.defined() || bias.stride(0) == 1) &&
                       (!in_place || out.strides() == residual.strides());
  if (!types || !devices || !strides || x.numel() == 0 || out.numel() == 0) {
    if (why != nullptr) *why = "layout or dtype the fused GEMM does not take";
    return false;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = weight.size(0);
  GemmShape s{};
  s.device = x.get_device();
  s.batch = static_cast<int>(batch);
  s.m = x.size(1);
  s.n = n;
  s.k = x.size(2);
  s.ldw = weight.stride(0);
  s.ldx = x.stride(1);
  s.stride_x = x.stride(0);
  s.ldr = residual.stride(1);
  s.stride_r = residual.stride(0);
  s.ldo = out.stride(1);
  s.stride_o = out.stride(0);
  s.bias = bias.defined();
  s.batched_bias = s.bias && mode == BiasMode::kUnscaled;
  s.in_place = in_place;
  s.align_w = Alignment(weight.data_ptr());
  s.align_x = Alignment(x.data_ptr());
  s.align_r = Alignment(residual.data_ptr());
  s.align_o = Alignment(out.data_ptr());
  if (std::min({s.align_w, s.align_x, s.align_r, s.align_o}) < 16) {
    if (why != nullptr) *why = "operands not 16-byte aligned";
    return false;
  }
  if (s.m == 1) {  // A single token's row stride is arbitrary; cuBLASLt wants ld >= rows.
    s.ldx = std::max(s.ldx, s.k);
    s.ldr = std::max(s.ldr, s.n);
    s.ldo = std::max(s.ldo, s.n);
  }
  const at::Tensor alpha =
      at::empty({batch, n}, at::TensorOptions().dtype(at::kFloat).device(x.device()));
  const at::Tensor scaled_bias =
      s.batched_bias ? at::empty({batch, n}, bias.options()) : at::Tensor();
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024)),
                  static_cast<unsigned>(batch));
  GateAlphaKernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(gate.data_ptr()), gate.stride(0),
      s.batched_bias ? reinterpret_cast<const __nv_bfloat16*>(bias.data_ptr()) : nullptr, n,
      s.batched_bias, alpha.data_ptr<float>(),
      s.batched_bias ? reinterpret_cast<__nv_bfloat16*>(scaled_bias.data_ptr()) : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const void* bias_ptr =
      !s.bias ? nullptr : (s.batched_bias ? scaled_bias.data_ptr() : bias.data_ptr());
  return RunGemm(s, weight.data_ptr(), x.data_ptr(), residual.data_ptr(), out.data_ptr(),
                 alpha.data_ptr<float>(), bias_ptr, why);
}

// Whether `got` holds `want0` in every element of sample 0 and `want1` in every one of sample 1.
bool Holds(const at::Tensor& got, float want0, float want1) {
  const at::Tensor f = got.to(at::kFloat).cpu();
  return f[0].eq(want0).all().item<bool>() && f[1].eq(want1).all().item<bool>();
}

// Runs the fused GEMM once on exact small values to learn whether it runs at all on this device
// and whether cuBLASLt scales the bias by alpha: x = 1 [2, 16, 16], W = 1 [64, 16], residual = 1,
// gate 2 (sample 0) and 3 (sample 1), bias 1. Unscaled bias: 2*16+1+1 = 34 and 3*16+1+1 = 50;
// scaled: 2*(16+1)+1 = 35 and 3*17+1 = 52. Every value is exact in bfloat16.
std::pair<BiasMode, std::string> Probe(int device) {
  const at::TensorOptions o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, device);
  const at::Tensor x = at::ones({2, 16, 16}, o);
  const at::Tensor w = at::ones({64, 16}, o);
  const at::Tensor residual = at::ones({2, 16, 64}, o);
  const at::Tensor gate = at::stack({at::full({64}, 2.0, o), at::full({64}, 3.0, o)});
  const at::Tensor bias = at::ones({64}, o);
  at::Tensor out = at::full({2, 16, 64}, std::nan(""), o);
  std::string why;
  // Raw bias, shared by both samples (the kScaled layout).
  if (!Launch(residual, gate, x, w, bias, out, BiasMode::kScaled, &why)) {
    return {BiasMode::kUnsupported, "unsupported: " + why};
  }
  if (Holds(out, 35.f, 52.f)) return {BiasMode::kScaled, "bias-scaled"};
  if (!Holds(out, 34.f, 50.f)) {
    const at::Tensor f = out.to(at::kFloat).cpu();
    return {BiasMode::kUnsupported,
            "unsupported: probe gave " + std::to_string(f[0][0][0].item<float>()) + " and " +
                std::to_string(f[1][0][0].item<float>()) + " (want 34 and 50, or 35 and 52)"};
  }
  // Unscaled: the per-sample bias gate ⊙ b (batch stride N) must give 35 and 52.
  out.fill_(std::nan(""));
  why.clear();
  if (!Launch(residual, gate, x, w, bias, out, BiasMode::kUnscaled, &why)) {
    return {BiasMode::kUnsupported, "unsupported: per-sample bias: " + why};
  }
  if (!Holds(out, 35.f, 52.f)) {
    return {BiasMode::kUnsupported, "unsupported: per-sample bias gave wrong values"};
  }
  return {BiasMode::kUnscaled, "bias-unscaled"};
}

std::pair<BiasMode, std::string> ModeFor(int device) {
  static std::mutex mu;
  static std::map<int, std::pair<BiasMode, std::string>> modes;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = modes.find(device);
  if (it == modes.end()) {
    std::pair<BiasMode, std::string> m;
    try {
      m = Probe(device);
    } catch (const c10::Error& e) {
      m = {BiasMode::kUnsupported, std::string("unsupported: ") + e.what_without_backtrace()};
    }
    it = modes.emplace(device, m).first;
  }
  return it->second;
}

}  // namespace

std::string GatedLinearResidualCudaMode(const at::Tensor& x) {
  return ModeFor(x.get_device()).second;
}

bool GatedLinearResidualCuda(const at::Tensor& residual, const at::Tensor& gate,
                             const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             at::Tensor& out) {
  const BiasMode mode = ModeFor(x.get_device()).first;
  if (mode == BiasMode::kUnsupported) return false;
  return Launch(residual, gate, x, weight, bias, out, mode, nullptr);
}

}  // namespace dgrid::kernels
