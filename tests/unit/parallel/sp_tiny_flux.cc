#include "tests/unit/parallel/sp_tiny_flux.h"

#include <vector>

#include <ATen/ATen.h>

#include "common/weight_map.h"
#include "services/denoiser/models/flux_parameters.h"

namespace dgrid::testing {

std::unique_ptr<FluxTransformer2DModel> TinyFluxModel(int double_blocks, int heads) {
  if (heads != 4 && heads != 8) return nullptr;
  FluxTransformerConfig config;
  config.in_channels = config.out_channels = 16;
  config.num_layers = double_blocks;
  config.num_single_layers = 1;
  config.attention_head_dim = 64 / heads;
  config.num_attention_heads = heads;
  config.joint_attention_dim = 32;
  config.pooled_projection_dim = 24;
  config.guidance_embeds = true;
  config.axes_dims_rope =
      heads == 4 ? std::vector<int64_t>{4, 6, 6} : std::vector<int64_t>{2, 2, 4};
  at::manual_seed(7);
  WeightMap w("random");
  for (const FluxParameter& p : FluxParameters(config)) {
    w.Insert(p.name, p.kind == FluxParameter::kNormScale
                         ? at::ones(p.shape) + 0.1 * at::randn(p.shape)
                         : at::randn(p.shape) * 0.2);
  }
  auto model = FluxTransformer2DModel::FromWeights(config, w);
  if (!model.ok()) return nullptr;
  return std::make_unique<FluxTransformer2DModel>(*std::move(model));
}

FlowMatchEulerSchedulerConfig TinyFluxScheduler() {
  FlowMatchEulerSchedulerConfig c;
  c.shift = 3.0;
  c.use_dynamic_shifting = true;
  return c;
}

FluxSamplerRequest TinyFluxRequest(int64_t height, int64_t width, bool true_cfg) {
  at::manual_seed(11);
  FluxSamplerRequest r;
  r.vae_scale_factor = 1;
  r.height = height;
  r.width = width;
  r.num_inference_steps = 3;
  r.seed = 42;
  r.guidance_scale = 3.5;
  r.prompt_embeds = at::randn({1, 5, 32});
  r.pooled_prompt_embeds = at::randn({1, 24});
  if (true_cfg) {
    r.true_cfg_scale = 2.5;
    r.negative_prompt_embeds = at::randn({1, 4, 32});  // Another text length on purpose.
    r.negative_pooled_prompt_embeds = at::randn({1, 24});
  }
  return r;
}

double RelativeError(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

}  // namespace dgrid::testing
