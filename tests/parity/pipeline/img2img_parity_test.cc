// Image-to-image against diffusers' FluxImg2ImgPipeline (make_img2img_cases.py): the tiny random
// pipeline and the embedded default model, several input images (sizes, JPEG, gray, RGBA) and
// strengths. Checked: the preprocessed image (PIL's Lanczos resize and VaeImageProcessor's
// normalisation) bit for bit, the VAE-encoded image latents within float32 tolerance, and the
// final image within 1/255 everywhere. Also the inputs the pipeline must refuse.
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/local_pipeline.h"
#include "common/files.h"
#include "common/input_image.h"
#include "services/decoder/latent_decoder.h"
#include "tests/parity/parity_util.h"

namespace dgrid {
namespace {

using ::testing::HasSubstr;

std::string CaseDir() { return parity::DataDir("img2img"); }

at::Tensor ReadF32(const std::string& path, at::IntArrayRef shape) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return at::Tensor();
  at::Tensor t = at::empty(shape, at::kFloat);
  EXPECT_EQ(static_cast<size_t>(t.numel()) * 4, bytes->size()) << path;
  if (static_cast<size_t>(t.numel()) * 4 != bytes->size()) return at::Tensor();
  std::memcpy(t.data_ptr(), bytes->data(), bytes->size());
  return t;
}

class Img2ImgParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> text = ReadFileToString(CaseDir() + "/cases.json");
    if (!text.ok()) return;
    manifest_ = new nlohmann::json(nlohmann::json::parse(*text));
    pipelines_ = new std::map<std::string, std::unique_ptr<LocalPipeline>>();
    decoders_ = new std::map<std::string, std::unique_ptr<decoder::DecoderEngine>>();
    // float32 on the CPU, as the reference ran (the default model is stored in float16).
    LoadOptions load;
    load.floating_dtype = "float32";
    for (const auto& c : (*manifest_)["cases"]) {
      const std::string model = c["model"];
      if (pipelines_->count(model)) continue;
      auto pipeline = LocalPipeline::Create(model, load);
      ASSERT_TRUE(pipeline.ok()) << pipeline.status();
      (*pipelines_)[model] = *std::move(pipeline);
      auto engine = decoder::DecoderEngine::Create({model, load, 1, 1});
      ASSERT_TRUE(engine.ok()) << engine.status();
      (*decoders_)[model] = *std::move(engine);
    }
  }
  static void TearDownTestSuite() {
    delete pipelines_;
    delete decoders_;
    delete manifest_;
  }
  void SetUp() override {
    ASSERT_NE(manifest_, nullptr) << "run make_img2img_cases.py first (ctest fixture)";
  }
  static GenerateParams Params(const nlohmann::json& c) {
    GenerateParams p;
    p.request_id = c["name"];
    p.prompt = c["prompt"];
    if (c.contains("negative_prompt")) p.negative_prompt = c["negative_prompt"].get<std::string>();
    p.width = c["width"];
    p.height = c["height"];
    p.num_inference_steps = c["steps"];
    p.guidance_scale = c["guidance_scale"].get<double>();
    p.true_cfg_scale = c["true_cfg_scale"];
    p.seed = c["seed"].get<uint64_t>();
    p.max_sequence_length = c["max_sequence_length"];
    p.strength = c["strength"].get<double>();
    absl::StatusOr<std::string> image = ReadFileToString(c["image"]);
    EXPECT_TRUE(image.ok()) << image.status();
    p.image = image.value_or("");
    return p;
  }
  static inline nlohmann::json* manifest_ = nullptr;
  static inline std::map<std::string, std::unique_ptr<LocalPipeline>>* pipelines_ = nullptr;
  static inline std::map<std::string, std::unique_ptr<decoder::DecoderEngine>>* decoders_ = nullptr;
};

TEST_F(Img2ImgParity, PreprocessingMatchesVaeImageProcessorExactly) {
  int compared = 0;
  for (const auto& c : (*manifest_)["cases"]) {
    const std::string name = c["name"];
    const int w = c["width"], h = c["height"];
    auto bytes = ReadFileToString(c["image"]);
    ASSERT_TRUE(bytes.ok());
    auto rgb = DecodeInputImage(*bytes);
    ASSERT_TRUE(rgb.ok()) << name << ": " << rgb.status();
    auto pre = decoder::PreprocessImageForVae(*rgb, w, h);
    ASSERT_TRUE(pre.ok()) << name << ": " << pre.status();
    const at::Tensor want = ReadF32(CaseDir() + "/" + name + ".pre.f32", {1, 3, h, w});
    ASSERT_TRUE(want.defined());
    EXPECT_TRUE(at::equal(*pre, want))
        << name << ": max |diff| " << (*pre - want).abs().max().item<float>() * 255 / 2
        << " levels";
    ++compared;
  }
  EXPECT_GE(compared, 13);
}

