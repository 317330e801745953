// Each function mirrors the order and dtypes of the diffusers operations it reproduces (see the
// header), because the parity tests compare against diffusers at float32 rounding level.
#include "services/denoiser/models/flux_layers.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/weight_map.h"
#include "kernels/fp8_linear.h"

namespace dgrid::flux {

absl::StatusOr<Linear> TakeLinear(WeightMap& weights, absl::string_view prefix, int64_t in,
                                  int64_t out, bool bias) {
  Linear linear;
  ASSIGN_OR_RETURN(linear.weight, weights.Take(absl::StrCat(prefix, ".weight"), {out, in}));
  if (bias) {
    ASSIGN_OR_RETURN(linear.bias, weights.Take(absl::StrCat(prefix, ".bias"), {out}));
  }
  return linear;
}

absl::StatusOr<LinearPrecision> ParseLinearPrecision(absl::string_view value) {
  if (value.empty() || value == "bf16") return LinearPrecision::kModelDtype;
  if (value == "fp8") return LinearPrecision::kFp8;
  if (value == "fp8-fast") return LinearPrecision::kFp8Fast;
  return InvalidArgument("--dit-precision: '", value, "' must be bf16, fp8 or fp8-fast");
}

const char* LinearPrecisionName(LinearPrecision precision) {
  switch (precision) {
    case LinearPrecision::kFp8:
      return "fp8";
    case LinearPrecision::kFp8Fast:
      return "fp8-fast";
    case LinearPrecision::kModelDtype:
      break;
  }
  return "bf16";
}

Linear QuantizeLinearFp8(const Linear& linear, bool fast_accumulation) {
  const kernels::Fp8Rows q = kernels::QuantizeRowsFp8Reference(linear.weight);
  return {q.data, linear.bias, q.scale, fast_accumulation};
}

at::Tensor ApplyLinear(const Linear& linear, const at::Tensor& x) {
  if (!IsFp8(linear)) {
    if (x.dim() == 2 && x.size(0) > 1 && x.is_cpu()) {
      // A batch of conditioning vectors ([B, D]: time, guidance, pooled text, modulation) on a
      // CPU goes one row at a time: a one-row product runs another kernel (gemv) than B rows
      // (gemm) and rounds differently, and a request batched at step boundaries
      // (services/denoiser/batched_sampler.h) keeps its lone result bit for bit this way. Token
      // products ([B, N, D]) round alike whatever B is.
      std::vector<at::Tensor> rows;
      rows.reserve(static_cast<size_t>(x.size(0)));
      for (int64_t i = 0; i < x.size(0); ++i) {
        rows.push_back(at::linear(x.narrow(0, i, 1), linear.weight, linear.bias));
      }
      return at::cat(rows);
    }
    return at::linear(x, linear.weight, linear.bias);
  }
  const at::Tensor y =
      kernels::Fp8Linear(kernels::QuantizeRowsFp8(x), {linear.weight, linear.weight_scale},
                         linear.bias, linear.fp8_fast_accumulation);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(linear.weight.size(0));
  return y.view(shape);
}

at::Tensor ApplyTimestepMlp(const TimestepMlp& mlp, const at::Tensor& x) {
  return ApplyLinear(mlp.linear_2, at::silu(ApplyLinear(mlp.linear_1, x)));
}

at::Tensor TimestepSinusoids(const at::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  // Frequencies exp(-ln(10000) * k / half) in float32, computed as diffusers does (scale first,
  // then divide) so that the rounding is the same.
  at::Tensor exponent = at::arange(0, half, t.options().dtype(at::kFloat)) * (-std::log(10000.0));
  exponent = exponent / half;
  const at::Tensor args = t.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);
  // flip_sin_to_cos: [cos | sin].
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

at::Tensor ApplyTimeTextEmbedding(const TimeTextEmbedding& embed, const at::Tensor& timestep,
                                  const at::Tensor& guidance, const at::Tensor& pooled) {
  constexpr int64_t kSinusoidWidth = 256;
  at::Tensor temb =
      ApplyTimestepMlp(embed.timestep_embedder,
                       TimestepSinusoids(timestep, kSinusoidWidth).to(pooled.scalar_type()));
  if (guidance.defined()) {
    temb = temb +
           ApplyTimestepMlp(embed.guidance_embedder,
                            TimestepSinusoids(guidance, kSinusoidWidth).to(pooled.scalar_type()));
  }
  return temb + ApplyTimestepMlp(embed.text_embedder, pooled);
}

Rope ComputeRope(const at::Tensor& ids, const std::vector<int64_t>& axes_dims, double theta) {
  const at::Tensor pos = ids.to(at::kFloat);
  std::vector<at::Tensor> cos_parts;
  std::vector<at::Tensor> sin_parts;
  const int64_t n_axes = ids.size(-1);
  TORCH_CHECK(static_cast<size_t>(n_axes) <= axes_dims.size(), "ids have ", n_axes,
              " columns but only ", axes_dims.size(), " RoPE axes are configured");
  for (int64_t i = 0; i < n_axes; ++i) {
    const int64_t dim = axes_dims[i];
    // 1 / theta^(2k/dim) in float64; diffusers writes `1.0 / x`, which torch evaluates as
    // reciprocal(x) * 1.0.
    const at::Tensor exponents = at::arange(0, dim, 2, pos.options().dtype(at::kDouble)) / dim;
    const at::Tensor inv_freq = at::reciprocal(at::pow(theta, exponents));
    // float32 positions times float64 frequencies promote to float64, as torch.outer does.
    const at::Tensor angles = at::outer(pos.select(1, i), inv_freq);
    cos_parts.push_back(
        at::repeat_interleave(at::cos(angles), 2, 1, angles.size(1) * 2).to(at::kFloat));
    sin_parts.push_back(
        at::repeat_interleave(at::sin(angles), 2, 1, angles.size(1) * 2).to(at::kFloat));
  }
  return Rope{at::cat(cos_parts, -1), at::cat(sin_parts, -1)};
}

at::Tensor ApplyRope(const at::Tensor& x, const Rope& rope) {
  const at::Tensor cos = rope.cos.unsqueeze(0).unsqueeze(2).to(x.device());
  const at::Tensor sin = rope.sin.unsqueeze(0).unsqueeze(2).to(x.device());
  std::vector<int64_t> pair_shape(x.sizes().begin(), x.sizes().end() - 1);
  pair_shape.push_back(-1);
  pair_shape.push_back(2);
  const at::Tensor pairs = x.reshape(pair_shape);
  const at::Tensor real = pairs.select(-1, 0);
  const at::Tensor imag = pairs.select(-1, 1);
  const at::Tensor rotated = at::stack({-imag, real}, -1).flatten(3);
  return (x.to(at::kFloat) * cos + rotated.to(at::kFloat) * sin).to(x.scalar_type());
}

at::Tensor LayerNormModulate(const at::Tensor& x, const at::Tensor& shift,
                             const at::Tensor& scale) {
  constexpr double kEps = 1e-6;
  const at::Tensor normed = at::layer_norm(x, {x.size(-1)}, {}, {}, kEps);
  return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

Conditioning Conditioning::Select(const at::Tensor& index) const {
  if (rows.defined()) return Precomputed(rows.index_select(0, index));
  return Conditioning(temb.index_select(0, index));
}

at::Tensor Modulation(const Linear& linear, const Conditioning& conditioning, int64_t column) {
  if (!conditioning.rows.defined()) return ApplyLinear(linear, at::silu(conditioning.temb));
  const int64_t width = linear.weight.size(0);
  TORCH_CHECK(column >= 0 && column + width <= conditioning.rows.size(1), "modulation columns [",
              column, ", ", column + width, ") outside precomputed rows of ",
              conditioning.rows.size(1));
  return conditioning.rows.narrow(1, column, width);
}

at::Tensor ApplyAdaLayerNormContinuous(const Linear& linear, const at::Tensor& x,
                                       const Conditioning& conditioning, int64_t column) {
  const at::Tensor emb = conditioning.rows.defined()
                             ? Modulation(linear, conditioning, column)
                             : ApplyLinear(linear, at::silu(conditioning.temb).to(x.scalar_type()));
  const std::vector<at::Tensor> parts = emb.chunk(2, 1);
  // (scale, shift): the reverse of the (shift, scale) order of AdaLayerNormZero.
  return LayerNormModulate(x, /*shift=*/parts[1], /*scale=*/parts[0]);
}

}  // namespace dgrid::flux
