// Wan on a denoiser group (thread test seam) against one rank, float32, tolerance 1e-5 relative:
// WanTransformer3DModel::Forward under Ulysses / Ring / USP (one timestep per sample and one per
// token), and the whole RunWanSampler loop under U2, R2, U2R2, CFG2, CFG2U2 and U2R2CFG2 for
// Wan2.1 (UniPC, and flow-match Euler), Wan2.2 A14B (both experts) and TI2V (per-token
// timesteps). 9 frames at 48 x 80 pixels make 3 x 3 x 5 = 45 tokens, padded for every degree > 1;
// 5 frames at 64 x 64 make 32, padded for none.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/status.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::RelativeError;
using testing::TinyWanVariant;

// Runs fn(context) on every rank of a cfg x ring x ulysses thread group; the results by rank.
// `cfg_exchanges`: the CFG branches exchange predictions (classifier-free guidance is on).
std::vector<absl::StatusOr<at::Tensor>> RunOnGroup(
    int cfg, int ring, int ulysses,
    const std::function<absl::StatusOr<at::Tensor>(const SequenceParallelContext&)>& fn,
    bool cfg_exchanges = true) {
  const int size = cfg * ring * ulysses;
  std::mutex mu;
  std::vector<absl::StatusOr<at::Tensor>> got(size, absl::UnknownError("not run"));
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& world) {
    const auto run = [&]() -> absl::StatusOr<at::Tensor> {
      ASSIGN_OR_RETURN(ParallelLayout layout, ParallelLayout::Create(cfg, ring, ulysses, rank));
      ASSIGN_OR_RETURN(std::unique_ptr<SequenceParallelGroup> group,
                       SplitSequenceParallelGroup(world, layout));
      const SequenceParallelContext& context = group->context;
      absl::StatusOr<at::Tensor> result = fn(context);
      // The work was really split: every subgroup of degree > 1 carried traffic.
      for (const Communicator* comm : {context.ulysses, context.ring}) {
        if (comm != nullptr) {
          EXPECT_GT(testing::ThreadCommunicatorCalls(*comm), 0);
        }
      }
      if (context.cfg != nullptr) {
        EXPECT_EQ(testing::ThreadCommunicatorCalls(*context.cfg) > 0, cfg_exchanges);
      }
      return result;
    };
    absl::StatusOr<at::Tensor> result = run();
    std::lock_guard<std::mutex> lock(mu);
    got[rank] = std::move(result);
  });
  return got;
}

// Every rank's result within 1e-5 of `want`, and all ranks' results equal.
void ExpectMatchesOneRank(const std::vector<absl::StatusOr<at::Tensor>>& got,
                          const at::Tensor& want, const std::string& name) {
  for (size_t r = 0; r < got.size(); ++r) {
    ASSERT_TRUE(got[r].ok()) << name << " rank " << r << ": " << got[r].status();
    ASSERT_EQ(got[r]->sizes(), want.sizes());
    const double error = RelativeError(*got[r], want);
    EXPECT_LT(error, 1e-5) << name << " rank " << r;
    if (r == 0) std::printf("%s: relative error %.3g\n", name.c_str(), error);
    EXPECT_TRUE(at::equal(*got[r], *got[0])) << name << " rank " << r;
  }
}

struct ForwardCase {
  std::string name;
  int ring, ulysses;
  int64_t frames, height, width;  // latent grid
  bool per_token_timesteps;
};

class WanForwardTest : public ::testing::TestWithParam<ForwardCase> {};

TEST_P(WanForwardTest, EveryRankMatchesOneRank) {
  at::set_num_threads(1);  // up to 4 rank threads on a 2-core CI machine
  const ForwardCase c = GetParam();
  std::unique_ptr<WanTransformer3DModel> model = testing::TinyWanModel(3);
  ASSERT_NE(model, nullptr);
  at::manual_seed(5);
  WanTransformerInputs in;
  in.hidden_states = at::randn({1, 4, c.frames, c.height, c.width});
  in.encoder_hidden_states = at::randn({1, 7, 24});
  const int64_t tokens = c.frames * (c.height / 2) * (c.width / 2);
  // Distinct per-token timesteps, so that a shard taking another shard's would show.
  in.timestep =
      c.per_token_timesteps ? at::rand({1, tokens}) * 1000 : at::full({1}, 700, at::kLong);
  auto want = model->Forward(in);
  ASSERT_TRUE(want.ok()) << want.status();
  ExpectMatchesOneRank(
      RunOnGroup(1, c.ring, c.ulysses,
                 [&](const SequenceParallelContext& sp) { return model->Forward(in, &sp); }),
      *want, "forward " + c.name);
}

// 3 x 6 x 10 latents: 3 * 3 * 5 = 45 tokens, padded for every degree; 2 x 4 x 8: 16, unpadded.
INSTANTIATE_TEST_SUITE_P(Layouts, WanForwardTest,
                         ::testing::Values(ForwardCase{"U2", 1, 2, 3, 6, 10, false},
                                           ForwardCase{"R2", 2, 1, 3, 6, 10, false},
                                           ForwardCase{"U2R2", 2, 2, 3, 6, 10, false},
                                           ForwardCase{"U4", 1, 4, 3, 6, 10, false},
                                           ForwardCase{"R4", 4, 1, 3, 6, 10, false},
                                           ForwardCase{"U2_per_token", 1, 2, 3, 6, 10, true},
                                           ForwardCase{"U2R2_per_token", 2, 2, 3, 6, 10, true},
                                           ForwardCase{"U2R2_unpadded", 2, 2, 2, 4, 8, false}),
                         [](const ::testing::TestParamInfo<ForwardCase>& info) {
                           return info.param.name;
                         });

