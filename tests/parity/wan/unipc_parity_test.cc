// dgrid's UniPC multistep scheduler (flow sigmas, flow prediction) against diffusers 0.42.1 on the
// cases make_unipc_cases.py writes: timesteps and sigmas equal, and every sample of a whole run
// equal bit for bit (both sides do the same float32 operations on the CPU).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/unipc_multistep.h"
#include "tests/parity/parity_util.h"

namespace dgrid {
namespace {

std::string Root() { return parity::DataDir("wan_unipc"); }

class UniPCParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto manifest = JsonConfig::FromFile(Root() + "/manifest.json");
    ASSERT_TRUE(manifest.ok()) << manifest.status()
                               << " (run tests/parity/wan/make_unipc_cases.py or ctest -L parity)";
    manifest_ = manifest->json();
    ASSERT_FALSE(manifest_["cases"].empty());
  }

  static UniPCMultistepScheduler Make(const nlohmann::json& c) {
    auto json = JsonConfig::FromText(c["config"].dump(), "unipc case");
    EXPECT_TRUE(json.ok()) << json.status();
    auto config = UniPCMultistepSchedulerConfig::FromJson(*json);
    EXPECT_TRUE(config.ok()) << config.status();
    UniPCMultistepScheduler scheduler(config.ok() ? *config : UniPCMultistepSchedulerConfig{});
    std::optional<double> mu;
    if (!c["mu"].is_null()) mu = c["mu"].get<double>();
    const absl::Status set = scheduler.SetTimesteps(c["steps"].get<int>(), mu);
    EXPECT_TRUE(set.ok()) << set;
    return scheduler;
  }

  nlohmann::json manifest_;
};

TEST_F(UniPCParityTest, TimestepsAndSigmasEqualDiffusers) {
  for (const auto& c : manifest_["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const UniPCMultistepScheduler scheduler = Make(c);
    const std::vector<int64_t> timesteps = c["timesteps"];
    EXPECT_EQ(scheduler.timesteps(), timesteps);
    const auto& sigmas = c["sigmas"];
    ASSERT_EQ(scheduler.sigmas().size(), sigmas.size());
    for (size_t i = 0; i < sigmas.size(); ++i) {
      // The reference is the float32 value printed as a double: equal means bit-identical.
      EXPECT_EQ(scheduler.sigmas()[i], static_cast<float>(sigmas[i].get<double>()))
          << "sigma " << i;
    }
  }
}

TEST_F(UniPCParityTest, SamplingRunEqualsDiffusers) {
  auto expected = LoadSafetensorsFile(Root() + "/trajectories.safetensors", LoadOptions{});
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::vector<int64_t> shape = manifest_["shape"];
  int compared = 0;
  double worst = 0.0;
  for (const auto& c : manifest_["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    UniPCMultistepScheduler scheduler = Make(c);
    const at::ScalarType dtype = c["dtype"] == "bfloat16" ? at::kBFloat16 : at::kFloat;
    at::Tensor sample = flux::SeededNoise(shape, 7, at::kFloat);
    for (int i = 0; i < scheduler.num_inference_steps(); ++i) {
      EXPECT_EQ(scheduler.step_index(), i);
      const at::Tensor out = flux::SeededNoise(shape, 1000 + i, dtype);
      auto next = scheduler.Step(out, sample);
      ASSERT_TRUE(next.ok()) << next.status();
      sample = *next;
      auto ref = expected->Take(name + "/" + std::to_string(i));
      ASSERT_TRUE(ref.ok()) << ref.status();
      ASSERT_EQ(sample.scalar_type(), at::kFloat);
      const double err = (sample.to(at::kDouble) - ref->to(at::kDouble)).abs().max().item<double>();
      worst = std::max(worst, err);
      EXPECT_TRUE(at::equal(sample, *ref)) << "step " << i << ": max difference " << err;
      ++compared;
    }
    // After the last step the run is over.
    EXPECT_EQ(scheduler.Step(sample, sample).status().code(), absl::StatusCode::kOutOfRange);
  }
  std::printf("unipc parity: %zu cases, %d samples compared, max difference %.3e\n",
              manifest_["cases"].size(), compared, worst);
}

TEST(UniPCConfigTest, RejectsWhatItCannotRun) {
  auto parse = [](const std::string& text) {
    auto json = JsonConfig::FromText(text, "scheduler_config.json");
    EXPECT_TRUE(json.ok());
    return UniPCMultistepSchedulerConfig::FromJson(*json).status();
  };
  const std::string flow = R"("prediction_type": "flow_prediction", "use_flow_sigmas": true)";
  EXPECT_TRUE(parse("{" + flow + "}").ok());
  // diffusers' defaults are the epsilon VP schedule: not a flow model.
  EXPECT_EQ(parse("{}").code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(parse(R"({"prediction_type": "flow_prediction"})").code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(parse("{" + flow + R"(, "use_karras_sigmas": true})").code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(parse("{" + flow + R"(, "solver_p": {}})").code(), absl::StatusCode::kUnimplemented);
  for (const std::string bad :
       {R"("solver_order": 4)", R"("solver_type": "rk4")", R"("flow_shift": 0)",
        R"("final_sigmas_type": "last")", R"("predict_x0": false)", R"("shift_terminal": 1.0)",
        R"("time_shift_type": "cubic")", R"("_class_name": "DDIMScheduler")"}) {
    const absl::Status s = parse("{" + flow + ", " + bad + "}");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // The DPM-Solver names map to bh2, as in diffusers.
  auto json = JsonConfig::FromText("{" + flow + R"(, "solver_type": "midpoint"})", "c");
  ASSERT_TRUE(json.ok());
  auto config = UniPCMultistepSchedulerConfig::FromJson(*json);
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->bh2);
}

TEST(UniPCSchedulerTest, BadCallsGiveStatuses) {
  UniPCMultistepSchedulerConfig config;
  const at::Tensor x = at::zeros({1, 2, 3});
  UniPCMultistepScheduler scheduler(config);
  EXPECT_EQ(scheduler.Step(x, x).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(scheduler.SetTimesteps(0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(scheduler.SetTimesteps(2).ok());
  EXPECT_EQ(scheduler.Step(at::zeros({1, 2, 4}), x).status().code(),
            absl::StatusCode::kInvalidArgument);
  config.use_dynamic_shifting = true;
  UniPCMultistepScheduler dynamic(config);
  EXPECT_EQ(dynamic.SetTimesteps(4).code(), absl::StatusCode::kInvalidArgument);  // no mu
  config.use_dynamic_shifting = false;
  config.shift_terminal = 0.1;
  UniPCMultistepScheduler terminal(config);
  EXPECT_EQ(terminal.SetTimesteps(1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(terminal.SetTimesteps(2).ok());
}

}  // namespace
}  // namespace dgrid
