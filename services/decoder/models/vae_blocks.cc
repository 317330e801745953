#include "services/decoder/models/vae_blocks.h"

#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid::decoder {

absl::StatusOr<VaeActivation> ParseVaeActivation(absl::string_view name) {
  if (name == "silu" || name == "swish") return VaeActivation::kSilu;
  if (name == "mish") return VaeActivation::kMish;
  if (name == "gelu") return VaeActivation::kGelu;
  if (name == "relu") return VaeActivation::kRelu;
  return InvalidArgument("unsupported activation '", name, "'");
}

at::Tensor ApplyVaeActivation(VaeActivation activation, const at::Tensor& x) {
  switch (activation) {
    case VaeActivation::kSilu:
      return at::silu(x);
    case VaeActivation::kMish:
      return at::mish(x);
    case VaeActivation::kGelu:
      return at::gelu(x);
    case VaeActivation::kRelu:
      return at::relu(x);
  }
  return x;
}

absl::StatusOr<Conv2d> Conv2d::Take(WeightMap& weights, const std::string& prefix, int64_t in,
                                    int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  Conv2d c;
  ASSIGN_OR_RETURN(c.weight, weights.Take(prefix + ".weight", {out, in, kernel, kernel}));
  ASSIGN_OR_RETURN(c.bias, weights.Take(prefix + ".bias", {out}));
  c.stride = stride;
  c.padding = padding;
  return c;
}

at::Tensor Conv2d::Forward(const at::Tensor& x) const {
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

absl::StatusOr<GroupNorm> GroupNorm::Take(WeightMap& weights, const std::string& prefix,
                                          int64_t channels, int64_t groups, double eps) {
  if (groups <= 0 || channels % groups != 0) {
    return InvalidArgument(weights.source(), ": ", prefix, ": ", channels,
                           " channels cannot be split into ", groups, " groups");
  }
  GroupNorm n;
  ASSIGN_OR_RETURN(n.weight, weights.Take(prefix + ".weight", {channels}));
  ASSIGN_OR_RETURN(n.bias, weights.Take(prefix + ".bias", {channels}));
  n.groups = groups;
  n.eps = eps;
  return n;
}

at::Tensor GroupNorm::Forward(const at::Tensor& x) const {
  return at::group_norm(x, groups, weight, bias, eps);
}

at::Tensor VaeSpatialOps::Conv(const Conv2d& conv, const at::Tensor& x) { return conv.Forward(x); }

at::Tensor VaeSpatialOps::Norm(const GroupNorm& norm, const at::Tensor& x) {
  return norm.Forward(x);
}

at::Tensor VaeSpatialOps::Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v);
}

at::Tensor VaeSpatialOps::Pad(const at::Tensor& x, const std::vector<int64_t>& pad,
                              int64_t /*row_dim*/) {
  return at::constant_pad_nd(x, pad, 0);
}

VaeSpatialOps& VaeSpatialOps::Local() {
  static VaeSpatialOps* const local = new VaeSpatialOps();
  return *local;
}

namespace {
// Every VAE norm uses diffusers' resnet_eps of 1e-6.
constexpr double kVaeNormEps = 1e-6;
}  // namespace

absl::StatusOr<ResnetBlock2D> ResnetBlock2D::Take(WeightMap& weights, const std::string& prefix,
                                                  int64_t in_channels, int64_t out_channels,
                                                  int64_t groups, VaeActivation activation) {
  ResnetBlock2D r;
  r.activation_ = activation;
  ASSIGN_OR_RETURN(r.norm1_,
                   GroupNorm::Take(weights, prefix + ".norm1", in_channels, groups, kVaeNormEps));
  ASSIGN_OR_RETURN(r.conv1_,
                   Conv2d::Take(weights, prefix + ".conv1", in_channels, out_channels, 3, 1, 1));
  ASSIGN_OR_RETURN(r.norm2_,
                   GroupNorm::Take(weights, prefix + ".norm2", out_channels, groups, kVaeNormEps));
  ASSIGN_OR_RETURN(r.conv2_,
                   Conv2d::Take(weights, prefix + ".conv2", out_channels, out_channels, 3, 1, 1));
  if (in_channels != out_channels) {
    ASSIGN_OR_RETURN(r.conv_shortcut_, Conv2d::Take(weights, prefix + ".conv_shortcut", in_channels,
                                                    out_channels, 1, 1, 0));
  }
  return r;
}

at::Tensor ResnetBlock2D::Forward(const at::Tensor& x, VaeSpatialOps& ops) const {
  at::Tensor h = ops.Conv(conv1_, ApplyVaeActivation(activation_, ops.Norm(norm1_, x)));
  h = ops.Conv(conv2_, ApplyVaeActivation(activation_, ops.Norm(norm2_, h)));
  const at::Tensor shortcut = conv_shortcut_.has_value() ? ops.Conv(*conv_shortcut_, x) : x;
  // output_scale_factor is 1 in every VAE block, so the reference's division is exact and omitted.
  return shortcut + h;
}