struct LoopCase {
  std::string name;
  TinyWanVariant variant;
  int cfg, ring, ulysses;
  int64_t num_frames, height, width;  // pixels
  bool guidance = true;
};

class WanSamplerTest : public ::testing::TestWithParam<LoopCase> {};

TEST_P(WanSamplerTest, EveryRankMatchesOneRank) {
  at::set_num_threads(1);  // up to 8 rank threads on a 2-core CI machine
  const LoopCase c = GetParam();
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(c.variant);
  ASSERT_NE(p.transformer, nullptr);
  const WanSamplerRequest request =
      testing::TinyWanRequest(c.variant, c.num_frames, c.height, c.width, c.guidance);
  auto want =
      RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, request);
  ASSERT_TRUE(want.ok()) << want.status();
  // Without guidance both CFG branches run the one conditional pass and exchange nothing.
  ExpectMatchesOneRank(RunOnGroup(
                           c.cfg, c.ring, c.ulysses,
                           [&](const SequenceParallelContext& sp) {
                             return RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline,
                                                  p.scheduler, request, {}, &sp);
                           },
                           /*cfg_exchanges=*/c.guidance),
                       *want, "loop " + c.name);
}

constexpr TinyWanVariant kT2V = TinyWanVariant::kT2V;
constexpr TinyWanVariant kA14B = TinyWanVariant::kA14B;
constexpr TinyWanVariant kTI2V = TinyWanVariant::kTI2V;
constexpr TinyWanVariant kEuler = TinyWanVariant::kEuler;

INSTANTIATE_TEST_SUITE_P(
    Layouts, WanSamplerTest,
    ::testing::Values(LoopCase{"T2V_U2", kT2V, 1, 1, 2, 9, 48, 80},
                      LoopCase{"T2V_R2", kT2V, 1, 2, 1, 9, 48, 80},
                      LoopCase{"T2V_U2R2", kT2V, 1, 2, 2, 9, 48, 80},
                      LoopCase{"T2V_CFG2", kT2V, 2, 1, 1, 9, 48, 80},
                      LoopCase{"T2V_CFG2U2", kT2V, 2, 1, 2, 9, 48, 80},
                      LoopCase{"T2V_U2R2CFG2", kT2V, 2, 2, 2, 9, 48, 80},
                      LoopCase{"T2V_U2R2_unpadded", kT2V, 1, 2, 2, 5, 64, 64},
                      LoopCase{"T2V_CFG2U2_no_guidance", kT2V, 2, 1, 2, 9, 48, 80, false},
                      LoopCase{"A14B_U2", kA14B, 1, 1, 2, 9, 48, 80},
                      LoopCase{"A14B_R2", kA14B, 1, 2, 1, 9, 48, 80},
                      LoopCase{"A14B_U2R2", kA14B, 1, 2, 2, 9, 48, 80},
                      LoopCase{"A14B_CFG2", kA14B, 2, 1, 1, 9, 48, 80},
                      LoopCase{"A14B_CFG2U2", kA14B, 2, 1, 2, 9, 48, 80},
                      LoopCase{"TI2V_U2R2", kTI2V, 1, 2, 2, 9, 48, 80},
                      LoopCase{"TI2V_CFG2U2", kTI2V, 2, 1, 2, 9, 48, 80},
                      LoopCase{"Euler_CFG2R2", kEuler, 2, 2, 1, 9, 48, 80}),
    [](const ::testing::TestParamInfo<LoopCase>& info) { return info.param.name; });

TEST(WanSamplerTest, TheA14BCasesRunBothExperts) {
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(kA14B);
  UniPCMultistepScheduler scheduler(std::get<UniPCMultistepSchedulerConfig>(p.scheduler));
  const WanSamplerRequest request = testing::TinyWanRequest(kA14B, 9, 48, 80, true);
  ASSERT_TRUE(scheduler.SetTimesteps(request.num_inference_steps).ok());
  int high_noise = 0;
  for (int64_t t : scheduler.timesteps()) high_noise += t >= 875;
  EXPECT_GT(high_noise, 0);
  EXPECT_LT(high_noise, request.num_inference_steps);
}

TEST(WanSamplerTest, MissingPeerIsDeadlineExceededNotInternal) {
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(kT2V);
  ASSERT_NE(p.transformer, nullptr);
  const WanSamplerRequest request = testing::TinyWanRequest(kT2V, 9, 48, 80, false);
  absl::Status rank0 = absl::UnknownError("not run");
  testing::RunOnThreadGroup(
      2,
      [&](int rank, Communicator& world) {
        auto layout = ParallelLayout::Create(1, 2, 1, rank);
        auto group = SplitSequenceParallelGroup(world, *layout);
        if (!group.ok() || rank != 0) return;  // rank 1 "dies" after the split
        rank0 = RunWanSampler(*p.transformer, nullptr, p.pipeline, p.scheduler, request, {},
                              &(*group)->context)
                    .status();
      },
      absl::Milliseconds(300));
  EXPECT_EQ(rank0.code(), absl::StatusCode::kDeadlineExceeded) << rank0;
}

TEST(WanSamplerTest, UlyssesMustDivideTheHeads) {
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(kT2V);
  ASSERT_NE(p.transformer, nullptr);
  auto wide = ParallelLayout::Create(1, 1, 8, 0);  // 4 heads cannot split 8 ways
  ASSERT_TRUE(wide.ok());
  std::vector<std::unique_ptr<Communicator>> comms = testing::CreateThreadCommunicators(8);
  SequenceParallelContext too_wide(*wide);
  too_wide.ulysses = comms[0].get();
  const WanSamplerRequest request = testing::TinyWanRequest(kT2V, 9, 48, 80, false);
  EXPECT_EQ(RunWanSampler(*p.transformer, nullptr, p.pipeline, p.scheduler, request, {}, &too_wide)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dgrid
