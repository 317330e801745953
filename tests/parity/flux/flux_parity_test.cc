// dgrid's FLUX.1 transformer, sampler loop, scheduler and seeded noise against diffusers 0.42.1, on
// the cases make_cases.py writes (see its docstring). Tolerances: relative L2 error 1e-5 (forward)
// and 1e-4 (4-step loop) in float32, 1e-2 in bfloat16; scheduler values to 1e-6; noise bit-exact.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/flow_match_euler.h"
#include "tests/parity/parity_util.h"

namespace dgrid {
namespace {

std::string Root() { return parity::DataDir("flux"); }

class FluxParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto manifest = JsonConfig::FromFile(Root() + "/manifest.json");
    ASSERT_TRUE(manifest.ok()) << manifest.status()
                               << " (run tests/parity/flux/make_cases.py or ctest -L parity)";
    manifest_ = manifest->json();
  }
  nlohmann::json manifest_;
};

LoadOptions ModelLoadOptions() {
  LoadOptions options;
  if (const char* device = std::getenv("DGRID_TEST_DEVICE")) options.device = device;
  return options;
}

using parity::RelativeError;

double Tolerance(const std::string& dtype, double fp32_tolerance) {
  return dtype == "bfloat16" ? 1e-2 : fp32_tolerance;
}

at::Tensor Get(WeightMap& tensors, const std::string& name) {
  auto t = tensors.Take(name);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : at::Tensor();
}

TEST_F(FluxParityTest, TransformerForward) {
  ASSERT_FALSE(manifest_["models"].empty());
  for (const auto& spec : manifest_["models"]) {
    const std::string name = spec["name"];
    const std::string dtype = spec["dtype"];
    SCOPED_TRACE(name);
    auto model =
        FluxTransformer2DModel::Load(Root() + "/" + name + "/transformer", ModelLoadOptions());
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(model->options().dtype(), dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
    {
      // Every parameter diffusers saved is used: none is left over after building the model.
      const std::string folder = Root() + "/" + name + "/transformer";
      auto config = FluxTransformerConfig::FromFile(folder + "/config.json");
      ASSERT_TRUE(config.ok()) << config.status();
      auto weights = LoadSafetensorsFolder(folder, LoadOptions{});
      ASSERT_TRUE(weights.ok()) << weights.status();
      ASSERT_TRUE(FluxTransformer2DModel::FromWeights(*config, *weights).ok());
      EXPECT_TRUE(weights->RemainingNames().empty()) << weights->RemainingNames().front();
    }
    auto tensors = LoadSafetensorsFile(Root() + "/" + name + "/forward.safetensors", LoadOptions{});
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    FluxTransformerInputs in;
    in.hidden_states = Get(*tensors, "hidden_states");
    in.encoder_hidden_states = Get(*tensors, "encoder_hidden_states");
    in.pooled_projections = Get(*tensors, "pooled_projections");
    in.timestep = Get(*tensors, "timestep");
    in.img_ids = Get(*tensors, "img_ids");
    in.txt_ids = Get(*tensors, "txt_ids");
    if (spec["config"]["guidance_embeds"]) in.guidance = Get(*tensors, "guidance");
    const at::Tensor expected = Get(*tensors, "output");
    auto out = model->Forward(in);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->sizes(), expected.sizes());
    EXPECT_EQ(out->scalar_type(), expected.scalar_type());
    const double err = RelativeError(*out, expected);
    std::printf("flux parity forward %-24s %-8s %-6s rel err %.3e\n", name.c_str(), dtype.c_str(),
                ModelLoadOptions().device.c_str(), err);
    EXPECT_LE(err, Tolerance(dtype, 1e-5));
  }
}

