// Validation table: each malformed GenerateRequest must be rejected with the right code and a
// message that names the offending field.
#include "orchestrator/api/request_validation.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace dgrid::orchestrator {
namespace {

using dgrid::v1::GenerateRequest;

std::vector<dgrid::v1::ModelInfo> Models() {
  dgrid::v1::ModelInfo m;
  m.set_name("tiny");
  m.set_default_width(64);
  m.set_default_height(48);
  m.set_default_steps(4);
  m.set_max_width(256);
  m.set_max_height(128);
  return {m};
}

GenerateRequest Valid() {
  GenerateRequest r;
  r.set_prompt("a cat");
  r.set_model("tiny");
  return r;
}

struct Case {
  std::string name;
  std::function<void(GenerateRequest*)> mutate;
  absl::StatusCode code;
  std::string field;
};

TEST(RequestValidationTest, RejectsMalformedRequestsNamingTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {"width not multiple of 16", [](auto* r) { r->set_width(100); }, kInvalid, "width"},
      {"height not multiple of 16", [](auto* r) { r->set_height(72); }, kInvalid, "height"},
      {"width below 16", [](auto* r) { r->set_width(8); }, kInvalid, "width"},
      {"negative width", [](auto* r) { r->set_width(-16); }, kInvalid, "width"},
      {"height below 16", [](auto* r) { r->set_height(-32); }, kInvalid, "height"},
      {"width above model max", [](auto* r) { r->set_width(272); }, kInvalid, "width"},
      {"height above model max", [](auto* r) { r->set_height(144); }, kInvalid, "height"},
      {"steps above 1000", [](auto* r) { r->set_num_inference_steps(1001); }, kInvalid,
       "num_inference_steps"},
      {"negative steps", [](auto* r) { r->set_num_inference_steps(-1); }, kInvalid,
       "num_inference_steps"},
      {"guidance NaN", [=](auto* r) { r->set_guidance_scale(nan); }, kInvalid, "guidance_scale"},
      {"guidance +inf", [=](auto* r) { r->set_guidance_scale(inf); }, kInvalid, "guidance_scale"},
      {"guidance -inf", [=](auto* r) { r->set_guidance_scale(-inf); }, kInvalid, "guidance_scale"},
      {"guidance negative", [](auto* r) { r->set_guidance_scale(-0.5f); }, kInvalid,
       "guidance_scale"},
      {"guidance above 100", [](auto* r) { r->set_guidance_scale(100.5f); }, kInvalid,
       "guidance_scale"},
      {"true_cfg NaN", [=](auto* r) { r->set_true_cfg_scale(nan); }, kInvalid, "true_cfg_scale"},
      {"true_cfg below 1", [](auto* r) { r->set_true_cfg_scale(0.5f); }, kInvalid,
       "true_cfg_scale"},
      {"true_cfg inf", [=](auto* r) { r->set_true_cfg_scale(inf); }, kInvalid, "true_cfg_scale"},
      {"unknown model", [](auto* r) { r->set_model("sdxl"); }, absl::StatusCode::kNotFound,
       "model"},
      {"empty prompt", [](auto* r) { r->clear_prompt(); }, kInvalid, "prompt"},
      {"prompt too long", [](auto* r) { r->set_prompt(std::string(16385, 'a')); }, kInvalid,
       "prompt"},
      {"negative prompt too long", [](auto* r) { r->set_negative_prompt(std::string(16385, 'b')); },
       kInvalid, "negative_prompt"},
      {"bad output_format",
       [](auto* r) { r->set_output_format(static_cast<dgrid::v1::OutputFormat>(7)); }, kInvalid,
       "output_format"},
      {"negative output_format",
       [](auto* r) { r->set_output_format(static_cast<dgrid::v1::OutputFormat>(-1)); }, kInvalid,
       "output_format"},
      {"bad priority", [](auto* r) { r->set_priority(static_cast<dgrid::v1::Priority>(9)); },
       kInvalid, "priority"},
      {"request_id with space", [](auto* r) { r->set_request_id("a b"); }, kInvalid, "request_id"},
      {"request_id with slash", [](auto* r) { r->set_request_id("x/y"); }, kInvalid, "request_id"},
      {"request_id non-ASCII", [](auto* r) { r->set_request_id("caf\xc3\xa9"); }, kInvalid,
       "request_id"},
      {"request_id too long", [](auto* r) { r->set_request_id(std::string(65, 'a')); }, kInvalid,
       "request_id"},
      {"negative deadline", [](auto* r) { r->set_deadline_ms(-1); }, kInvalid, "deadline_ms"},
      {"max_sequence_length above 512", [](auto* r) { r->set_max_sequence_length(513); }, kInvalid,
       "max_sequence_length"},
      {"negative max_sequence_length", [](auto* r) { r->set_max_sequence_length(-4); }, kInvalid,
       "max_sequence_length"},
      // An image model (FLUX's family) makes one frame.
      {"frames from an image model", [](auto* r) { r->set_num_frames(81); }, kInvalid,
       "num_frames"},
      {"negative num_frames", [](auto* r) { r->set_num_frames(-1); }, kInvalid, "num_frames"},
      {"fps for an image model", [](auto* r) { r->set_fps(16); }, kInvalid, "fps"},
      {"MP4 from an image model",
       [](auto* r) { r->set_output_format(dgrid::v1::OUTPUT_FORMAT_MP4); }, kInvalid,
       "output_format"},
  };
  ASSERT_GE(cases.size(), 25u);
  for (const Case& c : cases) {
    GenerateRequest r = Valid();
    c.mutate(&r);
    absl::StatusOr<dgrid::v1::ModelInfo> result = ValidateGenerateRequest(r, Models(), "");
    ASSERT_FALSE(result.ok()) << c.name;
    EXPECT_EQ(result.status().code(), c.code) << c.name << ": " << result.status();
    // The message starts with the field's name ("width: ...").
    EXPECT_EQ(result.status().message().substr(0, c.field.size() + 1), c.field + ":")
        << c.name << ": " << result.status();
  }
}

