#include "tests/unit/denoiser/tiny_wan_checkpoint.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "common/weight_map.h"
#include "tests/unit/common/safetensors_writer.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid::testing {

void WriteTinyWanCheckpoint(const std::string& root) {
  using nlohmann::json;
  const WanTransformerConfig c = TinyWanConfig();
  const json config = {{"_class_name", "WanTransformer3DModel"},
                       {"patch_size", c.patch_size},
                       {"num_attention_heads", c.num_attention_heads},
                       {"attention_head_dim", c.attention_head_dim},
                       {"in_channels", c.in_channels},
                       {"out_channels", c.out_channels},
                       {"text_dim", c.text_dim},
                       {"freq_dim", c.freq_dim},
                       {"ffn_dim", c.ffn_dim},
                       {"num_layers", c.num_layers},
                       {"cross_attn_norm", c.cross_attn_norm},
                       {"eps", c.eps},
                       {"rope_max_seq_len", c.rope_max_seq_len}};
  for (const auto& [folder, seed] :
       {std::pair<const char*, uint64_t>{"transformer", 3}, {"transformer_2", 4}}) {
    const std::string dir = root + "/" + folder;
    MakeDirs(dir);
    WriteFile(dir + "/config.json", config.dump());
    std::vector<TensorSpec> tensors;
    const WeightMap weights = TinyWanWeights(seed);
    for (const auto& [name, t] : weights.tensors()) {
      const at::Tensor f = t.to(at::kFloat).contiguous();
      tensors.push_back({name, "F32", f.sizes().vec(),
                         std::string(static_cast<const char*>(f.data_ptr()), f.nbytes())});
    }
    WriteSafetensors(dir + "/diffusion_pytorch_model.safetensors", tensors);
  }
  MakeDirs(root + "/scheduler");
  WriteFile(root + "/scheduler/scheduler_config.json",
            json{{"_class_name", "UniPCMultistepScheduler"},
                 {"prediction_type", "flow_prediction"},
                 {"use_flow_sigmas", true},
                 {"flow_shift", 3.0}}
                .dump());
  MakeDirs(root + "/vae");
  WriteFile(root + "/vae/config.json", json{{"_class_name", "AutoencoderKLWan"},
                                            {"scale_factor_temporal", 4},
                                            {"scale_factor_spatial", 8}}
                                           .dump());
  WriteFile(root + "/model_index.json",
            json{{"_class_name", "WanPipeline"},
                 {"_diffusers_version", "0.42.1"},
                 {"boundary_ratio", 0.875},
                 {"scheduler", {"diffusers", "UniPCMultistepScheduler"}},
                 {"transformer", {"diffusers", "WanTransformer3DModel"}},
                 {"transformer_2", {"diffusers", "WanTransformer3DModel"}},
                 {"vae", {"diffusers", "AutoencoderKLWan"}}}
                .dump());
}

}  // namespace dgrid::testing
