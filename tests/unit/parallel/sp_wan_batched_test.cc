// Step-level batching of Wan on a denoiser group (thread test seam): WanBatchedSampler with the
// group's SequenceParallelContext on every rank (Wan2.1 T2V on U2, R2, CFG2 and U2R2CFG2; Wan2.2
// A14B on U2, R2 and CFG2) runs a batch mixing prompts, seeds, step counts, guidance and step
// caches (uncached, teacache at a measured threshold, fbcache by its rules), with a cached member
// joining after the first step and a cached one cancelled before its third; every member ends with
// its lone group run's latents (RunWanSampler with the context, within 1e-5 of the largest latent)
// and skipped steps, and with one process's lone run's latents and skipped steps (within the
// sequence-parallel tests' 1e-5), on every rank alike: every rank makes the same step-cache
// decisions.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/step_cache.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/denoiser/step_cache_threshold.h"
#include "tests/unit/parallel/sp_batch_harness.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::RelativeError;
using testing::TinyWanVariant;

constexpr double kTolerance = 1e-5;
constexpr int64_t kJoiner = testing::kBatchJoiner;
constexpr int64_t kCancelled = testing::kBatchCancelled;

struct Outcome {
  absl::StatusOr<at::Tensor> latents = absl::UnknownError("not run");
  std::vector<int> skipped;
};

struct Case {
  std::string name;
  TinyWanVariant variant;
  int cfg, ring, ulysses;
};

// Four requests of one batch key (9 frames of 48x80 pixels: 3x3x5 tokens, padded on every
// layout; guidance against the tiny request's negative text length), on the models of `p`.
std::map<int64_t, WanSamplerRequest> Requests(TinyWanVariant variant,
                                              const testing::TinyWanPipeline& p) {
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
  // Member 1: teacache at a threshold far from every decision of its one-process run
  // (step_cache_threshold.h), so that the group's summed changes (one process's within rounding)
  // decide alike. The others decide by the rules alone (a huge threshold), the group still summing
  // every decision's change (the same collectives as a measured decision).
  r[1].num_inference_steps = 7;
  r[1].cache.method = StepCacheMethod::kTeaCache;
  std::vector<int> skipped;
  r[1].cache.threshold = testing::ModerateThreshold(
      [&](double t) {
        WanSamplerRequest q = r[1];
        q.cache.threshold = t;
        std::vector<int> s;
        WanSamplerHooks hooks;
        hooks.on_cached_step = [&s](int step) { s.push_back(step); };
        EXPECT_TRUE(
            RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, q, hooks)
                .ok());
        return s;
      },
      skipped);
  r[kJoiner].cache.method = StepCacheMethod::kFirstBlock;
  r[kCancelled].cache.method = StepCacheMethod::kFirstBlock;
  for (int64_t id : {kJoiner, kCancelled}) {
    r[id].cache.threshold = 1e9;
    r[id].cache.warmup_steps = id == kCancelled ? 0 : 1;
    r[id].cache.max_skip = id == kCancelled ? 0 : 1;
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
  const std::map<int64_t, WanSamplerRequest> requests = Requests(c.variant, p);
  std::mutex mu;
  // [rank][id]
  std::vector<std::map<int64_t, Outcome>> batched(size), alone(size);

  OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
    std::map<int64_t, Outcome> mine;
    WanBatchedSampler batch(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, nullptr,
                            &sp);
    auto results = testing::RunJoiningBatch(
        batch,
        [&](int64_t id, SamplerHooks hooks) {
          return batch.AddRequest(id, requests.at(id), std::move(hooks));
        },
        [&mine](int64_t id) {
          SamplerHooks hooks;
          hooks.on_cached_step = [&mine, id](int step) { mine[id].skipped.push_back(step); };
          return hooks;
        });
    for (auto& [id, result] : results) mine[id].latents = std::move(result);
    std::lock_guard<std::mutex> lock(mu);
    batched[rank] = std::move(mine);
  });
  for (const auto& [id, request] : requests) {
    if (id == kCancelled) continue;
    OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
      Outcome o;
      WanSamplerHooks hooks;
      hooks.on_cached_step = [&o](int step) { o.skipped.push_back(step); };
      o.latents = RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler,
                                request, hooks, &sp);
      std::lock_guard<std::mutex> lock(mu);
      alone[rank].insert_or_assign(id, std::move(o));
    });
  }

  for (int rank = 0; rank < size; ++rank) {
    ASSERT_EQ(batched[rank].count(kCancelled), 1u) << c.name << " rank " << rank;
    const Outcome& cancelled = batched[rank].at(kCancelled);
    EXPECT_EQ(cancelled.latents.status().code(), absl::StatusCode::kCancelled)
        << c.name << " rank " << rank << ": " << cancelled.latents.status();
    // Two steps before it left, the second skipped (every step after the first), on every rank.
    EXPECT_EQ(cancelled.skipped, (std::vector<int>{1})) << c.name << " rank " << rank;
    for (const auto& [id, request] : requests) {
      if (id == kCancelled) continue;
      ASSERT_EQ(batched[rank].count(id), 1u) << c.name << " rank " << rank << " member " << id;
      const Outcome& got = batched[rank].at(id);
      const Outcome& want = alone[rank].at(id);
      ASSERT_TRUE(got.latents.ok()) << c.name << " member " << id << ": " << got.latents.status();
      ASSERT_TRUE(want.latents.ok()) << want.latents.status();
      EXPECT_LE(RelativeError(*got.latents, *want.latents), kTolerance)
          << c.name << " rank " << rank << " member " << id;
      EXPECT_EQ(got.skipped, want.skipped) << c.name << " rank " << rank << " member " << id;
      // Every rank ends with the same latents and skipped the same steps.
      EXPECT_TRUE(at::equal(*got.latents, *batched[0].at(id).latents))
          << c.name << " rank " << rank;
      EXPECT_EQ(got.skipped, batched[0].at(id).skipped) << c.name << " rank " << rank;
    }
  }
  // And one process's lone run (step caches skip by the rules alone: the same steps).
  for (const auto& [id, request] : requests) {
    if (id == kCancelled) continue;
    std::vector<int> skipped;
    WanSamplerHooks hooks;
    hooks.on_cached_step = [&skipped](int step) { skipped.push_back(step); };
    auto one = RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler,
                             request, hooks);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_LE(RelativeError(*batched[0].at(id).latents, *one), kTolerance) << c.name << " " << id;
    EXPECT_EQ(batched[0].at(id).skipped, skipped) << c.name << " " << id;
  }
  // The cached members did skip steps (so the per-member caches ran with the group's context).
  EXPECT_FALSE(batched[0].at(1).skipped.empty()) << c.name;
  EXPECT_FALSE(batched[0].at(kJoiner).skipped.empty()) << c.name;
  EXPECT_TRUE(batched[0].at(0).skipped.empty()) << c.name;
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
