// Building blocks of the FLUX.1 transformer as plain functions over at::Tensor: linear layers and
// their loading, the timestep / guidance / pooled-text embedding, the 3-axis rotary embedding and
// the adaptive layer norms.
//
// Every function reproduces the diffusers 0.42.1 module named beside it operation for operation
// (same dtypes at each step), so that the C++ model matches diffusers to float rounding. Like ATen
// operators they throw c10::Error on bad input; FluxTransformer2DModel catches at its boundary.
// Tensors are read only; nothing here keeps state, so every function is thread-safe.
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_LAYERS_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_LAYERS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {

class WeightMap;

namespace flux {

// torch.nn.Linear: weight [out, in], bias [out] or undefined.
//
// With FP8 (--dit-precision fp8, QuantizeLinearFp8) `weight` holds E4M3 codes [out, in] and
// `weight_scale` [out, 1] float32 their per-row scales (kernels/fp8_linear.h); ApplyLinear then
// quantizes its input per row and multiplies on the FP8 tensor cores. Undefined otherwise.
// `fp8_fast_accumulation` (--dit-precision fp8-fast) runs those products with Hopper's fast FP8
// accumulation (kernels::Fp8Linear); it means nothing for a layer without FP8 weights.
struct Linear {
  at::Tensor weight;
  at::Tensor bias;
  at::Tensor weight_scale;
  bool fp8_fast_accumulation = false;
};

// Whether `linear` holds FP8 weights.
inline bool IsFp8(const Linear& linear) { return linear.weight_scale.defined(); }

// What the DiT's linear layers compute in: the weights' own dtype (the default), FP8 E4M3, or
// FP8 E4M3 with fast accumulation (fewer promotions of the partial sums to float32 along K).
enum class LinearPrecision { kModelDtype, kFp8, kFp8Fast };

// Whether `precision` quantizes the block linears to FP8 (kFp8 or kFp8Fast).
inline bool IsFp8(LinearPrecision precision) { return precision != LinearPrecision::kModelDtype; }

// "bf16" (the weights' dtype, whatever --dtype made it), "fp8" or "fp8-fast"; INVALID_ARGUMENT
// naming --dit-precision otherwise. An empty value is the default.
absl::StatusOr<LinearPrecision> ParseLinearPrecision(absl::string_view value);
// The flag value of `precision`: "bf16", "fp8" or "fp8-fast".
const char* LinearPrecisionName(LinearPrecision precision);

// The same linear layer with its weight row-quantized to E4M3 (per output row scales); the bias
// stays in its dtype. The weight must be on a device that runs FP8 (kernels::Fp8Supported).
Linear QuantizeLinearFp8(const Linear& linear, bool fast_accumulation = false);

// Takes "<prefix>.weight" [out, in] and, when `bias`, "<prefix>.bias" [out] from `weights`.
absl::StatusOr<Linear> TakeLinear(WeightMap& weights, absl::string_view prefix, int64_t in,
                                  int64_t out, bool bias = true);

// y = x W^T + b (F.linear); for an FP8 layer, x row-quantized to E4M3 first and y in bfloat16.
// On a CPU a [B, D] input with B > 1 goes row by row, so each row rounds as it would alone.
at::Tensor ApplyLinear(const Linear& linear, const at::Tensor& x);

// Ref: diffusers TimestepEmbedding (models/embeddings.py): linear_1 -> SiLU -> linear_2.
struct TimestepMlp {
  Linear linear_1;
  Linear linear_2;
};
at::Tensor ApplyTimestepMlp(const TimestepMlp& mlp, const at::Tensor& x);

// Ref: diffusers get_timestep_embedding with flip_sin_to_cos=True, downscale_freq_shift=0,
// max_period=10000 (Timesteps(256, True, 0) of the Flux time embedding). `t` is [B] (any floating
// dtype, read as float32); the result is [B, dim] float32, laid out [cos | sin].
at::Tensor TimestepSinusoids(const at::Tensor& t, int64_t dim);

// Ref: diffusers CombinedTimestepTextProjEmbeddings / CombinedTimestepGuidanceTextProjEmbeddings.
// `guidance_embedder` is used when its weights are defined.
struct TimeTextEmbedding {
  TimestepMlp timestep_embedder;
  TimestepMlp guidance_embedder;  // Undefined weights when the model has no guidance embedding.
  TimestepMlp text_embedder;      // PixArtAlphaTextProjection with act_fn="silu": same layout.
};
// `timestep` and `guidance` ([B], already scaled by 1000) and `pooled` [B, P]; `guidance` undefined
// when the model has no guidance embedding. Returns temb [B, inner_dim] in pooled's dtype.
at::Tensor ApplyTimeTextEmbedding(const TimeTextEmbedding& embed, const at::Tensor& timestep,
                                  const at::Tensor& guidance, const at::Tensor& pooled);

// Rotary embedding tables for a token sequence, as FluxPosEmbed returns them: float32 [S,
// head_dim].
struct Rope {
  at::Tensor cos;
  at::Tensor sin;
};

// Ref: diffusers FluxPosEmbed(theta=10000) with get_1d_rotary_pos_embed(use_real=True,
// repeat_interleave_real=True, freqs_dtype=float64). `ids` is [S, axes_dims.size()] (any dtype).
Rope ComputeRope(const at::Tensor& ids, const std::vector<int64_t>& axes_dims,
                 double theta = 10000.0);

// Ref: diffusers apply_rotary_emb(use_real=True, use_real_unbind_dim=-1, sequence_dim=1).
// `x` is [B, S, H, D]; pairs (2i, 2i+1) of the last dimension are rotated. Result in x's dtype.
at::Tensor ApplyRope(const at::Tensor& x, const Rope& rope);

// LayerNorm without affine parameters (eps 1e-6), then x * (1 + scale[:, None]) + shift[:, None].
// `scale` and `shift` are [B, D]. Ref: the modulation in diffusers AdaLayerNormZero(Single).
at::Tensor LayerNormModulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);

// What the modulation linears of one forward pass (AdaLayerNormZero's, AdaLayerNormZeroSingle's
// and norm_out's) read: the time / text embedding `temb` [B, dim], each linear then computing
// linear(silu(temb)); or, with `rows` defined, their outputs computed beforehand for the pass' B
// rows ([B, width]: every modulation linear of the model side by side, each at its column;
// FluxTransformer2DModel::ComputeModulation), which the linears then only slice.
struct Conditioning {
  // A pass that computes its modulations (implicit: the blocks' callers pass temb as before).
  Conditioning(at::Tensor temb_in) : temb(std::move(temb_in)) {}  // NOLINT(google-explicit-*)
  static Conditioning Precomputed(at::Tensor rows) {
    Conditioning c{at::Tensor()};
    c.rows = std::move(rows);
    return c;
  }
  // Rows `index` ([K] int64 on the tensors' device) of whichever is defined.
  Conditioning Select(const at::Tensor& index) const;

  at::Tensor temb;
  at::Tensor rows;
};

// linear(silu(temb)) [B, out], or with precomputed rows their columns [column, column + out) (a
// view). Throws c10::Error for precomputed rows and a column outside them.
at::Tensor Modulation(const Linear& linear, const Conditioning& conditioning, int64_t column);

// Ref: diffusers AdaLayerNormContinuous(elementwise_affine=False, eps=1e-6): the linear output is
// split as (scale, shift), in that order. `column`: the linear's column in precomputed rows.
at::Tensor ApplyAdaLayerNormContinuous(const Linear& linear, const at::Tensor& x,
                                       const Conditioning& conditioning, int64_t column = -1);

}  // namespace flux
}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_LAYERS_H_