TEST(RequestValidationTest, AcceptsBoundaryValues) {
  GenerateRequest r = Valid();
  r.set_width(256);
  r.set_height(16);
  r.set_num_inference_steps(1000);
  r.set_guidance_scale(0.0f);
  r.set_true_cfg_scale(1.0f);
  r.set_request_id(std::string(64, 'Z'));
  r.set_prompt(std::string(16384, 'p'));
  r.set_negative_prompt(std::string(16384, 'n'));
  r.set_max_sequence_length(512);
  r.set_deadline_ms(0);
  EXPECT_TRUE(ValidateGenerateRequest(r, Models(), "").ok());
  r.set_request_id("a.B_c-9");
  EXPECT_TRUE(ValidateGenerateRequest(r, Models(), "").ok());
  r.set_num_frames(1);  // an image is one frame
  EXPECT_TRUE(ValidateGenerateRequest(r, Models(), "").ok());
}

// A video model as its workers would describe it (Wan-like: 81 frames by default, num_frames - 1 a
// multiple of 4, 16 fps).
dgrid::v1::ModelInfo VideoModel() {
  dgrid::v1::ModelInfo m = Models()[0];
  m.set_name("clip");
  m.set_max_num_frames(121);
  m.set_default_num_frames(81);
  m.set_frame_step(4);
  m.set_default_fps(16);
  return m;
}

