// A request mix to plan and simulate for: classes of requests (size, steps, CFG) with their share
// of traffic, an arrival rate and the SLO factor the plan is scored at.
//
// JSON form:
//   {"arrival_rate_per_s": 1.5, "slo_factor": 1.2,
//    "classes": [{"name": "512", "width": 512, "height": 512, "steps": 28, "cfg": false,
//                 "frames": 1, "share": 0.4}, ...]}
// "frames" (a video's frames, default 1) makes a class a video request; "cache" and
// "skipped_steps" (ReadStepCacheFields) make it a step-cached one.
// arrival_rate_per_s may be omitted or 0 (the planner then uses 60% of the cluster's SP=1
// throughput); shares are normalised to sum 1.
//
// Plain values; thread-compatible. Errors: INVALID_ARGUMENT naming the field.
#ifndef DGRID_PLANNER_WORKLOAD_H_
#define DGRID_PLANNER_WORKLOAD_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"

namespace dgrid::planner {

struct RequestClass {
  std::string name;
  RequestShape shape;
  double share = 1;
};

struct Workload {
  std::vector<RequestClass> classes;
  double arrival_rate_per_s = 0;
  double slo_factor = 1.2;
};

// The mix: 512^2, 1024^2 and 2048^2 (40/40/20%), each half with true CFG, the default
// family's steps (28, FLUX.1). A class that gives no "steps" gets those too.
Workload DefaultMixedWorkload();
// The mix planned for `model` when none is given: DefaultMixedWorkload for an image family; for a
// video family its default request (Wan: 832x480, 81 frames, 50 steps, CFG) at 60% and the same
// at 1280x720 at 40%.
Workload DefaultWorkloadFor(const ModelShape& model);

absl::StatusOr<Workload> ParseWorkloadJson(absl::string_view text);
// A class's or trace line's step-cache fields into `shape` (RequestShape::cache): "cache", a
// setting as `dgrid generate --cache` takes it ("fbcache", "teacache:0.4", "none"; only the
// method matters here), and "skipped_steps" (default 0: the result's count, below "steps"; needs
// a cache). Call after `shape->steps` is read. INVALID_ARGUMENT "<path>.cache: ..." /
// "<path>.skipped_steps: ...".
absl::Status ReadStepCacheFields(const nlohmann::json& object, const std::string& path,
                                 RequestShape* shape);
absl::StatusOr<Workload> ReadWorkloadFile(const std::string& path);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_WORKLOAD_H_
