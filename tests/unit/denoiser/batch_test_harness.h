// What the continuous-batching tests share (batched_sampler_test.cc for FLUX,
// wan_batched_sampler_test.cc for Wan, step_batcher_test.cc for the engine's batcher, and
// tests/unit/parallel/sp_group_batch_test.cc for a group's leader):
// - BatchSamplerHarness: a batched sampler's members driven step by step: hooks recording each
//   member's step reports, draining a batch into results by member id, each member's latents
//   against its lone run, thresholds for step-cached members, and the scenarios that read the same
//   for every family (a non-finite member, cached members mixed, joining and leaving, threshold 0).
// - Tracked, EnqueueTracked and EnqueueWithJoiners: requests through a DenoiserEngine, joining a
//   running one at a step boundary, waited on by events.
#ifndef DGRID_TESTS_UNIT_DENOISER_BATCH_TEST_HARNESS_H_
#define DGRID_TESTS_UNIT_DENOISER_BATCH_TEST_HARNESS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/dit_offload_flags.h"
#include "common/step_cache.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/denoiser_engine.h"
#include "tests/unit/denoiser/step_cache_threshold.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid::testing {

// Within this of the largest latent of the lone run: the batched forward's kernels may round a
// batch of B unlike a batch of 1, and CFG scales that difference by its scale.
inline constexpr double kBatchTolerance = 1e-5;

// 0, 1, ..., n - 1: a member's step reports (0-based).
inline std::vector<int> Range(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

// 1, 2, ..., n: a request's step reports through the engine (1-based).
inline std::vector<int> OneTo(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i + 1;
  return v;
}

// `got` within kBatchTolerance of `want`, relative to the largest latent of `want`, as the
// sequence-parallel tests measure their 1e-5.
inline void ExpectClose(const absl::StatusOr<at::Tensor>& got, const at::Tensor& want,
                        const std::string& what) {
  ASSERT_TRUE(got.ok()) << what << ": " << got.status();
  ASSERT_TRUE(want.defined()) << what;
  ASSERT_EQ(got->sizes(), want.sizes()) << what;
  const double error = RelativeError(*got, want);
  EXPECT_LE(error, kBatchTolerance) << what << " differs from its lone run by " << error;
}

using BatchResults = std::map<int64_t, absl::StatusOr<at::Tensor>>;

// One step of `batch`; the members that ended go into `results`.
inline void StepInto(BatchedSampler& batch, BatchResults& results) {
  for (BatchedSampler::Ended& e : batch.Step()) results.emplace(e.id, std::move(e.result));
}

// Steps `batch` until it is empty (at most `max_steps` steps); the results by member id.
inline BatchResults Drain(BatchedSampler& batch, int max_steps = 100) {
  BatchResults out;
  for (int i = 0; i < max_steps && batch.size() > 0; ++i) StepInto(batch, out);
  return out;
}

// Steps `batch` until it is empty (at most `max_steps` steps), results into `results`; per step,
// what `observed` holds after it (cleared before each step; an observer of the model fills it).
template <typename T>
std::vector<std::vector<T>> DrainObserving(BatchedSampler& batch, std::vector<T>& observed,
                                           BatchResults& results, int max_steps = 10) {
  std::vector<std::vector<T>> per_step;
  while (batch.size() > 0 && static_cast<int>(per_step.size()) < max_steps) {
    observed.clear();
    StepInto(batch, results);
    per_step.push_back(observed);
  }
  return per_step;
}

// Puts `model`'s blocks (a FLUX or Wan transformer) under layerwise offload on the CPU, which
// computes as the plain model, bit for bit, and calls `on_block(layer)` for every block a forward
// hands to compute.
template <typename Model>
void ObserveBlocks(Model& model, std::function<void(int64_t layer)> on_block) {
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok()) << offload.status();
  ASSERT_TRUE(model.OffloadBlocks("cpu", *offload).ok());
  model.SetOffloadObserverForTesting(
      [on_block = std::move(on_block)](int64_t layer, const std::vector<int64_t>&) {
        on_block(layer);
      });
}

