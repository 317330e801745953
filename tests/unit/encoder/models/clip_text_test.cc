// Parity of dgrid's CLIP text model with transformers' CLIPTextModel (reference data from
// make_encoder_fixtures.py), including both pooling rules, plus error statuses.
#include "services/encoder/models/clip_text.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "tests/unit/encoder/models/encoder_test_util.h"

namespace dgrid::encoder {
namespace {

using testing::ExpectClose;
using testing::FixtureDir;
using testing::Get;
using testing::LoadReference;

constexpr double kFp32Tolerance = 1e-5;

struct ClipCase {
  const char* folder;     // model folder
  const char* reference;  // <reference>.ref.safetensors
};

class ClipParityTest : public ::testing::TestWithParam<ClipCase> {};

TEST_P(ClipParityTest, MatchesTransformers) {
  const ClipCase c = GetParam();
  const std::string name = c.folder;
  absl::StatusOr<ClipTextModel> model = ClipTextModel::Load(FixtureDir() + "/" + name, {});
  ASSERT_TRUE(model.ok()) << model.status();
  const WeightMap ref = LoadReference(c.reference);
  const at::Tensor ids = Get(ref, "input_ids");

  absl::StatusOr<ClipTextOutput> out = model->Encode(ids);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectClose(out->last_hidden_state, Get(ref, "hidden"), kFp32Tolerance, name + " hidden");
  ExpectClose(out->pooler_output, Get(ref, "pooled"), kFp32Tolerance, name + " pooled");

  absl::StatusOr<ClipTextOutput> masked = model->Encode(ids, Get(ref, "attention_mask"));
  ASSERT_TRUE(masked.ok()) << masked.status();
  ExpectClose(masked->last_hidden_state, Get(ref, "hidden_masked"), kFp32Tolerance,
              name + " hidden (masked)");
  ExpectClose(masked->pooler_output, Get(ref, "pooled_masked"), kFp32Tolerance,
              name + " pooled (masked)");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ClipParityTest,
                         ::testing::Values(ClipCase{"clip_quick", "clip_quick"},
                                           ClipCase{"clip_gelu", "clip_gelu"},
                                           ClipCase{"clip_prefixed", "clip_quick"}),
                         [](const auto& info) { return std::string(info.param.folder); });

TEST(ClipText, PoolingRuleFollowsEosTokenId) {
  // clip_quick has eos_token_id 299: the first 299 of a row. clip_gelu has the legacy id 2: the
  // largest id, even though a 2 comes earlier. A row without any EOS pools position 0.
  for (const char* name : {"clip_quick", "clip_gelu"}) {
    absl::StatusOr<ClipTextModel> model = ClipTextModel::Load(FixtureDir() + "/" + name, {});
    ASSERT_TRUE(model.ok()) << model.status();
    const WeightMap ref = LoadReference(name);
    absl::StatusOr<ClipTextOutput> out = model->Encode(Get(ref, "input_ids"));
    ASSERT_TRUE(out.ok()) << out.status();
    const int64_t len = out->last_hidden_state.size(1);
    // Rows: EOS at 5, EOS at len - 1, no EOS (for clip_gelu the largest id of row 2 is random).
    EXPECT_TRUE(at::equal(out->pooler_output[0], out->last_hidden_state[0][5])) << name;
    EXPECT_TRUE(at::equal(out->pooler_output[1], out->last_hidden_state[1][len - 1])) << name;
    if (std::string(name) == "clip_quick") {
      EXPECT_TRUE(at::equal(out->pooler_output[2], out->last_hidden_state[2][0])) << name;
    }
  }
}

TEST(ClipText, RejectsBadInputs) {
  absl::StatusOr<ClipTextModel> model = ClipTextModel::Load(FixtureDir() + "/clip_quick", {});
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t max_len = model->config().max_position_embeddings;
  EXPECT_EQ(model->Encode(at::zeros({1, max_len + 1}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Encode(at::full({1, 3}, model->config().vocab_size, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Encode(at::zeros({2, 3, 4}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClipTextModel::Load(FixtureDir() + "/t5_a", {}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ClipText, RunsInBfloat16) {
  LoadOptions options;
  options.floating_dtype = "bfloat16";
  absl::StatusOr<ClipTextModel> model = ClipTextModel::Load(FixtureDir() + "/clip_quick", options);
  ASSERT_TRUE(model.ok()) << model.status();
  const WeightMap ref = LoadReference("clip_quick");
  absl::StatusOr<ClipTextOutput> out = model->Encode(Get(ref, "input_ids"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->pooler_output.scalar_type(), at::kBFloat16);
  EXPECT_LT(testing::RelError(out->pooler_output, Get(ref, "pooled")), 5e-2);
}

TEST(ClipText, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  LoadOptions options;
  options.device = "cuda";
  absl::StatusOr<ClipTextModel> model = ClipTextModel::Load(FixtureDir() + "/clip_quick", options);
  ASSERT_TRUE(model.ok()) << model.status();
  const WeightMap ref = LoadReference("clip_quick");
  absl::StatusOr<ClipTextOutput> out =
      model->Encode(Get(ref, "input_ids"), Get(ref, "attention_mask"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->pooler_output.is_cuda());
  EXPECT_LT(testing::RelError(out->pooler_output, Get(ref, "pooled_masked")), 1e-3);
}

}  // namespace
}  // namespace dgrid::encoder
