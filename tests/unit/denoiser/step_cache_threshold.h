// What the step-cache batching tests share (wan_batched_sampler_test.cc, the group batch tests in
// tests/unit/parallel): a threshold at which a request's lone run skips some steps, but not every
// step the rules allow (so its own measured changes decide), and skips the same steps at 0.95x and
// 1.05x of it. Equal decisions mean equal histories, so every change the run compared with the
// threshold lies outside [0.95x, 1.05x) of it: rounding (a batch's, a group's: about 1e-6 of the
// latents) cannot flip a decision, and a batched member must skip exactly the same steps.
#ifndef DGRID_TESTS_UNIT_DENOISER_STEP_CACHE_THRESHOLD_H_
#define DGRID_TESTS_UNIT_DENOISER_STEP_CACHE_THRESHOLD_H_

#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "common/step_cache.h"

namespace dgrid::testing {

// A step-cache setting with every field given.
inline StepCacheConfig Cache(StepCacheMethod method, double threshold, int warmup_steps,
                             int max_skip) {
  StepCacheConfig c;
  c.method = method;
  c.threshold = threshold;
  c.warmup_steps = warmup_steps;
  c.max_skip = max_skip;
  return c;
}

// `skipped_at(t)`: the steps the lone run skips at threshold t. Returns the threshold and sets
// `skipped` to its steps; 0 and a test failure when there is none below 100. Searches from the
// lowest power of two that skips a step, upwards from half of it in steps of 10%.
inline double ModerateThreshold(const std::function<std::vector<int>(double)>& skipped_at,
                                std::vector<int>& skipped) {
  const std::vector<int> every = skipped_at(1e9);
  double start = 1.0 / 1024;
  while (start < 100 && skipped_at(start).empty()) start *= 2;
  for (double t = start / 2; t < 100; t *= 1.1) {
    const std::vector<int> at_t = skipped_at(t);
    if (at_t.empty() || at_t == every) continue;
    if (skipped_at(0.95 * t) != at_t || skipped_at(1.05 * t) != at_t) continue;
    skipped = at_t;
    return t;
  }
  ADD_FAILURE() << "no threshold far from every decision";
  return 0;
}

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_DENOISER_STEP_CACHE_THRESHOLD_H_
