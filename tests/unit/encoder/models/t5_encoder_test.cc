// Parity of dgrid's T5 encoder with transformers' T5EncoderModel (reference data from
// make_encoder_fixtures.py), plus its error statuses and reduced-precision runs.
#include "services/encoder/models/t5_encoder.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/unit/encoder/models/encoder_test_util.h"

namespace dgrid::encoder {
namespace {

using testing::ExpectClose;
using testing::FixtureDir;
using testing::Get;
using testing::LoadReference;
using testing::RelError;

constexpr double kFp32Tolerance = 1e-5;

class T5ParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(T5ParityTest, MatchesTransformersWithAndWithoutMask) {
  const std::string name = GetParam();
  absl::StatusOr<T5EncoderModel> model = T5EncoderModel::Load(FixtureDir() + "/" + name, {});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->dtype(), at::kFloat);
  const WeightMap ref = LoadReference(name);
  const at::Tensor ids = Get(ref, "input_ids");

  // FluxPipeline's call: no attention mask.
  absl::StatusOr<at::Tensor> hidden = model->Encode(ids);
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  ExpectClose(*hidden, Get(ref, "hidden"), kFp32Tolerance, name + " hidden");

  absl::StatusOr<at::Tensor> masked = model->Encode(ids, Get(ref, "attention_mask"));
  ASSERT_TRUE(masked.ok()) << masked.status();
  ExpectClose(*masked, Get(ref, "hidden_masked"), kFp32Tolerance, name + " hidden (masked)");
  // The mask must change the padded row (otherwise the masked case tests nothing).
  EXPECT_GT(RelError(*masked, *hidden), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, T5ParityTest,
                         ::testing::Values("t5_a", "t5_b", "umt5_a", "umt5_sharded"));

// UMT5 is told apart by config.json's model_type; read as T5 (block 0's bias for every block) the
// same weights give other outputs, so the parity above exercises every block's own bias.
TEST(T5Encoder, Umt5UsesEveryBlocksBias) {
  absl::StatusOr<T5EncoderModel> umt5 = T5EncoderModel::Load(FixtureDir() + "/umt5_a", {});
  ASSERT_TRUE(umt5.ok()) << umt5.status();
  EXPECT_TRUE(umt5->config().bias_per_block);
  char dir_template[] = "/tmp/dgrid_umt5_as_t5_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  absl::StatusOr<std::string> weights =
      ReadFileToString(FixtureDir() + "/umt5_a/model.safetensors");
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << *weights;
  absl::StatusOr<std::string> config_text = ReadFileToString(FixtureDir() + "/umt5_a/config.json");
  ASSERT_TRUE(config_text.ok()) << config_text.status();
  nlohmann::json config = nlohmann::json::parse(*config_text);
  config["model_type"] = "t5";
  std::ofstream(dir + "/config.json") << config.dump();
  absl::StatusOr<T5EncoderModel> as_t5 = T5EncoderModel::Load(dir, {});
  ASSERT_TRUE(as_t5.ok()) << as_t5.status();
  EXPECT_FALSE(as_t5->config().bias_per_block);
  const WeightMap ref = LoadReference("umt5_a");
  absl::StatusOr<at::Tensor> hidden = as_t5->Encode(Get(ref, "input_ids"));
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  EXPECT_GT(RelError(*hidden, Get(ref, "hidden")), 1e-3);
  unlink((dir + "/config.json").c_str());
  unlink((dir + "/model.safetensors").c_str());
  rmdir(dir.c_str());
}

TEST(T5Encoder, RelativePositionBucketsFollowT5) {
  // Bidirectional, 32 buckets, max distance 128 (T5's defaults): 0..7 exact for keys before the
  // query, 16..23 exact for keys after it, log-spaced beyond, saturating at 15 / 31.
  const at::Tensor rel = at::arange(-200, 201, at::kLong);
  const at::Tensor b = T5RelativePositionBucket(rel, 32, 128);
  auto bucket = [&](int64_t r) { return b[r + 200].item<int64_t>(); };
  EXPECT_EQ(bucket(0), 0);
  EXPECT_EQ(bucket(-1), 1);
  EXPECT_EQ(bucket(-7), 7);
  EXPECT_EQ(bucket(1), 17);
  EXPECT_EQ(bucket(7), 23);
  EXPECT_EQ(bucket(-200), 15);
  EXPECT_EQ(bucket(200), 31);
  EXPECT_EQ(bucket(-127), 15);
  // 8 + floor(log(r / 8) / log(16) * 8) for r = 8, 16, 32, 64.
  EXPECT_EQ(bucket(-8), 8);
  EXPECT_EQ(bucket(-16), 10);
  EXPECT_EQ(bucket(-32), 12);
  EXPECT_EQ(bucket(64), 16 + 14);
}

TEST(T5Encoder, RejectsBadInputs) {
  absl::StatusOr<T5EncoderModel> model = T5EncoderModel::Load(FixtureDir() + "/t5_a", {});
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t vocab = model->config().vocab_size;
  EXPECT_EQ(model->Encode(at::full({1, 4}, vocab, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Encode(at::full({1, 4}, -1, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Encode(at::zeros({4}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Encode(at::zeros({1, 4}, at::kFloat)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      model->Encode(at::zeros({1, 4}, at::kLong), at::ones({1, 5}, at::kLong)).status().code(),
      absl::StatusCode::kInvalidArgument);
  // int32 ids are accepted.
  EXPECT_TRUE(model->Encode(at::zeros({1, 4}, at::kInt)).ok());
}

TEST(T5Encoder, LoadErrorsNameTheProblem) {
  EXPECT_EQ(T5EncoderModel::Load(FixtureDir() + "/no_such_folder", {}).status().code(),
            absl::StatusCode::kNotFound);

  // The same weights with a config that disagrees on d_ff: the loader names the parameter.
  // (POSIX, not std::filesystem: see common/files.h.)
  char dir_template[] = "/tmp/dgrid_t5_bad_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  absl::StatusOr<std::string> weights = ReadFileToString(FixtureDir() + "/t5_a/model.safetensors");
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << *weights;
  absl::StatusOr<std::string> config_text = ReadFileToString(FixtureDir() + "/t5_a/config.json");
  ASSERT_TRUE(config_text.ok()) << config_text.status();
  nlohmann::json config = nlohmann::json::parse(*config_text);
  config["d_ff"] = config["d_ff"].get<int64_t>() + 1;
  std::ofstream(dir + "/config.json") << config.dump();
  absl::StatusOr<T5EncoderModel> model = T5EncoderModel::Load(dir, {});
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("DenseReluDense"), std::string::npos) << model.status();

  config["d_ff"] = config["d_ff"].get<int64_t>() - 1;
  config["feed_forward_proj"] = "gated-gelu-x";
  std::ofstream(dir + "/config.json") << config.dump();
  EXPECT_EQ(T5EncoderModel::Load(dir, {}).status().code(), absl::StatusCode::kInvalidArgument);
  unlink((dir + "/config.json").c_str());
  unlink((dir + "/model.safetensors").c_str());
  rmdir(dir.c_str());
}

// Reduced precision: the same model in bfloat16 / float16 runs and stays near the float32 result
// (the tolerance is the 8-bit / 11-bit mantissa's, not a parity claim).
TEST(T5Encoder, RunsInHalfPrecisions) {
  const WeightMap ref = LoadReference("t5_a");
  for (const char* dtype : {"bfloat16", "float16"}) {
    LoadOptions options;
    options.floating_dtype = dtype;
    absl::StatusOr<T5EncoderModel> model = T5EncoderModel::Load(FixtureDir() + "/t5_a", options);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(model->dtype(), std::string(dtype) == "float16" ? at::kHalf : at::kBFloat16);
    absl::StatusOr<at::Tensor> hidden = model->Encode(Get(ref, "input_ids"));
    ASSERT_TRUE(hidden.ok()) << hidden.status();
    EXPECT_EQ(hidden->scalar_type(), model->dtype());
    EXPECT_LT(RelError(*hidden, Get(ref, "hidden")), 5e-2) << dtype;
  }
}

TEST(T5Encoder, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const WeightMap ref = LoadReference("t5_a");
  LoadOptions options;
  options.device = "cuda";
  absl::StatusOr<T5EncoderModel> model = T5EncoderModel::Load(FixtureDir() + "/t5_a", options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(model->device().is_cuda());
  absl::StatusOr<at::Tensor> hidden =
      model->Encode(Get(ref, "input_ids"), Get(ref, "attention_mask"));
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  EXPECT_TRUE(hidden->is_cuda());
  // TF32 may be on for CUDA matmuls; 1e-3 covers it.
  EXPECT_LT(RelError(*hidden, Get(ref, "hidden_masked")), 1e-3);
}

}  // namespace
}  // namespace dgrid::encoder