TEST_F(FluxParityTest, SamplingLoop) {
  for (const auto& spec : manifest_["models"]) {
    const std::string name = spec["name"];
    const std::string dtype = spec["dtype"];
    SCOPED_TRACE(name);
    const std::string dir = Root() + "/" + name;
    auto model = FluxTransformer2DModel::Load(dir + "/transformer", ModelLoadOptions());
    ASSERT_TRUE(model.ok()) << model.status();
    auto scheduler =
        FlowMatchEulerSchedulerConfig::FromFile(dir + "/scheduler/scheduler_config.json");
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    auto tensors = LoadSafetensorsFile(dir + "/loop.safetensors", LoadOptions{});
    ASSERT_TRUE(tensors.ok()) << tensors.status();

    const auto& loop = spec["loop"];
    FluxSamplerRequest request;
    request.request_id = name;
    request.height = loop["height"];
    request.width = loop["width"];
    request.num_inference_steps = loop["steps"];
    request.seed = loop["seed"];
    request.guidance_scale = loop["guidance_scale"];
    request.prompt_embeds = Get(*tensors, "prompt_embeds");
    request.pooled_prompt_embeds = Get(*tensors, "pooled_prompt_embeds");
    if (loop.contains("true_cfg_scale")) {
      request.true_cfg_scale = loop["true_cfg_scale"];
      request.negative_prompt_embeds = Get(*tensors, "negative_prompt_embeds");
      request.negative_pooled_prompt_embeds = Get(*tensors, "negative_pooled_prompt_embeds");
    }
    const at::Tensor expected = Get(*tensors, "latents");
    int steps = 0;
    FluxSamplerHooks hooks;
    hooks.on_step = [&](int, int, double) { ++steps; };
    auto latents = RunFluxSampler(*model, *scheduler, request, hooks);
    ASSERT_TRUE(latents.ok()) << latents.status();
    EXPECT_EQ(steps, request.num_inference_steps);
    ASSERT_EQ(latents->sizes(), expected.sizes());
    const double err = RelativeError(*latents, expected);
    std::printf("flux parity loop    %-24s %-8s %-6s rel err %.3e\n", name.c_str(), dtype.c_str(),
                ModelLoadOptions().device.c_str(), err);
    EXPECT_LE(err, Tolerance(dtype, 1e-4));
  }
}

TEST_F(FluxParityTest, SchedulerTimestepsAndSigmas) {
  ASSERT_FALSE(manifest_["scheduler_cases"].empty());
  double worst = 0.0;
  for (const auto& c : manifest_["scheduler_cases"]) {
    const int steps = c["steps"];
    const int64_t seq_len = c["image_seq_len"];
    SCOPED_TRACE(std::string(c["config_name"]) + " steps " + std::to_string(steps) + " seq " +
                 std::to_string(seq_len));
    auto json = JsonConfig::FromText(c["config"].dump(), "scheduler case");
    ASSERT_TRUE(json.ok()) << json.status();
    auto config = FlowMatchEulerSchedulerConfig::FromJson(*json);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_DOUBLE_EQ(CalculateShift(seq_len, *config), c["mu"].get<double>());
    FlowMatchEulerScheduler scheduler(*config);
    ASSERT_TRUE(scheduler.SetTimestepsForFlux(steps, seq_len).ok());
    const auto& timesteps = c["timesteps"];
    const auto& sigmas = c["sigmas"];
    ASSERT_EQ(scheduler.timesteps().size(), timesteps.size());
    ASSERT_EQ(scheduler.sigmas().size(), sigmas.size());
    for (size_t i = 0; i < timesteps.size(); ++i) {
      const double ref = timesteps[i].get<double>();
      // Timesteps are ~1000: compare relative to their size.
      const double err = std::abs(scheduler.timesteps()[i] - ref) / std::max(1.0, std::abs(ref));
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-6) << "timestep " << i;
    }
    for (size_t i = 0; i < sigmas.size(); ++i) {
      const double err = std::abs(scheduler.sigmas()[i] - sigmas[i].get<double>());
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-6) << "sigma " << i;
    }
  }
  std::printf("flux parity scheduler: %zu cases, max error %.3e\n",
              manifest_["scheduler_cases"].size(), worst);
}

TEST_F(FluxParityTest, SeededNoiseMatchesTorchGenerator) {
  auto tensors = LoadSafetensorsFile(Root() + "/noise.safetensors", LoadOptions{});
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  for (const auto& n : manifest_["noise"]) {
    const std::string name = n["name"];
    SCOPED_TRACE(name);
    const std::vector<int64_t> shape = n["shape"];
    const at::ScalarType dtype = n["dtype"] == "bfloat16" ? at::kBFloat16 : at::kFloat;
    const at::Tensor noise = flux::SeededNoise(shape, n["seed"].get<uint64_t>(), dtype);
    EXPECT_TRUE(at::equal(noise, Get(*tensors, name)));
  }
}

}  // namespace
}  // namespace dgrid
