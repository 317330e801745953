// The single-process pipeline against diffusers' FluxPipeline on a tiny random FLUX pipeline
// (make_pipeline_cases.py): same prompt, seed, size and options -> images within 1/255 everywhere.
// Also the bad inputs the pipeline must refuse with a clear status.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/local_pipeline.h"
#include "common/files.h"
#include "tests/parity/parity_util.h"

namespace dgrid {
namespace {

using ::testing::HasSubstr;

std::string ParityDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : ".") + "/parity/pipeline";
}

nlohmann::json Manifest() {
  absl::StatusOr<std::string> text = ReadFileToString(ParityDir() + "/cases.json");
  if (!text.ok()) return nlohmann::json();
  return nlohmann::json::parse(*text);
}

class PipelineParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    manifest_ = new nlohmann::json(Manifest());
    if (manifest_->is_null()) return;
    auto pipeline = LocalPipeline::Create((*manifest_)["model"].get<std::string>(), LoadOptions{});
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    pipeline_ = pipeline->release();
  }
  static void TearDownTestSuite() {
    delete pipeline_;
    delete manifest_;
  }
  void SetUp() override {
    ASSERT_FALSE(manifest_->is_null()) << "run make_pipeline_cases.py first (ctest fixture)";
  }
  static GenerateParams Params(const nlohmann::json& c) {
    GenerateParams p;
    p.request_id = c["name"];
    p.prompt = c["prompt"];
    // As the case file gave it to diffusers: absent, or given (an empty one too).
    if (c.value("negative_given", false) || !c["negative_prompt"].get<std::string>().empty()) {
      p.negative_prompt = c["negative_prompt"].get<std::string>();
    }
    p.width = c["width"];
    p.height = c["height"];
    p.num_inference_steps = c["steps"];
    p.guidance_scale = c["guidance_scale"].get<double>();
    p.true_cfg_scale = c["true_cfg_scale"];
    p.seed = c["seed"].get<uint64_t>();
    p.max_sequence_length = c["max_sequence_length"];
    return p;
  }
  static inline nlohmann::json* manifest_ = nullptr;
  static inline LocalPipeline* pipeline_ = nullptr;
};

TEST_F(PipelineParity, ImagesMatchFluxPipelineWithinOneLevel) {
  int compared = 0;
  for (const auto& c : (*manifest_)["cases"]) {
    const std::string name = c["name"];
    GenerateParams params = Params(c);
    params.format = decoder::ImageFormat::kRawRgb8;
    auto out = pipeline_->Generate(params);
    ASSERT_TRUE(out.ok()) << name << ": " << out.status();
    ASSERT_EQ(out->image.width, c["width"].get<int>()) << name;
    ASSERT_EQ(out->image.height, c["height"].get<int>()) << name;
    auto expected = ReadFileToString(ParityDir() + "/" + name + ".rgb");
    ASSERT_TRUE(expected.ok()) << expected.status();
    ASSERT_EQ(out->image.data.size(), expected->size()) << name;
    const parity::ByteDiff diff = parity::CompareBytes(out->image.data, *expected);
    EXPECT_LE(diff.max, 1) << name;
    std::printf("%s: %dx%d max |diff| = %d, %lld of %zu values differ\n", name.c_str(),
                out->image.width, out->image.height, diff.max,
                static_cast<long long>(diff.differing), expected->size());
    ++compared;
  }
  EXPECT_GE(compared, 8);  // 3 prompts x 2 sizes, true CFG, another guidance
}

// The text encoders or the VAE in bfloat16 beside a float32 transformer (LocalPipelineLoad, as
// --text-encoder-precision / --vae-precision give it): against the reference that casts the
// embeddings to the transformer's dtype and the latents to the VAE's (make_pipeline_cases.py).
TEST_F(PipelineParity, ComponentPrecisionsMatchTheReferenceWithinOneLevel) {
  const std::string model = (*manifest_)["model"];
  int compared = 0;
  for (const auto& c : (*manifest_)["component_cases"]) {
    const std::string name = c["name"];
    LocalPipelineLoad load;
    if (c.contains("text_encoder_precision")) load.encoder.floating_dtype = "bfloat16";
    if (c.contains("vae_precision")) load.decoder.floating_dtype = "bfloat16";
    auto pipeline = LocalPipeline::Create(model, load);
    ASSERT_TRUE(pipeline.ok()) << name << ": " << pipeline.status();
    GenerateParams params = Params(c);
    params.format = decoder::ImageFormat::kRawRgb8;
    auto out = (*pipeline)->Generate(params);
    ASSERT_TRUE(out.ok()) << name << ": " << out.status();
    auto expected = ReadFileToString(ParityDir() + "/" + name + ".rgb");
    ASSERT_TRUE(expected.ok()) << expected.status();
    ASSERT_EQ(out->image.data.size(), expected->size()) << name;
    const parity::ByteDiff diff = parity::CompareBytes(out->image.data, *expected);
    EXPECT_LE(diff.max, 1) << name;
    // The component really ran in bfloat16: the image is not the all-float32 one.
    auto plain = pipeline_->Generate(params);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_NE(out->image.data, plain->image.data) << name;
    std::printf("%s: max |diff| = %d, %lld of %zu values differ\n", name.c_str(), diff.max,
                static_cast<long long>(diff.differing), expected->size());
    ++compared;
  }
  EXPECT_EQ(compared, 2);
}

