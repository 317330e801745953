// Step-level batching of Wan on a denoiser group (thread test seam): WanBatchedSampler with the
// group's SequenceParallelContext on every rank (Wan2.1 T2V on U2, R2, CFG2 and U2R2CFG2; Wan2.2
// A14B on U2, R2 and CFG2) runs a batch mixing prompts, seeds, step counts and guidance, with a
// member joining after the first step and one cancelled before its third; every member ends with
// its lone group run's latents (RunWanSampler with the context, within 1e-5 of the largest
// latent) and with one process's lone run's latents (within the sequence-parallel tests' 1e-5),
// on every rank alike.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/parallel/sp_batch_harness.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::RelativeError;
using testing::TinyWanVariant;

constexpr double kTolerance = 1e-5;
constexpr int64_t kCancelled = testing::kBatchCancelled;

struct Case {
  std::string name;
  TinyWanVariant variant;
  int cfg, ring, ulysses;
};

// Four requests of one batch key (9 frames of 48x80 pixels: 3x3x5 tokens, padded on every
// layout; guidance against the tiny request's negative text length).
std::map<int64_t, WanSamplerRequest> Requests(TinyWanVariant variant) {
  std::map<int64_t, WanSamplerRequest> r;
  r[0] = testing::TinyWanRequest(variant, 9, 48, 80, /*cfg=*/true);
  for (int64_t id = 1; id < 4; ++id) {
    WanSamplerRequest q = testing::TinyWanRequest(variant, 9, 48, 80, /*cfg=*/true);
    at::manual_seed(100 + id);  // another prompt
    q.request_id = "member-" + std::to_string(id);
    q.prompt_embeds = at::randn({1, 7, 24});
    q.negative_prompt_embeds = at::randn({1, 5, 24});
    q.seed = 7 * id;
    q.num_inference_steps += static_cast<int>(id) - 1;
    q.guidance_scale = 2.0 + 1.5 * static_cast<double>(id);
    if (variant == TinyWanVariant::kA14B) q.guidance_scale_2 = 1.5 + static_cast<double>(id);
    r[id] = q;
  }
  return r;
}

// Runs fn(rank, context) on the case's group of threads.
void OnGroup(const Case& c, const std::function<void(int, const SequenceParallelContext&)>& fn) {
  testing::RunOnLayoutGroup(c.cfg, c.ring, c.ulysses, fn);
}

class WanGroupBatchTest : public ::testing::TestWithParam<Case> {};

TEST_P(WanGroupBatchTest, EveryMemberMatchesItsLoneGroupRun) {
  at::set_num_threads(1);  // rank threads on a 2-core CI machine
  const Case c = GetParam();
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(c.variant);
  ASSERT_NE(p.transformer, nullptr);
  const int size = c.cfg * c.ring * c.ulysses;
  const std::map<int64_t, WanSamplerRequest> requests = Requests(c.variant);
  std::mutex mu;
  // [rank][id]
  std::vector<std::map<int64_t, absl::StatusOr<at::Tensor>>> batched(size), alone(size);

  OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
    WanBatchedSampler batch(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, nullptr,
                            &sp);
    auto mine = testing::RunJoiningBatch(batch, [&](int64_t id, SamplerHooks hooks) {
      return batch.AddRequest(id, requests.at(id), std::move(hooks));
    });
    std::lock_guard<std::mutex> lock(mu);
    batched[rank] = std::move(mine);
  });
  for (const auto& [id, request] : requests) {
    if (id == kCancelled) continue;
    OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
      absl::StatusOr<at::Tensor> latents = RunWanSampler(*p.transformer, p.transformer_2.get(),
                                                         p.pipeline, p.scheduler, request, {}, &sp);
      std::lock_guard<std::mutex> lock(mu);
      alone[rank].insert_or_assign(id, std::move(latents));
    });
  }

  for (int rank = 0; rank < size; ++rank) {
    ASSERT_EQ(batched[rank].count(kCancelled), 1u) << c.name << " rank " << rank;
    const absl::StatusOr<at::Tensor>& cancelled = batched[rank].at(kCancelled);
    EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled)
        << c.name << " rank " << rank << ": " << cancelled.status();
    for (const auto& [id, request] : requests) {
      if (id == kCancelled) continue;
      ASSERT_EQ(batched[rank].count(id), 1u) << c.name << " rank " << rank << " member " << id;
      const absl::StatusOr<at::Tensor>& got = batched[rank].at(id);
      const absl::StatusOr<at::Tensor>& want = alone[rank].at(id);
      ASSERT_TRUE(got.ok()) << c.name << " member " << id << ": " << got.status();
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_LE(RelativeError(*got, *want), kTolerance)
          << c.name << " rank " << rank << " member " << id;
      // Every rank ends with the same latents.
      EXPECT_TRUE(at::equal(*got, *batched[0].at(id))) << c.name << " rank " << rank;
    }
  }
  // And one process's lone run.
  for (const auto& [id, request] : requests) {
    if (id == kCancelled) continue;
    auto one =
        RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, request);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_LE(RelativeError(*batched[0].at(id), *one), kTolerance) << c.name << " " << id;
  }
}

constexpr TinyWanVariant kT2V = TinyWanVariant::kT2V;
constexpr TinyWanVariant kA14B = TinyWanVariant::kA14B;

INSTANTIATE_TEST_SUITE_P(
    Layouts, WanGroupBatchTest,
    ::testing::Values(Case{"T2V_U2", kT2V, 1, 1, 2}, Case{"T2V_R2", kT2V, 1, 2, 1},
                      Case{"T2V_CFG2", kT2V, 2, 1, 1}, Case{"T2V_U2R2CFG2", kT2V, 2, 2, 2},
                      Case{"A14B_U2", kA14B, 1, 1, 2}, Case{"A14B_R2", kA14B, 1, 2, 1},
                      Case{"A14B_CFG2", kA14B, 2, 1, 1}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace dgrid
