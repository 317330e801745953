// Sequence-parallel attention (Ulysses, Ring, USP) against single-rank SDPA, over the thread test
// seam: every layout, with an image length that needs padding.
#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include <ATen/ATen.h>

#include "services/denoiser/models/sequence_attention.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

using testing::RelativeError;

TEST(SequenceShardPlanTest, PadsToTheDegreeAndCountsRealTokens) {
  auto layout = ParallelLayout::Create(/*cfg=*/1, /*ring=*/2, /*ulysses=*/2, /*rank=*/3);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const SequenceShardPlan plan(*layout, 13);
  EXPECT_EQ(plan.padded, 16);
  EXPECT_EQ(plan.shard_length, 4);
  EXPECT_EQ(plan.shard, 3);
  EXPECT_EQ(plan.start(), 12);
  EXPECT_EQ(plan.ValidIn(12, 4), 1);
  EXPECT_EQ(plan.ValidIn(8, 8), 5);
  EXPECT_EQ(plan.ValidIn(16, 4), 0);
}

TEST(AttentionWithLseTest, MergedBlocksEqualOneAttention) {
  at::manual_seed(1);
  const at::Tensor q = at::randn({2, 7, 3, 8});
  const at::Tensor k = at::randn({2, 11, 3, 8});
  const at::Tensor v = at::randn({2, 11, 3, 8});
  const at::Tensor want =
      at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
          .transpose(1, 2);
  at::Tensor out, lse;
  for (const auto& [begin, len] :
       std::vector<std::pair<int64_t, int64_t>>{{5, 4}, {0, 5}, {9, 2}}) {
    const auto [o, l] = flux::AttentionWithLse(q, k.narrow(1, begin, len), v.narrow(1, begin, len));
    flux::MergeAttention(out, lse, o, l);
  }
  EXPECT_LT(RelativeError(out, want), 1e-6);
  const at::Tensor scores =
      at::matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(-2, -1)) / std::sqrt(8.0);
  EXPECT_LT(RelativeError(lse, at::logsumexp(scores, {-1})), 1e-6);
}

// The GPU kernels' LSE (cuDNN for bf16, memory-efficient for float32) against float32 math, and a
// two-block merge against one attention; the convention (natural log, [B, H, Lq]) must match the
// CPU path's for the ring merge to be right.
TEST(AttentionWithLseTest, GpuKernelsMatchFloat32Math) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(3);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const at::Tensor q = at::randn({1, 37, 4, 64}, cuda);
  const at::Tensor k = at::randn({1, 53, 4, 64}, cuda);
  const at::Tensor v = at::randn({1, 53, 4, 64}, cuda);
  const at::Tensor scores =
      at::matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(-2, -1)) / 8.0;
  const at::Tensor want_lse = at::logsumexp(scores, {-1});
  const at::Tensor want = at::matmul(at::softmax(scores, -1), v.transpose(1, 2)).transpose(1, 2);
  for (const at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    const double tol = dtype == at::kFloat ? 1e-4 : 2e-2;
    const auto [o, l] = flux::AttentionWithLse(q.to(dtype), k.to(dtype), v.to(dtype));
    EXPECT_EQ(o.scalar_type(), dtype);
    EXPECT_EQ(l.sizes(), want_lse.sizes());
    EXPECT_LT(RelativeError(o.to(at::kFloat), want), tol) << c10::toString(dtype);
    EXPECT_LT((l - want_lse).abs().max().item<double>(), 5 * tol) << c10::toString(dtype);
    at::Tensor out, lse;
    for (const auto& [begin, len] : std::vector<std::pair<int64_t, int64_t>>{{20, 33}, {0, 20}}) {
      const auto [ob, lb] = flux::AttentionWithLse(q.to(dtype), k.to(dtype).narrow(1, begin, len),
                                                   v.to(dtype).narrow(1, begin, len));
      flux::MergeAttention(out, lse, ob, lb);
    }
    EXPECT_LT(RelativeError(out, want), tol) << c10::toString(dtype);
  }
}

struct LayoutCase {
  int cfg, ring, ulysses;
};

class SequenceAttentionTest : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(SequenceAttentionTest, MatchesSingleRank) {
  const LayoutCase lc = GetParam();
  constexpr int64_t kText = 3, kImage = 13, kHeads = 4, kDim = 8;
  at::manual_seed(2);
  const at::Tensor q = at::randn({2, kText + kImage, kHeads, kDim});
  const at::Tensor k = at::randn({2, kText + kImage, kHeads, kDim});
  const at::Tensor v = at::randn({2, kText + kImage, kHeads, kDim});
  const at::Tensor want =
      at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
          .transpose(1, 2)
          .flatten(2, 3);
  const int size = lc.cfg * lc.ring * lc.ulysses;
  std::mutex mu;
  std::vector<at::Tensor> results(size);
  std::vector<absl::Status> statuses(size);
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& world) {
    auto layout = ParallelLayout::Create(lc.cfg, lc.ring, lc.ulysses, rank);
    auto group = SplitSequenceParallelGroup(world, *layout);
    if (!group.ok()) {
      statuses[rank] = group.status();
      return;
    }
    const flux::SequenceParallelAttention attention((*group)->context, kText, kImage);
    // Each rank's inputs: its text shard, then its image shard (the model does this in Forward).
    const auto local = [&](const at::Tensor& x) {
      return at::cat({attention.ShardText(x.narrow(1, 0, kText)),
                      attention.ShardImage(x.narrow(1, kText, kImage))},
                     1);
    };
    try {
      const at::Tensor out = attention.Attend(local(q), local(k), local(v));
      const int64_t st = attention.local_text_length();
      const at::Tensor text = attention.GatherText(out.narrow(1, 0, st));
      const at::Tensor image = attention.GatherImage(out.narrow(1, st, out.size(1) - st));
      std::lock_guard<std::mutex> lock(mu);
      results[rank] = at::cat({text, image}, 1);
    } catch (const std::exception& e) {
      statuses[rank] = absl::InternalError(e.what());
    }
  });
  for (int r = 0; r < size; ++r) {
    ASSERT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
    ASSERT_TRUE(results[r].defined());
    EXPECT_LT(RelativeError(results[r], want), 1e-5) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, SequenceAttentionTest,
                         ::testing::Values(LayoutCase{1, 1, 2}, LayoutCase{1, 2, 1},
                                           LayoutCase{1, 2, 2}, LayoutCase{1, 1, 4},
                                           LayoutCase{1, 4, 1}, LayoutCase{2, 2, 2},
                                           LayoutCase{1, 8, 1}),
                         [](const ::testing::TestParamInfo<LayoutCase>& info) {
                           return "cfg" + std::to_string(info.param.cfg) + "ring" +
                                  std::to_string(info.param.ring) + "ulysses" +
                                  std::to_string(info.param.ulysses);
                         });

}  // namespace
}  // namespace dgrid