TEST_F(PipelineParity, PngOutputDecodesToTheSamePixels) {
  const auto& c = (*manifest_)["cases"][0];
  GenerateParams params = Params(c);
  auto png = pipeline_->Generate(params);
  ASSERT_TRUE(png.ok()) << png.status();
  params.format = decoder::ImageFormat::kRawRgb8;
  auto raw = pipeline_->Generate(params);
  ASSERT_TRUE(raw.ok()) << raw.status();
  auto decoded = decoder::DecodePng(png->image.data);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(std::string(decoded->pixels.begin(), decoded->pixels.end()), raw->image.data);
  EXPECT_EQ(png->seed, c["seed"].get<uint64_t>());
}

TEST_F(PipelineParity, SameSeedSameImageDifferentSeedDifferentImage) {
  GenerateParams params = Params((*manifest_)["cases"][0]);
  params.format = decoder::ImageFormat::kRawRgb8;
  auto a = pipeline_->Generate(params);
  auto b = pipeline_->Generate(params);
  params.seed = *params.seed + 1;
  auto c = pipeline_->Generate(params);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->image.data, b->image.data);
  EXPECT_NE(a->image.data, c->image.data);
}

TEST_F(PipelineParity, BadRequestsGiveClearErrors) {
  GenerateParams params = Params((*manifest_)["cases"][0]);
  params.width = 100;
  auto r = pipeline_->Generate(params);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("width = 100"));

  params = Params((*manifest_)["cases"][0]);
  params.height = 4096;  // over the model's max_height
  r = pipeline_->Generate(params);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("height = 4096"));

  params = Params((*manifest_)["cases"][0]);
  params.prompt = "";
  r = pipeline_->Generate(params);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("prompt"));

  params = Params((*manifest_)["cases"][0]);
  params.prompt = std::string("\xff\xfe bad", 6);
  r = pipeline_->Generate(params);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("UTF-8"));
}

TEST_F(PipelineParity, HundredThousandCharacterPromptIsTruncatedNotRefused) {
  GenerateParams params = Params((*manifest_)["cases"][0]);
  params.prompt.clear();
  while (params.prompt.size() < 100000) params.prompt += "a photo of a cat ";
  params.format = decoder::ImageFormat::kRawRgb8;
  auto r = pipeline_->Generate(params);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->image.data.size(), static_cast<size_t>(64 * 64 * 3));
}

TEST(PipelineLoad, MissingTokenizerFileIsNotFoundNamingIt) {
  const nlohmann::json manifest = Manifest();
  ASSERT_FALSE(manifest.is_null());
  const std::string model = manifest["model"];
  // A copy of the model without tokenizer_2's files.
  const std::string copy = std::string(::testing::TempDir()) + "/dgrid_broken_model";
  ASSERT_EQ(std::system(("rm -rf " + copy + " && cp -r " + model + " " + copy + " && rm -f " +
                         copy + "/tokenizer_2/spiece.model " + copy + "/tokenizer_2/tokenizer.json")
                            .c_str()),
            0);
  auto pipeline = LocalPipeline::Create(copy, LoadOptions{});
  ASSERT_FALSE(pipeline.ok());
  EXPECT_EQ(pipeline.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(pipeline.status().message()), HasSubstr("tokenizer_2"));
  EXPECT_EQ(std::system(("rm -rf " + copy).c_str()), 0);
}

TEST(PipelineLoad, MissingModelFolderIsNotFound) {
  auto pipeline = LocalPipeline::Create("/no/such/model", LoadOptions{});
  EXPECT_EQ(pipeline.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(pipeline.status().message()), HasSubstr("/no/such/model"));
}

}  // namespace
}  // namespace dgrid