TEST(RequestValidationTest, VideoModelsCheckFramesAndFormat) {
  const std::vector<dgrid::v1::ModelInfo> models = {VideoModel()};
  auto check = [&](const std::function<void(GenerateRequest*)>& mutate) {
    GenerateRequest r = Valid();
    r.set_model("clip");
    mutate(&r);
    return ValidateGenerateRequest(r, models, "").status();
  };
  EXPECT_TRUE(check([](auto*) {}).ok());
  EXPECT_TRUE(check([](auto* r) { r->set_num_frames(81); }).ok());
  EXPECT_TRUE(check([](auto* r) { r->set_num_frames(1); }).ok());
  EXPECT_TRUE(check([](auto* r) { r->set_num_frames(121); }).ok());
  EXPECT_TRUE(check([](auto* r) { r->set_fps(240); }).ok());
  EXPECT_TRUE(check([](auto* r) { r->set_output_format(dgrid::v1::OUTPUT_FORMAT_RAW_RGB8); }).ok());
  // One frame may be a PNG; more may not.
  EXPECT_TRUE(check([](auto* r) {
                r->set_num_frames(1);
                r->set_output_format(dgrid::v1::OUTPUT_FORMAT_PNG);
              }).ok());
  const std::vector<std::pair<std::function<void(GenerateRequest*)>, std::string>> bad = {
      {[](auto* r) { r->set_num_frames(80); },
       "num_frames: num_frames - 1 must be a multiple of 4"},
      {[](auto* r) { r->set_num_frames(125); }, "num_frames: must be 1 to 121"},
      {[](auto* r) { r->set_num_frames(-3); }, "num_frames: must be 1 to 121"},
      {[](auto* r) { r->set_fps(241); }, "fps: must be 0 to 240"},
      {[](auto* r) { r->set_fps(-1); }, "fps: must be 0 to 240"},
      {[](auto* r) { r->set_output_format(dgrid::v1::OUTPUT_FORMAT_PNG); }, "output_format: PNG"},
  };
  for (const auto& [mutate, prefix] : bad) {
    const absl::Status s = check(mutate);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message().substr(0, prefix.size()), prefix) << s;
  }
}

// frames x width x height: bounded by the deployment's --max-video-pixels, else the family's
// default (Wan: 121 x 1280 x 720), INVALID_ARGUMENT naming num_frames.
TEST(RequestValidationTest, VideoPixelsAreBounded) {
  dgrid::v1::ModelInfo wan = VideoModel();
  wan.set_pipeline("WanPipeline");
  wan.set_max_num_frames(129);
  wan.set_max_width(1280);
  wan.set_max_height(1280);
  const std::vector<dgrid::v1::ModelInfo> models = {wan};
  auto check = [&](int frames, int width, int height, int64_t configured) {
    GenerateRequest r = Valid();
    r.set_model("clip");
    r.set_num_frames(frames);
    r.set_width(width);
    r.set_height(height);
    return ValidateGenerateRequest(r, models, "", configured).status();
  };
  EXPECT_TRUE(check(121, 1280, 720, 0).ok());
  absl::Status s = check(121, 1280, 736, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message().rfind("num_frames: 121 frames of 1280x736 are 113991680 pixels", 0), 0u)
      << s;
  EXPECT_TRUE(check(129, 1280, 1280, int64_t{129} * 1280 * 1280).ok());  // a larger bound
  EXPECT_TRUE(check(5, 64, 64, 5 * 64 * 64).ok());
  s = check(9, 64, 64, 5 * 64 * 64);  // a smaller one
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("--max-video-pixels"), std::string::npos) << s;
  // One frame is a picture: not bounded here.
  EXPECT_TRUE(check(1, 1280, 1280, 16).ok());
  // The model's default size counts when the request leaves it 0.
  GenerateRequest r = Valid();
  r.set_model("clip");
  r.set_num_frames(81);
  EXPECT_EQ(ValidateGenerateRequest(r, models, "", 81 * 64 * 48 - 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateGenerateRequest(r, models, "", 81 * 64 * 48).ok());
}