// A fixture's base for a family's batched sampler (CRTP). `Derived` provides
//   at::Tensor Alone(const Request&, std::vector<int>* skipped = nullptr) const;  // the lone run
//   Sampler NewBatch() const;  // an empty batch with AddRequest(id, const Request&, SamplerHooks)
template <typename Derived, typename Request>
class BatchSamplerHarness {
 protected:
  // Hooks recording member `id`'s step reports (and optionally stopping it before step `stop`).
  SamplerHooks Recording(int64_t id, int stop = -1) {
    SamplerHooks h;
    h.on_step = [this, id](int step, int total, double seconds) {
      EXPECT_GE(seconds, 0.0);
      steps_[id].push_back(step);
      totals_[id] = total;
    };
    h.on_cached_step = [this, id](int step) {
      // Reported before the step's on_step, as the lone loop reports it.
      EXPECT_EQ(static_cast<int>(steps_[id].size()), step);
      skipped_[id].push_back(step);
    };
    if (stop >= 0) {
      h.is_cancelled = [this, id, stop] { return static_cast<int>(steps_[id].size()) >= stop; };
    }
    return h;
  }

  // Recording(id) whose cancellation poll throws "a hook failed" once the member ran `steps`.
  SamplerHooks Throwing(int64_t id, size_t steps) {
    SamplerHooks h = Recording(id);
    h.is_cancelled = [this, id, steps] {
      if (steps_[id].size() == steps) TORCH_CHECK(false, "a hook failed");
      return false;
    };
    return h;
  }

  // `r` with `method` at a threshold far from every decision of its lone run
  // (step_cache_threshold.h), at which it skips `skipped`.
  Request Moderate(Request r, StepCacheMethod method, std::vector<int>& skipped) const {
    r.cache = Cache(method, 0, 0, 0);
    r.cache.threshold = ModerateThreshold(
        [&](double t) {
          Request q = r;
          q.cache.threshold = t;
          std::vector<int> s;
          self().Alone(q, &s);
          return s;
        },
        skipped);
    return r;
  }

