#include "tests/unit/parallel/sp_tiny_wan.h"

#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/weight_map.h"

namespace dgrid::testing {

WanTransformerConfig TinyWanConfig() {
  WanTransformerConfig c;
  c.patch_size = {1, 2, 2};
  c.num_attention_heads = 4;
  c.attention_head_dim = 12;
  c.in_channels = c.out_channels = 4;
  c.text_dim = 24;
  c.freq_dim = 32;
  c.ffn_dim = 64;
  c.num_layers = 2;
  c.rope_max_seq_len = 32;
  return c;
}

WeightMap TinyWanWeights(uint64_t seed) {
  const WanTransformerConfig c = TinyWanConfig();
  at::manual_seed(seed);
  const int64_t d = c.inner_dim();
  WeightMap w("random tiny Wan");
  // Weights large enough that attention is far from uniform; norms near 1.
  const auto random = [&](const std::string& name, std::vector<int64_t> shape, double scale) {
    w.Insert(name, at::randn(shape) * scale);
  };
  const auto norm = [&](const std::string& name, int64_t n) {
    w.Insert(name, at::ones({n}) + 0.1 * at::randn({n}));
  };
  const auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    random(name + ".weight", {out, in}, 0.3);
    random(name + ".bias", {out}, 0.1);
  };
  const auto& p = c.patch_size;
  random("patch_embedding.weight", {d, c.in_channels, p[0], p[1], p[2]}, 0.3);
  random("patch_embedding.bias", {d}, 0.1);
  linear("condition_embedder.time_embedder.linear_1", c.freq_dim, d);
  linear("condition_embedder.time_embedder.linear_2", d, d);
  linear("condition_embedder.time_proj", d, 6 * d);
  linear("condition_embedder.text_embedder.linear_1", c.text_dim, d);
  linear("condition_embedder.text_embedder.linear_2", d, d);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i);
    for (const char* attn : {".attn1", ".attn2"}) {
      for (const char* proj : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
        linear(block + attn + proj, d, d);
      }
      norm(block + attn + ".norm_q.weight", d);
      norm(block + attn + ".norm_k.weight", d);
    }
    norm(block + ".norm2.weight", d);
    random(block + ".norm2.bias", {d}, 0.1);
    linear(block + ".ffn.net.0.proj", d, c.ffn_dim);
    linear(block + ".ffn.net.2", c.ffn_dim, d);
    random(block + ".scale_shift_table", {1, 6, d}, 0.2);
  }
  linear("proj_out", d, c.out_channels * p[0] * p[1] * p[2]);
  random("scale_shift_table", {1, 2, d}, 0.2);
  return w;
}

std::unique_ptr<WanTransformer3DModel> TinyWanModel(uint64_t seed) {
  WeightMap w = TinyWanWeights(seed);
  auto model = WanTransformer3DModel::FromWeights(TinyWanConfig(), w);
  if (!model.ok()) return nullptr;
  return std::make_unique<WanTransformer3DModel>(*std::move(model));
}

bool ParseTinyWanVariant(const std::string& name, TinyWanVariant* variant) {
  if (name == "t2v") {
    *variant = TinyWanVariant::kT2V;
  } else if (name == "a14b") {
    *variant = TinyWanVariant::kA14B;
  } else if (name == "ti2v") {
    *variant = TinyWanVariant::kTI2V;
  } else if (name == "euler") {
    *variant = TinyWanVariant::kEuler;
  } else {
    return false;
  }
  return true;
}

TinyWanPipeline MakeTinyWanPipeline(TinyWanVariant variant) {
  TinyWanPipeline p;
  p.transformer = TinyWanModel(3);
  if (variant == TinyWanVariant::kA14B) {
    p.transformer_2 = TinyWanModel(4);
    p.pipeline.boundary_ratio = 0.875;
  }
  p.pipeline.expand_timesteps = variant == TinyWanVariant::kTI2V;
  if (variant == TinyWanVariant::kEuler) {
    FlowMatchEulerSchedulerConfig euler;
    euler.shift = 3.0;
    p.scheduler = euler;
  } else {
    UniPCMultistepSchedulerConfig unipc;
    unipc.flow_shift = 3.0;
    p.scheduler = unipc;
  }
  return p;
}

WanSamplerRequest TinyWanRequest(TinyWanVariant variant, int64_t num_frames, int64_t height,
                                 int64_t width, bool cfg) {
  at::manual_seed(11);
  WanSamplerRequest r;
  r.request_id = "sp-wan";
  r.num_frames = num_frames;
  r.height = height;
  r.width = width;
  r.num_inference_steps = variant == TinyWanVariant::kA14B ? 6 : 4;
  r.seed = 42;
  r.prompt_embeds = at::randn({1, 7, 24});
  r.guidance_scale = 1.0;
  if (cfg) {
    r.guidance_scale = 5.0;
    if (variant == TinyWanVariant::kA14B) r.guidance_scale_2 = 3.0;
    r.negative_prompt_embeds = at::randn({1, 5, 24});  // another text length on purpose
  }
  return r;
}

}  // namespace dgrid::testing