TEST_F(Img2ImgParity, VaeEncodeLatentsMatchDiffusers) {
  for (const auto& c : (*manifest_)["cases"]) {
    const std::string name = c["name"];
    decoder::EncodeImageInput input;
    input.request_id = name;
    input.image = *ReadFileToString(c["image"]);
    input.width = c["width"];
    input.height = c["height"];
    input.seed = c["seed"];
    auto latents = decoders_->at(c["model"])->EncodeImage(input, CancellationToken());
    ASSERT_TRUE(latents.ok()) << name << ": " << latents.status();
    const at::Tensor want = ReadF32(CaseDir() + "/" + name + ".latents.f32",
                                    c["latents_shape"].get<std::vector<int64_t>>());
    ASSERT_TRUE(want.defined());
    ASSERT_EQ(latents->sizes(), want.sizes()) << name;
    EXPECT_TRUE(at::allclose(latents->to(at::kFloat), want, /*rtol=*/1e-4, /*atol=*/1e-5))
        << name << ": max |diff| " << (latents->to(at::kFloat) - want).abs().max().item<float>();
  }
}

TEST_F(Img2ImgParity, ImagesMatchFluxImg2ImgPipelineWithinOneLevel) {
  int compared = 0;
  for (const auto& c : (*manifest_)["cases"]) {
    const std::string name = c["name"];
    GenerateParams params = Params(c);
    params.format = decoder::ImageFormat::kRawRgb8;
    auto out = pipelines_->at(c["model"])->Generate(params);
    ASSERT_TRUE(out.ok()) << name << ": " << out.status();
    ASSERT_EQ(out->image.width, c["width"].get<int>()) << name;
    ASSERT_EQ(out->image.height, c["height"].get<int>()) << name;
    auto expected = ReadFileToString(CaseDir() + "/" + name + ".rgb");
    ASSERT_TRUE(expected.ok()) << expected.status();
    ASSERT_EQ(out->image.data.size(), expected->size()) << name;
    const parity::ByteDiff diff = parity::CompareBytes(out->image.data, *expected);
    EXPECT_LE(diff.max, 1) << name;
    std::printf("%s: %dx%d strength %.2f, max |diff| = %d, %lld of %zu values differ\n",
                name.c_str(), out->image.width, out->image.height, c["strength"].get<double>(),
                diff.max, static_cast<long long>(diff.differing), expected->size());
    ++compared;
  }
  EXPECT_GE(compared, 13);  // 10 tiny-model cases, 3 default-model cases
}

TEST_F(Img2ImgParity, StrengthChangesTheImageAndTheSeedIsRepeatable) {
  GenerateParams params = Params((*manifest_)["cases"][0]);
  LocalPipeline& pipeline = *pipelines_->at((*manifest_)["cases"][0]["model"]);
  params.format = decoder::ImageFormat::kRawRgb8;
  auto a = pipeline.Generate(params);
  auto b = pipeline.Generate(params);
  params.strength = 0.9;
  auto c = pipeline.Generate(params);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->image.data, b->image.data);
  EXPECT_NE(a->image.data, c->image.data);
}

TEST_F(Img2ImgParity, BadInputsAreInvalidArgumentNamingTheField) {
  const nlohmann::json& c = (*manifest_)["cases"][0];
  LocalPipeline& pipeline = *pipelines_->at(c["model"]);
  struct Bad {
    std::string what;
    std::function<void(GenerateParams&)> edit;
    std::string field;
  };
  const std::vector<Bad> bad = {
      {"not an image", [](GenerateParams& p) { p.image = "hello, world"; }, "image:"},
      {"truncated PNG", [](GenerateParams& p) { p.image.resize(p.image.size() / 2); }, "image:"},
      {"PNG signature only", [](GenerateParams& p) { p.image.resize(8); }, "image:"},
      {"truncated JPEG",
       [](GenerateParams& p) {
         p.image = *ReadFileToString(CaseDir() + "/rgb40x72.jpg");
         p.image.resize(p.image.size() / 2);
       },
       "image:"},
      {"strength above 1", [](GenerateParams& p) { p.strength = 1.5; }, "strength"},
      {"strength below 0", [](GenerateParams& p) { p.strength = -0.1; }, "strength"},
      {"strength 0", [](GenerateParams& p) { p.strength = 0.0; }, "strength"},
      {"strength without an image", [](GenerateParams& p) { p.image.clear(); }, "strength"},
  };
  for (const Bad& b : bad) {
    GenerateParams params = Params(c);
    b.edit(params);
    auto r = pipeline.Generate(params);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << b.what << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(b.field)) << b.what;
  }
}

TEST(InputImage, LanczosResizeKeepsAConstantImageAndSameSizeIsACopy) {
  RgbImage flat{17, 9, std::vector<uint8_t>(17 * 9 * 3, 77)};
  for (const auto& [w, h] : {std::pair<int, int>{5, 3}, {40, 31}, {17, 30}, {3, 9}}) {
    auto r = ResizeLanczos(flat, w, h);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->width, w);
    EXPECT_EQ(r->height, h);
    EXPECT_EQ(r->pixels, std::vector<uint8_t>(w * h * 3, 77));
  }
  auto same = ResizeLanczos(flat, 17, 9);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->pixels, flat.pixels);
  EXPECT_EQ(ResizeLanczos(flat, 0, 4).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dgrid
