// Model offload in the single-process pipeline (--text-encoder-device offload, --vae-device
// offload; common/model_offload.h; and the DiT's --dit-offload model, services/denoiser/
// dit_placement.h) on the committed default model (models/dgrid-shapes, FLUX, float32 on the CPU,
// where the "device" copies are CPU tensors of their own): the pictures equal the plain
// placement's byte for byte (text-to-image, true CFG, image-to-image); the residency seam shows
// each component coming in just before its use and leaving right after, one at a time, and none
// of the others on the device while the DiT denoises (the DiT, offloaded too, is there for every
// step and only then). Nothing here depends on timing.
#include <cstdlib>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cli/local_pipeline.h"
#include "common/model_offload.h"
#include "tests/unit/default_model.h"

namespace dgrid {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

std::string ModelDir() { return testing::DefaultModelDir(); }

LocalPipelineLoad CpuLoad(bool offload_text, bool offload_vae) {
  LoadOptions load;
  load.device = "cpu";
  load.floating_dtype = "float32";
  LocalPipelineLoad stages{load, load, load};
  stages.offload_text_encoders = offload_text;
  stages.offload_vae = offload_vae;
  return stages;
}

GenerateParams Params() {
  GenerateParams params;
  params.prompt = "a red circle on a blue background";
  params.width = 64;
  params.height = 64;
  params.num_inference_steps = 3;
  params.seed = 11;
  return params;
}

// Records "<component> in" / "<component> out" from every residency of `pipeline`.
class ResidencyLog {
 public:
  explicit ResidencyLog(const LocalPipeline& pipeline) : pipeline_(pipeline) {
    for (const ModelResidency* r : pipeline.residencies()) {
      r->SetObserverForTesting([this](absl::string_view name, bool on_device) {
        absl::MutexLock lock(&mu_);
        events_.push_back(absl::StrCat(name, on_device ? " in" : " out"));
      });
    }
  }
  ~ResidencyLog() {
    for (const ModelResidency* r : pipeline_.residencies()) r->SetObserverForTesting(nullptr);
  }
  std::vector<std::string> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(events_);
  }

 private:
  const LocalPipeline& pipeline_;
  absl::Mutex mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(mu_);
};

class LocalPipelineOffloadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto plain = LocalPipeline::Create(ModelDir(), CpuLoad(false, false));
    ASSERT_TRUE(plain.ok()) << plain.status();
    plain_ = plain->release();
    auto offloaded = LocalPipeline::Create(ModelDir(), CpuLoad(true, true));
    ASSERT_TRUE(offloaded.ok()) << offloaded.status();
    offloaded_ = offloaded->release();
  }
  static void TearDownTestSuite() {
    delete plain_;
    delete offloaded_;
  }
  static LocalPipeline* plain_;
  static LocalPipeline* offloaded_;
};
LocalPipeline* LocalPipelineOffloadTest::plain_ = nullptr;
LocalPipeline* LocalPipelineOffloadTest::offloaded_ = nullptr;

TEST_F(LocalPipelineOffloadTest, OnlyTheOffloadedComponentsHaveAResidency) {
  EXPECT_TRUE(plain_->residencies().empty());
  std::vector<std::string> names;
  for (const ModelResidency* r : offloaded_->residencies()) {
    names.push_back(r->name());
    EXPECT_TRUE(r->device().is_cpu());
    EXPECT_GT(r->host_bytes(), 0);
    EXPECT_FALSE(r->on_device());
  }
  EXPECT_THAT(names, ElementsAre("text_encoder", "text_encoder_2", "vae"));
  auto text_only = LocalPipeline::Create(ModelDir(), CpuLoad(true, false));
  ASSERT_TRUE(text_only.ok()) << text_only.status();
  EXPECT_EQ((*text_only)->residencies().size(), 2u);
}

// Generates `params` with both pipelines and expects the same picture; returns the offloaded run's
// residency events and, for each denoising step, whether any offloaded component was on the device.
struct OffloadedRun {
  std::vector<std::string> events;
  std::vector<bool> on_device_while_denoising;
};
OffloadedRun GenerateBoth(const LocalPipeline& plain, const LocalPipeline& offloaded,
                          const GenerateParams& params) {
  OffloadedRun run;
  absl::StatusOr<GenerateOutput> expected = plain.Generate(params);
  EXPECT_TRUE(expected.ok()) << expected.status();
  ResidencyLog log(offloaded);
  absl::StatusOr<GenerateOutput> got =
      offloaded.Generate(params, [&](int /*step*/, int /*total*/, double /*seconds*/) {
        bool any = false;
        for (const ModelResidency* r : offloaded.residencies()) any = any || r->on_device();
        run.on_device_while_denoising.push_back(any);
      });
  EXPECT_TRUE(got.ok()) << got.status();
  if (expected.ok() && got.ok()) EXPECT_EQ(got->image.data, expected->image.data);
  run.events = log.Take();
  for (const ModelResidency* r : offloaded.residencies()) {
    EXPECT_FALSE(r->on_device()) << r->name();
    EXPECT_EQ(r->moves_in(), r->moves_out()) << r->name();
  }
  return run;
}