TEST(RequestValidationTest, UnavailableModelIsUnavailableNotUnknown) {
  std::vector<dgrid::v1::ModelInfo> models = Models();
  models[0].set_unavailable(true);
  absl::Status s = ValidateGenerateRequest(Valid(), models, "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(s.message().rfind("model: 'tiny'", 0), 0u) << s;
  GenerateRequest other = Valid();
  other.set_model("nope");
  EXPECT_EQ(ValidateGenerateRequest(other, models, "").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RequestValidationTest, FillDefaultsGivesFramesByModel) {
  // Image model: one frame, no frame rate, PNG.
  GenerateRequest image = Valid();
  dgrid::v1::Accepted a = FillDefaults(Models()[0], &image);
  EXPECT_EQ(a.num_frames(), 1);
  EXPECT_EQ(a.fps(), 0);
  EXPECT_EQ(image.output_format(), dgrid::v1::OUTPUT_FORMAT_PNG);
  // Video model: its default frames and rate, MP4.
  GenerateRequest video = Valid();
  video.set_model("clip");
  a = FillDefaults(VideoModel(), &video);
  EXPECT_EQ(a.num_frames(), 81);
  EXPECT_EQ(a.fps(), 16);
  EXPECT_EQ(video.output_format(), dgrid::v1::OUTPUT_FORMAT_MP4);
  // Asked-for values are kept; one frame of a video model is a PNG picture.
  GenerateRequest still = Valid();
  still.set_num_frames(1);
  still.set_fps(24);
  a = FillDefaults(VideoModel(), &still);
  EXPECT_EQ(a.num_frames(), 1);
  EXPECT_EQ(a.fps(), 24);
  EXPECT_EQ(still.output_format(), dgrid::v1::OUTPUT_FORMAT_PNG);
}

TEST(RequestValidationTest, EmptyModelResolvesToDefault) {
  GenerateRequest r = Valid();
  r.clear_model();
  absl::StatusOr<dgrid::v1::ModelInfo> m = ValidateGenerateRequest(r, Models(), "");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->name(), "tiny");
  EXPECT_EQ(ValidateGenerateRequest(r, Models(), "other").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ValidateGenerateRequest(r, {}, "").status().code(), absl::StatusCode::kUnavailable);
}

TEST(RequestValidationTest, FillDefaultsReportsEffectiveParameters) {
  GenerateRequest r = Valid();
  dgrid::v1::Accepted a = FillDefaults(Models()[0], &r);
  EXPECT_EQ(a.model(), "tiny");
  EXPECT_EQ(a.width(), 64);
  EXPECT_EQ(a.height(), 48);
  EXPECT_EQ(a.num_inference_steps(), 4);
  EXPECT_TRUE(r.has_seed());
  EXPECT_EQ(a.seed(), r.seed());
  EXPECT_EQ(r.output_format(), dgrid::v1::OUTPUT_FORMAT_PNG);
  EXPECT_EQ(r.max_sequence_length(), 512);
  // Explicit values are kept.
  GenerateRequest s = Valid();
  s.set_seed(42);
  s.set_width(128);
  s.set_num_inference_steps(9);
  a = FillDefaults(Models()[0], &s);
  EXPECT_EQ(a.seed(), 42u);
  EXPECT_EQ(a.width(), 128);
  EXPECT_EQ(a.height(), 48);
  EXPECT_EQ(a.num_inference_steps(), 9);
}

// Image-to-image: the image is decoded whole before anything runs; strength in [0, 1] (0 runs no
// step) and only with an image; a family without image input (Wan) refuses the image.
TEST(RequestValidationTest, InputImageAndStrength) {
  // A 1x1 RGB PNG.
  static const unsigned char kPng[] = {
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
      0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00,
      0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78,
      0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0xc9, 0xfe, 0x92,
      0xef, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  const std::string png(reinterpret_cast<const char*>(kPng), sizeof(kPng));
  dgrid::v1::ModelInfo wan = VideoModel();
  wan.set_pipeline("WanPipeline");
  const std::vector<dgrid::v1::ModelInfo> models = {Models()[0], wan};
  auto check = [&](const std::function<void(GenerateRequest*)>& mutate) {
    GenerateRequest r = Valid();
    mutate(&r);
    return ValidateGenerateRequest(r, models, "").status();
  };
  auto expect_field = [](const absl::Status& s, const std::string& field) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message().substr(0, field.size() + 1), field + ":") << s;
  };
  EXPECT_TRUE(check([&](GenerateRequest* r) { r->set_image(png); }).ok());
  EXPECT_TRUE(check([&](GenerateRequest* r) {
                r->set_image(png);
                r->set_strength(1.0);
              }).ok());
  expect_field(check([&](GenerateRequest* r) { r->set_image(png.substr(0, 40)); }), "image");
  expect_field(check([&](GenerateRequest* r) { r->set_image("GIF89a"); }), "image");
  for (double strength : {-0.1, 1.01, 0.0, std::nan("")}) {
    expect_field(check([&](GenerateRequest* r) {
                   r->set_image(png);
                   r->set_strength(strength);
                 }),
                 "strength");
  }
  expect_field(check([&](GenerateRequest* r) { r->set_strength(0.5); }), "strength");
  expect_field(check([&](GenerateRequest* r) {
                 r->set_model("clip");
                 r->set_image(png);
               }),
               "image");
  // FillDefaults gives an image without a strength the pipeline's 0.6.
  GenerateRequest r = Valid();
  r.set_image(png);
  FillDefaults(Models()[0], &r);
  EXPECT_EQ(r.strength(), kDefaultStrength);
}

