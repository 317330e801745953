// Whole FLUX sampler runs on a denoiser group (thread test seam) against the single-rank run:
// layouts U2, R2, CFG2, U2R2, CFG2U2, U4, R4 and U2R2CFG2 on a tiny FLUX model (inner width 64, 4
// heads of 16), true CFG on, image token counts that need padding (15) and that do not (16).
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/sampler.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

using testing::RelativeError;

std::unique_ptr<FluxTransformer2DModel> TinyModel() {
  std::unique_ptr<FluxTransformer2DModel> model = testing::TinyFluxModel();
  EXPECT_NE(model, nullptr);
  return model;
}
FlowMatchEulerSchedulerConfig Scheduler() { return testing::TinyFluxScheduler(); }
FluxSamplerRequest Request(int64_t height, int64_t width, bool true_cfg) {
  return testing::TinyFluxRequest(height, width, true_cfg);
}

struct Case {
  std::string name;
  int cfg, ring, ulysses;
  int64_t height, width;
};

class SequenceParallelSamplerTest : public ::testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(1);  // Up to 8 rank threads on a 2-core CI machine.
    model_ = TinyModel().release();
  }
  static void TearDownTestSuite() { delete model_; }
  static FluxTransformer2DModel* model_;
};
FluxTransformer2DModel* SequenceParallelSamplerTest::model_ = nullptr;

TEST_P(SequenceParallelSamplerTest, EveryRankMatchesOneRank) {
  ASSERT_NE(model_, nullptr);
  const Case c = GetParam();
  const FluxSamplerRequest request = Request(c.height, c.width, /*true_cfg=*/true);
  auto want = RunFluxSampler(*model_, Scheduler(), request);
  ASSERT_TRUE(want.ok()) << want.status();

  const int size = c.cfg * c.ring * c.ulysses;
  std::mutex mu;
  std::vector<absl::StatusOr<at::Tensor>> got(size, absl::UnknownError("not run"));
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& world) {
    absl::StatusOr<at::Tensor> result = absl::UnknownError("not run");
    auto layout = ParallelLayout::Create(c.cfg, c.ring, c.ulysses, rank);
    if (!layout.ok()) {
      result = layout.status();
    } else if (auto group = SplitSequenceParallelGroup(world, *layout); !group.ok()) {
      result = group.status();
    } else {
      const SequenceParallelContext& context = (*group)->context;
      result = RunFluxSampler(*model_, Scheduler(), request, {}, &context);
      // The work was really split: every subgroup of degree > 1 carried traffic.
      for (const Communicator* comm : {context.ulysses, context.ring, context.cfg}) {
        if (comm != nullptr) EXPECT_GT(testing::ThreadCommunicatorCalls(*comm), 0);
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    got[rank] = std::move(result);
  });
  for (int r = 0; r < size; ++r) {
    ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
    ASSERT_EQ(got[r]->sizes(), want->sizes());
    EXPECT_LT(RelativeError(*got[r], *want), 1e-5) << c.name << " rank " << r;
    // Every rank ends with the same latents (they all run the same scheduler on gathered data).
    EXPECT_TRUE(at::equal(*got[r], *got[0])) << c.name << " rank " << r;
  }
}

// 10x6 latents: 5 * 3 = 15 image tokens, padded for every degree > 1; 8x8: 16, no padding.
INSTANTIATE_TEST_SUITE_P(
    Layouts, SequenceParallelSamplerTest,
    ::testing::Values(Case{"U2", 1, 1, 2, 10, 6}, Case{"R2", 1, 2, 1, 10, 6},
                      Case{"CFG2", 2, 1, 1, 10, 6}, Case{"U2R2", 1, 2, 2, 10, 6},
                      Case{"CFG2U2", 2, 1, 2, 10, 6}, Case{"U4", 1, 1, 4, 10, 6},
                      Case{"R4", 1, 4, 1, 10, 6}, Case{"U2R2CFG2", 2, 2, 2, 10, 6},
                      Case{"U2R2CFG2_unpadded", 2, 2, 2, 8, 8}, Case{"R4_unpadded", 1, 4, 1, 8, 8}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(SequenceParallelForwardTest, WithoutTrueCfgBothBranchesRunTheConditionalPass) {
  at::set_num_threads(1);
  std::unique_ptr<FluxTransformer2DModel> model = TinyModel();
  ASSERT_NE(model, nullptr);
  const FluxSamplerRequest request = Request(10, 6, /*true_cfg=*/false);
  auto want = RunFluxSampler(*model, Scheduler(), request);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<absl::StatusOr<at::Tensor>> got(4, absl::UnknownError("not run"));
  testing::RunOnThreadGroup(4, [&](int rank, Communicator& world) {
    auto layout = ParallelLayout::Create(2, 1, 2, rank);
    auto group = SplitSequenceParallelGroup(world, *layout);
    got[rank] = group.ok() ? RunFluxSampler(*model, Scheduler(), request, {}, &(*group)->context)
                           : group.status();
  });
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(got[r].ok()) << got[r].status();
    EXPECT_LT(RelativeError(*got[r], *want), 1e-5) << "rank " << r;
  }
}

TEST(SequenceParallelForwardTest, MissingPeerIsDeadlineExceededNotInternal) {
  std::unique_ptr<FluxTransformer2DModel> model = TinyModel();
  ASSERT_NE(model, nullptr);
  const FluxSamplerRequest request = Request(10, 6, /*true_cfg=*/false);
  absl::Status rank0 = absl::UnknownError("not run");
  testing::RunOnThreadGroup(
      2,
      [&](int rank, Communicator& world) {
        auto layout = ParallelLayout::Create(1, 2, 1, rank);
        auto group = SplitSequenceParallelGroup(world, *layout);
        if (!group.ok() || rank != 0) return;  // Rank 1 "dies" after the split.
        rank0 = RunFluxSampler(*model, Scheduler(), request, {}, &(*group)->context).status();
      },
      absl::Milliseconds(300));
  EXPECT_EQ(rank0.code(), absl::StatusCode::kDeadlineExceeded) << rank0;
}

TEST(SequenceParallelForwardTest, ContextMustFitTheModelAndLayout) {
  std::unique_ptr<FluxTransformer2DModel> model = TinyModel();
  ASSERT_NE(model, nullptr);
  auto layout = ParallelLayout::Create(1, 1, 2, 0);
  ASSERT_TRUE(layout.ok());
  const SequenceParallelContext no_comm(*layout);  // Ulysses 2 without a communicator.
  EXPECT_EQ(
      RunFluxSampler(*model, Scheduler(), Request(10, 6, false), {}, &no_comm).status().code(),
      absl::StatusCode::kInvalidArgument);
  auto wide = ParallelLayout::Create(1, 1, 8, 0);  // 4 heads cannot split 8 ways.
  ASSERT_TRUE(wide.ok());
  std::vector<std::unique_ptr<Communicator>> comms = testing::CreateThreadCommunicators(8);
  SequenceParallelContext too_wide(*wide);
  too_wide.ulysses = comms[0].get();
  EXPECT_EQ(too_wide.Validate(4).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dgrid