  // Adds `requests` as members 0, 1, ... with Recording hooks.
  template <typename Sampler>
  void AddRecorded(Sampler& batch, const std::vector<Request>& requests) {
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(batch.AddRequest(static_cast<int64_t>(i), requests[i], Recording(i)).ok());
    }
  }

  // Member i of `results` is requests[i]'s lone run.
  void ExpectEachAlone(const BatchResults& results, const std::vector<Request>& requests) const {
    ASSERT_EQ(results.size(), requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      ExpectClose(results.at(i), self().Alone(requests[i]), requests[i].request_id);
    }
  }

  // After refusals, `batch` holds only `a` (member 0), which ends as alone.
  template <typename Sampler>
  void ExpectOnlyMemberEndsAlone(Sampler& batch, const Request& a) {
    EXPECT_EQ(batch.size(), 1);
    auto results = Drain(batch);
    ASSERT_EQ(results.size(), 1u);
    ExpectClose(results.at(0), self().Alone(a), "a");
  }

  // `poisoned` (non-finite embeddings) fails with INTERNAL at the end; `a` ends as alone.
  void ExpectNonFiniteMemberFailsAlone(const Request& a, const Request& poisoned) {
    auto batch = self().NewBatch();
    ASSERT_TRUE(batch.AddRequest(0, a, {}).ok());
    ASSERT_TRUE(batch.AddRequest(1, poisoned, {}).ok());
    auto results = Drain(batch);
    ExpectClose(results.at(0), self().Alone(a), "a");
    EXPECT_EQ(results.at(1).status().code(), absl::StatusCode::kInternal) << results.at(1).status();
  }

  // An uncached, an fbcache and a teacache member (Moderate thresholds: their lone runs skip
  // `fb_alone` and `tea_alone`) each end as alone, skipping what they skip alone.
  void ExpectCachedMixAsAlone(const Request& plain, const Request& fb,
                              const std::vector<int>& fb_alone, const Request& tea,
                              const std::vector<int>& tea_alone) {
    ASSERT_FALSE(fb_alone.empty());
    ASSERT_FALSE(tea_alone.empty());
    auto batch = self().NewBatch();
    ASSERT_TRUE(batch.AddRequest(0, plain, Recording(0)).ok());
    ASSERT_TRUE(batch.AddRequest(1, fb, Recording(1)).ok());
    ASSERT_TRUE(batch.AddRequest(2, tea, Recording(2)).ok());
    auto results = Drain(batch);
    ASSERT_EQ(results.size(), 3u);
    ExpectClose(results.at(0), self().Alone(plain), "plain");
    ExpectClose(results.at(1), self().Alone(fb), "fb");
    ExpectClose(results.at(2), self().Alone(tea), "tea");
    EXPECT_TRUE(skipped_[0].empty());
    EXPECT_EQ(skipped_[1], fb_alone);
    EXPECT_EQ(skipped_[2], tea_alone);
    EXPECT_EQ(steps_[0], Range(plain.num_inference_steps));
    EXPECT_EQ(steps_[1], Range(fb.num_inference_steps));
    EXPECT_EQ(steps_[2], Range(tea.num_inference_steps));
  }

  // plain (0), tea (1) and `gone` (3: fbcache at a huge threshold, cancelled before its step 5)
  // start; fb (2) joins after two steps. The others end as alone, skipping what they skip alone;
  // gone skipped every step it ran after the first.
  void ExpectCachedJoiningAndLeaving(const Request& plain, const Request& tea,
                                     const std::vector<int>& tea_alone, const Request& fb,
                                     const std::vector<int>& fb_alone, const Request& gone) {
    auto batch = self().NewBatch();
    ASSERT_TRUE(batch.AddRequest(0, plain, Recording(0)).ok());
    ASSERT_TRUE(batch.AddRequest(1, tea, Recording(1)).ok());
    ASSERT_TRUE(batch.AddRequest(3, gone, Recording(3, /*stop=*/4)).ok());  // leaves before step 5
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(batch.Step().empty());
    ASSERT_TRUE(batch.AddRequest(2, fb, Recording(2)).ok());  // joins at a step boundary
    auto results = Drain(batch);
    ExpectClose(results.at(0), self().Alone(plain), "plain");
    ExpectClose(results.at(1), self().Alone(tea), "tea");
    ExpectClose(results.at(2), self().Alone(fb), "fb");
    EXPECT_EQ(results.at(3).status().code(), absl::StatusCode::kCancelled)
        << results.at(3).status();
    EXPECT_EQ(steps_[3], Range(4));
    EXPECT_EQ(skipped_[3], (std::vector<int>{1, 2, 3}));  // every step it ran after the first
    EXPECT_EQ(skipped_[1], tea_alone);
    EXPECT_EQ(skipped_[2], fb_alone);
    EXPECT_TRUE(skipped_[0].empty());
  }

  // `plain` (three requests) batched uncached, and with members 1 (fbcache) and 2 (teacache) at
  // threshold 0: bit for bit the same, nothing skipped.
  void ExpectThresholdZeroBitwise(const std::vector<Request>& plain) {
    ASSERT_EQ(plain.size(), 3u);
    std::vector<Request> cached = plain;
    cached[1].cache = Cache(StepCacheMethod::kFirstBlock, 0, 0, 0);
    cached[2].cache = Cache(StepCacheMethod::kTeaCache, 0, 0, 0);
    auto uncached_batch = self().NewBatch();
    auto cached_batch = self().NewBatch();
    for (size_t i = 0; i < plain.size(); ++i) {
      ASSERT_TRUE(uncached_batch.AddRequest(static_cast<int64_t>(i), plain[i], {}).ok());
      ASSERT_TRUE(cached_batch.AddRequest(static_cast<int64_t>(i), cached[i], Recording(i)).ok());
    }
    auto want = Drain(uncached_batch);
    auto got = Drain(cached_batch);
    for (int64_t i = 0; i < 3; ++i) {
      ASSERT_TRUE(want.at(i).ok() && got.at(i).ok()) << i;
      EXPECT_TRUE(at::equal(*got.at(i), *want.at(i))) << plain[i].request_id;
      EXPECT_TRUE(skipped_[i].empty());
    }
  }

  // Members 0 (`a`) and 1 (`b`) of a drained batch end as alone, skipping `a_skips` and `b_skips`
  // as they do alone.
  void ExpectPairSkipsAsAlone(const BatchResults& results, const Request& a, const Request& b,
                              const std::vector<int>& a_skips, const std::vector<int>& b_skips) {
    std::vector<int> a_alone, b_alone;
    ExpectClose(results.at(0), self().Alone(a, &a_alone), "a");
    ExpectClose(results.at(1), self().Alone(b, &b_alone), "b");
    EXPECT_EQ(skipped_[0], a_alone);
    EXPECT_EQ(skipped_[1], b_alone);
    EXPECT_EQ(a_alone, a_skips);
    EXPECT_EQ(b_alone, b_skips);
  }

  std::map<int64_t, std::vector<int>> steps_;    // each member's step reports
  std::map<int64_t, int> totals_;                // each member's reported step count
  std::map<int64_t, std::vector<int>> skipped_;  // each member's steps its cache skipped

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