// Step caching (GenerateRequest.cache, #21 item 2): bad settings are INVALID_ARGUMENT naming the
// field; image and video families take it.
TEST(RequestValidationTest, StepCacheNamesTheField) {
  const std::vector<dgrid::v1::ModelInfo> models = {Models()[0], VideoModel()};
  auto check = [&](const std::string& model,
                   const std::function<void(dgrid::v1::StepCache*)>& mutate) {
    GenerateRequest r = Valid();
    r.set_model(model);
    mutate(r.mutable_cache());
    return ValidateGenerateRequest(r, models, "").status();
  };
  EXPECT_TRUE(check("tiny", [](auto* c) { c->set_method("fbcache"); }).ok());
  EXPECT_TRUE(check("tiny", [](auto* c) {
                c->set_method("teacache");
                c->set_threshold(0);
                c->set_warmup_steps(2);
                c->set_max_skip(3);
              }).ok());
  EXPECT_TRUE(check("tiny", [](auto* c) { c->set_method("none"); }).ok());
  EXPECT_TRUE(check("tiny", [](auto*) {}).ok());  // empty method: off
  EXPECT_TRUE(check("clip", [](auto* c) { c->set_method("none"); }).ok());
  const std::vector<std::pair<std::function<void(dgrid::v1::StepCache*)>, std::string>> bad = {
      {[](auto* c) { c->set_method("magic"); }, "cache.method: unknown method 'magic'"},
      {[](auto* c) {
         c->set_method("fbcache");
         c->set_threshold(-0.1f);
       },
       "cache.threshold:"},
      {[](auto* c) {
         c->set_method("teacache");
         c->set_threshold(std::numeric_limits<float>::quiet_NaN());
       },
       "cache.threshold:"},
      {[](auto* c) {
         c->set_method("fbcache");
         c->set_warmup_steps(-1);
       },
       "cache.warmup_steps:"},
      {[](auto* c) {
         c->set_method("fbcache");
         c->set_max_skip(-2);
       },
       "cache.max_skip:"},
  };
  for (const auto& [mutate, prefix] : bad) {
    const absl::Status s = check("tiny", mutate);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message().substr(0, prefix.size()), prefix) << s;
  }
  EXPECT_TRUE(check("clip", [](auto* c) { c->set_method("teacache"); }).ok());
}

}  // namespace
}  // namespace dgrid::orchestrator
