// Step caching settings of one request (dgrid.v1.StepCache; docs/api.md "Step caching"): which
// method, its threshold, warm-up steps and the longest run of skipped steps. Shared by the
// orchestrator (validation), the denoiser (the loops, its --step-cache default) and the CLI
// (`dgrid generate --cache`). The decision logic itself is services/denoiser/step_cache_policy.h.
//
// Errors are INVALID_ARGUMENT naming the field as the public API spells it ("cache.method",
// "cache.threshold", ...) or, for a spec string, the flag it came from. Nothing here holds state.
#ifndef DGRID_COMMON_STEP_CACHE_H_
#define DGRID_COMMON_STEP_CACHE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {
namespace v1 {
class StepCache;  // dgrid/v1/generation.pb.h
}  // namespace v1

enum class StepCacheMethod {
  kNone,        // off: the loop runs exactly as without caching
  kFirstBlock,  // "fbcache": first-block residual cache
  kTeaCache,    // "teacache": whole-step skip keyed on the modulated input's change
};

struct StepCacheConfig {
  StepCacheMethod method = StepCacheMethod::kNone;
  // >= 0; 0 never skips. The method's default when the request leaves it unset.
  double threshold = 0;
  // Steps always computed at the start (>= 0; the first step is computed in any case).
  int warmup_steps = 0;
  // Longest run of skipped steps in a row; 0: no limit.
  int max_skip = 0;

  bool enabled() const { return method != StepCacheMethod::kNone; }
};

// "none", "fbcache", "teacache".
const char* StepCacheMethodName(StepCacheMethod method);
// The threshold a request that names `method` but no threshold gets: fbcache 0.08 (the value
// ParaAttention's first-block-cache examples use for FLUX.1-dev), teacache 0.25 (TeaCache4FLUX's
// mildest published setting, "0.25 for 1.5x speedup"). 0 for kNone.
double DefaultStepCacheThreshold(StepCacheMethod method);

// The proto as validated settings: INVALID_ARGUMENT "cache.method: ..." for an unknown method,
// "cache.threshold: ..." for a negative or non-finite threshold, "cache.warmup_steps: ..." /
// "cache.max_skip: ..." for negative counts. An unset threshold takes the method's default.
absl::StatusOr<StepCacheConfig> StepCacheFromProto(const v1::StepCache& proto);
// The settings into `proto` (method name; threshold always set).
void StepCacheToProto(const StepCacheConfig& config, v1::StepCache* proto);

// "METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]]" (e.g. "fbcache:0.08", "teacache:0.4:2:3",
// "none") as a flag value; the threshold defaults to the method's. Errors start with `flag`
// ("--cache: 'fbcache:x': threshold 'x' is not a number").
absl::StatusOr<StepCacheConfig> ParseStepCacheSpec(absl::string_view spec, absl::string_view flag);

// "fbcache:0.08:0:0" style text for log lines; "none" when off.
std::string StepCacheSpec(const StepCacheConfig& config);

}  // namespace dgrid

#endif  // DGRID_COMMON_STEP_CACHE_H_