// --- The engine (--max-batch) ---

// One enqueued request's outcome and step reports, and what a test does after its steps.
struct Tracked {
  absl::Notification done;
  absl::StatusOr<at::Tensor> result = absl::UnknownError("not done");
  absl::Mutex mutex;
  std::vector<int> steps ABSL_GUARDED_BY(mutex);
  std::vector<int> skipped ABSL_GUARDED_BY(mutex);  // steps its step cache skipped (1-based)
  std::function<void(int step)> after_step;         // on the lane, after the step is recorded

  int steps_done() {
    absl::MutexLock lock(&mutex);
    return static_cast<int>(steps.size());
  }
  std::vector<int> Steps() {
    absl::MutexLock lock(&mutex);
    return steps;
  }
  std::vector<int> Skipped() {
    absl::MutexLock lock(&mutex);
    return skipped;
  }
};

// An engine on the CPU in float32 over `model_path` (--max-batch `max_batch`, edf if `edf`).
inline std::unique_ptr<DenoiserEngine> CpuEngine(const std::string& model_path, int max_batch,
                                                 bool edf = false) {
  DenoiserEngineOptions options;
  options.model_path = model_path;
  options.load.device = "cpu";
  options.load.floating_dtype = "float32";
  options.max_batch = max_batch;
  options.earliest_deadline_first = edf;
  auto engine = DenoiserEngine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// Enqueues `input` on `engine`, recording its outcome, steps and skipped steps in `t`.
inline void EnqueueTracked(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
  const absl::Status queued = engine.Enqueue(
      input,
      [&t](int step, int, double seconds) {
        EXPECT_GE(seconds, 0.0);
        {
          absl::MutexLock lock(&t.mutex);
          t.steps.push_back(step);
        }
        if (t.after_step) t.after_step(step);
      },
      [&t](absl::StatusOr<at::Tensor> result) {
        t.result = std::move(result);
        t.done.Notify();
      },
      /*on_preview=*/nullptr,
      [&t](int step) {
        absl::MutexLock lock(&t.mutex);
        t.skipped.push_back(step);
      });
  ASSERT_TRUE(queued.ok()) << queued;
}

// A request that arrives while another runs: its input and what tracks it.
struct Joiner {
  const DenoiseInput* input;
  Tracked* tracked;
};

// Enqueues `lead` (tracked by `lead_t`); after the lead's first step the `joiners` arrive, and the
// lead's lane waits until they wait in the batcher, so that they can join before its next step.
// `batched` (optional) gets, after each of the lead's steps, the requests in batches. An
// after_step already set on `lead_t` runs after that, on each step.
inline void EnqueueWithJoiners(DenoiserEngine& engine, const DenoiseInput& lead, Tracked& lead_t,
                               std::vector<Joiner> joiners, std::map<int, int>* batched = nullptr) {
  lead_t.after_step = [&engine, joiners = std::move(joiners), batched,
                       then = std::move(lead_t.after_step)](int step) {
    if (step == 1) {
      for (const Joiner& j : joiners) EnqueueTracked(engine, *j.input, *j.tracked);
      engine.batcher()->AwaitWaiting(static_cast<int>(joiners.size()));
    }
    if (batched != nullptr) (*batched)[step] = engine.batcher()->batched();
    if (then) then(step);
  };
  EnqueueTracked(engine, lead, lead_t);
}

// Waits for `t` to end (`bound` only turns a hang into a failure).
inline void WaitEnded(Tracked& t, absl::Duration bound = absl::Seconds(120)) {
  ASSERT_TRUE(t.done.WaitForNotificationWithTimeout(bound)) << "never ended";
}

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_DENOISER_BATCH_TEST_HARNESS_H_