TEST_F(LocalPipelineOffloadTest, TextToImageIsBitwiseThePlainOneAndComponentsTakeTurns) {
  const OffloadedRun run = GenerateBoth(*plain_, *offloaded_, Params());
  EXPECT_THAT(run.events, ElementsAre("text_encoder in", "text_encoder out", "text_encoder_2 in",
                                      "text_encoder_2 out", "vae in", "vae out"));
  EXPECT_THAT(run.on_device_while_denoising, ElementsAreArray(std::vector<bool>(3, false)));
}

TEST_F(LocalPipelineOffloadTest, TrueCfgEncodesBothPromptsEachWithItsOwnTurns) {
  GenerateParams params = Params();
  params.negative_prompt = "green";
  params.true_cfg_scale = 2.0;
  const OffloadedRun run = GenerateBoth(*plain_, *offloaded_, params);
  EXPECT_THAT(run.events,
              ElementsAre("text_encoder in", "text_encoder out", "text_encoder_2 in",
                          "text_encoder_2 out", "text_encoder in", "text_encoder out",
                          "text_encoder_2 in", "text_encoder_2 out", "vae in", "vae out"));
  EXPECT_THAT(run.on_device_while_denoising, ElementsAreArray(std::vector<bool>(3, false)));
}

TEST_F(LocalPipelineOffloadTest, ImageToImageEncodesWithTheVaeInAndOutFirst) {
  absl::StatusOr<GenerateOutput> input = plain_->Generate(Params());
  ASSERT_TRUE(input.ok()) << input.status();
  GenerateParams params = Params();
  params.image = input->image.data;  // a PNG
  params.strength = 0.7;
  params.seed = 12;
  const OffloadedRun run = GenerateBoth(*plain_, *offloaded_, params);
  EXPECT_THAT(run.events,
              ElementsAre("vae in", "vae out", "text_encoder in", "text_encoder out",
                          "text_encoder_2 in", "text_encoder_2 out", "vae in", "vae out"));
  EXPECT_FALSE(run.on_device_while_denoising.empty());
  EXPECT_THAT(run.on_device_while_denoising, ::testing::Each(false));
}

TEST_F(LocalPipelineOffloadTest, TheOffloadedDitTakesItsTurnBetweenTheEncodersAndTheVae) {
  LocalPipelineLoad stages = CpuLoad(true, true);
  stages.denoiser.dit_offload.model = true;
  auto all = LocalPipeline::Create(ModelDir(), stages);
  ASSERT_TRUE(all.ok()) << all.status();
  const LocalPipeline& offloaded = **all;
  std::vector<std::string> names;
  for (const ModelResidency* r : offloaded.residencies()) names.push_back(r->name());
  EXPECT_THAT(names, ElementsAre("text_encoder", "text_encoder_2", "transformer", "vae"));
  for (const GenerateParams& params : {Params(), [] {
                                         GenerateParams cfg = Params();
                                         cfg.negative_prompt = "green";
                                         cfg.true_cfg_scale = 2.0;
                                         return cfg;
                                       }()}) {
    absl::StatusOr<GenerateOutput> expected = plain_->Generate(params);
    ASSERT_TRUE(expected.ok()) << expected.status();
    ResidencyLog log(offloaded);
    std::vector<std::string> on_device_while_denoising;  // per step, the components there
    absl::StatusOr<GenerateOutput> got = offloaded.Generate(params, [&](int, int, double) {
      std::string there;
      for (const ModelResidency* r : offloaded.residencies()) {
        if (r->on_device()) absl::StrAppend(&there, there.empty() ? "" : " ", r->name());
      }
      on_device_while_denoising.push_back(there);
    });
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->image.data, expected->image.data);
    const std::vector<std::string> encoders = {"text_encoder in", "text_encoder out",
                                               "text_encoder_2 in", "text_encoder_2 out"};
    std::vector<std::string> want = encoders;
    if (params.negative_prompt) want.insert(want.end(), encoders.begin(), encoders.end());
    for (const char* e : {"transformer in", "transformer out", "vae in", "vae out"}) {
      want.push_back(e);
    }
    EXPECT_THAT(log.Take(), ElementsAreArray(want));
    EXPECT_THAT(on_device_while_denoising,
                ElementsAreArray(std::vector<std::string>(3, "transformer")));
    for (const ModelResidency* r : offloaded.residencies()) {
      EXPECT_FALSE(r->on_device()) << r->name();
      EXPECT_EQ(r->moves_in(), r->moves_out()) << r->name();
    }
  }
}

}  // namespace
}  // namespace dgrid