absl::StatusOr<VaeAttention> VaeAttention::Take(WeightMap& weights, const std::string& prefix,
                                                int64_t channels, int64_t groups) {
  VaeAttention a;
  ASSIGN_OR_RETURN(a.norm_,
                   GroupNorm::Take(weights, prefix + ".group_norm", channels, groups, kVaeNormEps));
  // Checkpoints written before diffusers' attention refactor name the projections query / key /
  // value / proj_attn; diffusers renames them on load, and so does this.
  const bool legacy =
      !weights.Contains(prefix + ".to_q.weight") && weights.Contains(prefix + ".query.weight");
  auto linear = [&](absl::string_view name,
                    absl::string_view legacy_name) -> absl::StatusOr<Linear> {
    const std::string p = absl::StrCat(prefix, ".", legacy ? legacy_name : name);
    Linear l;
    ASSIGN_OR_RETURN(l.weight, weights.Take(p + ".weight", {channels, channels}));
    ASSIGN_OR_RETURN(l.bias, weights.Take(p + ".bias", {channels}));
    return l;
  };
  ASSIGN_OR_RETURN(a.q_, linear("to_q", "query"));
  ASSIGN_OR_RETURN(a.k_, linear("to_k", "key"));
  ASSIGN_OR_RETURN(a.v_, linear("to_v", "value"));
  ASSIGN_OR_RETURN(a.out_, linear("to_out.0", "proj_attn"));
  return a;
}

at::Tensor VaeAttention::Forward(const at::Tensor& x, VaeSpatialOps& ops) const {
  const int64_t batch = x.size(0);
  const int64_t channels = x.size(1);
  const int64_t height = x.size(2);
  const int64_t width = x.size(3);
  // [B, C, H, W] -> [B, C, HW]; normalised in that layout as the reference does, then [B, HW, C].
  const at::Tensor tokens =
      ops.Norm(norm_, x.view({batch, channels, height * width})).transpose(1, 2);
  auto one_head = [&](const Linear& l) {
    return at::linear(tokens, l.weight, l.bias).unsqueeze(1);  // [B, 1, HW, C]
  };
  const at::Tensor q = one_head(q_);
  at::Tensor h = ops.Attend(q, one_head(k_), one_head(v_));
  h = h.transpose(1, 2).reshape({batch, -1, channels}).to(q.scalar_type());
  h = at::linear(h, out_.weight, out_.bias);
  h = h.transpose(-1, -2).reshape({batch, channels, height, width});
  return h + x;
}

absl::StatusOr<VaeMidBlock> VaeMidBlock::Take(WeightMap& weights, const std::string& prefix,
                                              int64_t channels, int64_t groups, bool add_attention,
                                              VaeActivation activation) {
  VaeMidBlock m;
  for (int i = 0; i < 2; ++i) {
    ASSIGN_OR_RETURN(ResnetBlock2D r,
                     ResnetBlock2D::Take(weights, absl::StrCat(prefix, ".resnets.", i), channels,
                                         channels, groups, activation));
    m.resnets_.push_back(std::move(r));
  }
  if (add_attention) {
    ASSIGN_OR_RETURN(m.attention_,
                     VaeAttention::Take(weights, prefix + ".attentions.0", channels, groups));
  }
  return m;
}

at::Tensor VaeMidBlock::Forward(const at::Tensor& x, VaeSpatialOps& ops) const {
  at::Tensor h = resnets_[0].Forward(x, ops);
  if (attention_.has_value()) h = attention_->Forward(h, ops);
  return resnets_[1].Forward(h, ops);
}

absl::StatusOr<VaeResampleBlock> VaeResampleBlock::Take(WeightMap& weights,
                                                        const std::string& prefix, Kind kind,
                                                        int64_t num_resnets, int64_t in_channels,
                                                        int64_t out_channels, bool resample,
                                                        int64_t groups, VaeActivation activation) {
  VaeResampleBlock b;
  b.kind_ = kind;
  for (int64_t i = 0; i < num_resnets; ++i) {
    ASSIGN_OR_RETURN(
        ResnetBlock2D r,
        ResnetBlock2D::Take(weights, absl::StrCat(prefix, ".resnets.", i),
                            i == 0 ? in_channels : out_channels, out_channels, groups, activation));
    b.resnets_.push_back(std::move(r));
  }
  if (resample) {
    if (kind == Kind::kDown) {
      // Downsample2D with padding 0: the explicit (0, 1, 0, 1) pad happens in Forward.
      ASSIGN_OR_RETURN(b.resample_conv_, Conv2d::Take(weights, prefix + ".downsamplers.0.conv",
                                                      out_channels, out_channels, 3, 2, 0));
    } else {
      ASSIGN_OR_RETURN(b.resample_conv_, Conv2d::Take(weights, prefix + ".upsamplers.0.conv",
                                                      out_channels, out_channels, 3, 1, 1));
    }
  }
  return b;
}

at::Tensor VaeResampleBlock::Forward(const at::Tensor& x, VaeSpatialOps& ops) const {
  at::Tensor h = x;
  for (const ResnetBlock2D& r : resnets_) h = r.Forward(h, ops);
  if (!resample_conv_.has_value()) return h;
  if (kind_ == Kind::kDown) {
    h = at::constant_pad_nd(h, {0, 1, 0, 1}, 0);
  } else {
    h = at::upsample_nearest2d(h, std::nullopt, std::vector<double>{2.0, 2.0});
  }
  return ops.Conv(*resample_conv_, h);
}

}  // namespace dgrid::decoder
