#include "planner/workload.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "families/registry.h"
#include "planner/json_fields.h"

namespace dgrid::planner {

Workload DefaultMixedWorkload() {
  Workload w;
  for (const auto& [side, share] : {std::pair<int, double>{512, 0.4}, {1024, 0.4}, {2048, 0.2}}) {
    for (bool cfg : {false, true}) {
      RequestClass c;
      c.name = absl::StrCat(side, cfg ? "-cfg" : "");
      c.shape.width = side;
      c.shape.height = side;
      c.shape.steps = families::DefaultFamily().defaults().steps;
      c.shape.cfg = cfg;
      c.share = share / 2;
      w.classes.push_back(c);
    }
  }
  return w;
}

Workload DefaultWorkloadFor(const ModelShape& model) {
  const families::ModelFamily& family = families::FamilyOf(model);
  const families::GenerationDefaults& d = family.defaults();
  if (!d.makes_video()) return DefaultMixedWorkload();
  Workload w;
  const bool cfg = family.RunsCfg(d.guidance_scale, d.true_cfg_scale);
  for (const auto& [size, share] :
       {std::pair<std::pair<int, int>, double>{{d.width, d.height}, 0.6}, {{1280, 720}, 0.4}}) {
    RequestClass c;
    c.shape.width = size.first;
    c.shape.height = size.second;
    c.shape.frames = d.num_frames;
    c.shape.steps = d.steps;
    c.shape.cfg = cfg;
    c.name = absl::StrCat(size.first, "x", size.second, "x", d.num_frames, cfg ? "-cfg" : "");
    c.share = share;
    w.classes.push_back(c);
  }
  return w;
}

absl::StatusOr<Workload> ParseWorkloadJson(absl::string_view text) {
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(text, "workload"));
  Workload w;
  const families::GenerationDefaults& defaults = families::DefaultFamily().defaults();
  const int multiple = defaults.size_multiple();
  const double zero = 0, default_slo = 1.2;
  ASSIGN_OR_RETURN(w.arrival_rate_per_s, NumberField(json, "", "arrival_rate_per_s", &zero));
  if (w.arrival_rate_per_s < 0) {
    return absl::InvalidArgumentError("arrival_rate_per_s: must be >= 0");
  }
  ASSIGN_OR_RETURN(w.slo_factor, NumberField(json, "", "slo_factor", &default_slo));
  if (w.slo_factor < 1) return absl::InvalidArgumentError("slo_factor: must be >= 1");
  ASSIGN_OR_RETURN(const nlohmann::json* classes, ArrayField(json, "", "classes"));
  if (classes->empty()) return absl::InvalidArgumentError("classes: empty");
  double total = 0;
  for (size_t i = 0; i < classes->size(); ++i) {
    const std::string path = absl::StrCat("classes[", i, "]");
    const nlohmann::json& c = (*classes)[i];
    RequestClass rc;
    const int default_steps = defaults.steps;
    const bool no_cfg = false;
    const double one = 1;
    ASSIGN_OR_RETURN(rc.shape.width, IntField(c, path, "width"));
    ASSIGN_OR_RETURN(rc.shape.height, IntField(c, path, "height"));
    ASSIGN_OR_RETURN(rc.shape.steps, IntField(c, path, "steps", &default_steps));
    ASSIGN_OR_RETURN(rc.shape.cfg, BoolField(c, path, "cfg", &no_cfg));
    const int one_frame = 1;
    ASSIGN_OR_RETURN(rc.shape.frames, IntField(c, path, "frames", &one_frame));
    if (rc.shape.frames < 1) return absl::InvalidArgumentError(path + ".frames: must be >= 1");
    ASSIGN_OR_RETURN(rc.share, NumberField(c, path, "share", &one));
    if (rc.shape.steps < 1) return absl::InvalidArgumentError(path + ".steps: must be >= 1");
    RETURN_IF_ERROR(ReadStepCacheFields(c, path, &rc.shape));
    const std::string default_name = absl::StrCat(
        rc.shape.width, "x", rc.shape.height,
        rc.shape.frames > 1 ? absl::StrCat("x", rc.shape.frames) : "", rc.shape.cfg ? "-cfg" : "",
        rc.shape.cache.empty()
            ? ""
            : absl::StrCat("-", rc.shape.cache, "-", rc.shape.skipped_steps, "skipped"));
    ASSIGN_OR_RETURN(rc.name, StringField(c, path, "name", &default_name));
    if (rc.shape.width < multiple || rc.shape.height < multiple || rc.shape.width % multiple != 0 ||
        rc.shape.height % multiple != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".width/height: must be positive multiples of ", multiple));
    }
    if (rc.shape.steps < 1) return absl::InvalidArgumentError(path + ".steps: must be >= 1");
    if (rc.share <= 0) return absl::InvalidArgumentError(path + ".share: must be > 0");
    total += rc.share;
    w.classes.push_back(std::move(rc));
  }
  for (RequestClass& c : w.classes) c.share /= total;
  return w;
}

absl::Status ReadStepCacheFields(const nlohmann::json& object, const std::string& path,
                                 RequestShape* shape) {
  const std::string none = "none";
  const int zero = 0;
  ASSIGN_OR_RETURN(std::string setting, StringField(object, path, "cache", &none));
  const std::string method(setting.substr(0, setting.find(':')));
  if (method == "none" || method.empty()) {
    shape->cache.clear();
  } else if (method == "fbcache" || method == "teacache") {
    shape->cache = method;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".cache: '", setting, "': the method must be none, fbcache or teacache"));
  }
  ASSIGN_OR_RETURN(shape->skipped_steps, IntField(object, path, "skipped_steps", &zero));
  if (shape->skipped_steps < 0 || shape->skipped_steps >= shape->steps) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".skipped_steps: must be in [0, ", shape->steps - 1, "] (below steps)"));
  }
  if (shape->skipped_steps > 0 && shape->cache.empty()) {
    return absl::InvalidArgumentError(path + ".skipped_steps: needs a cache method in .cache");
  }
  return absl::OkStatus();
}

absl::StatusOr<Workload> ReadWorkloadFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  absl::StatusOr<Workload> w = ParseWorkloadJson(text);
  if (!w.ok())
    return absl::Status(w.status().code(), absl::StrCat(path, ": ", w.status().message()));
  return w;
}

}  // namespace dgrid::planner
