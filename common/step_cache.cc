#include "common/step_cache.h"

#include <cmath>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid {
namespace {

absl::StatusOr<StepCacheMethod> ParseMethod(absl::string_view name) {
  if (name.empty() || name == "none") return StepCacheMethod::kNone;
  if (name == "fbcache") return StepCacheMethod::kFirstBlock;
  if (name == "teacache") return StepCacheMethod::kTeaCache;
  return InvalidArgument("unknown method '", name, "' (none, fbcache or teacache)");
}

// The checks StepCacheFromProto and ParseStepCacheSpec share; `prefix` names the field ("cache."
// or "--cache X: ").
absl::Status CheckConfig(const StepCacheConfig& c, absl::string_view prefix) {
  if (!std::isfinite(c.threshold) || c.threshold < 0) {
    return InvalidArgument(prefix, "threshold: ", c.threshold, " must be a finite number >= 0");
  }
  if (c.warmup_steps < 0) {
    return InvalidArgument(prefix, "warmup_steps: ", c.warmup_steps, " must be >= 0");
  }
  if (c.max_skip < 0) {
    return InvalidArgument(prefix, "max_skip: ", c.max_skip, " must be >= 0 (0: no limit)");
  }
  return absl::OkStatus();
}

}  // namespace

const char* StepCacheMethodName(StepCacheMethod method) {
  switch (method) {
    case StepCacheMethod::kFirstBlock:
      return "fbcache";
    case StepCacheMethod::kTeaCache:
      return "teacache";
    case StepCacheMethod::kNone:
      break;
  }
  return "none";
}

double DefaultStepCacheThreshold(StepCacheMethod method) {
  switch (method) {
    case StepCacheMethod::kFirstBlock:
      return 0.08;
    case StepCacheMethod::kTeaCache:
      return 0.25;
    case StepCacheMethod::kNone:
      break;
  }
  return 0;
}

absl::StatusOr<StepCacheConfig> StepCacheFromProto(const v1::StepCache& proto) {
  StepCacheConfig c;
  absl::StatusOr<StepCacheMethod> method = ParseMethod(proto.method());
  if (!method.ok()) return InvalidArgument("cache.method: ", method.status().message());
  c.method = *method;
  c.threshold = proto.has_threshold() ? proto.threshold() : DefaultStepCacheThreshold(c.method);
  c.warmup_steps = proto.warmup_steps();
  c.max_skip = proto.max_skip();
  RETURN_IF_ERROR(CheckConfig(c, "cache."));
  return c;
}

void StepCacheToProto(const StepCacheConfig& config, v1::StepCache* proto) {
  proto->set_method(StepCacheMethodName(config.method));
  proto->set_threshold(static_cast<float>(config.threshold));
  proto->set_warmup_steps(config.warmup_steps);
  proto->set_max_skip(config.max_skip);
}

absl::StatusOr<StepCacheConfig> ParseStepCacheSpec(absl::string_view spec, absl::string_view flag) {
  const std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  const std::string prefix = absl::StrCat(flag, ": '", spec, "': ");
  if (parts.size() > 4) {
    return InvalidArgument(prefix, "expected METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]]");
  }
  StepCacheConfig c;
  absl::StatusOr<StepCacheMethod> method = ParseMethod(parts[0]);
  if (!method.ok()) return InvalidArgument(prefix, method.status().message());
  c.method = *method;
  c.threshold = DefaultStepCacheThreshold(c.method);
  if (parts.size() > 1 && !absl::SimpleAtod(parts[1], &c.threshold)) {
    return InvalidArgument(prefix, "threshold '", parts[1], "' is not a number");
  }
  if (parts.size() > 2 && !absl::SimpleAtoi(parts[2], &c.warmup_steps)) {
    return InvalidArgument(prefix, "warmup_steps '", parts[2], "' is not an integer");
  }
  if (parts.size() > 3 && !absl::SimpleAtoi(parts[3], &c.max_skip)) {
    return InvalidArgument(prefix, "max_skip '", parts[3], "' is not an integer");
  }
  RETURN_IF_ERROR(CheckConfig(c, prefix));
  return c;
}

std::string StepCacheSpec(const StepCacheConfig& config) {
  if (!config.enabled()) return "none";
  return absl::StrCat(StepCacheMethodName(config.method), ":", config.threshold, ":",
                      config.warmup_steps, ":", config.max_skip);
}

}  // namespace dgrid
