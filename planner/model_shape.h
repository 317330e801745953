// The shape of a diffusion transformer as the planner needs it: layer counts, width, heads, text
// length, and how a request's resolution becomes a token count. The shapes, their FLOP and weight
// counts belong to the model families (families/); this is the planner's view of them. Known
// shapes by name ("flux-dev", "flux-schnell", families::KnownShapeNames) or read from a Diffusers
// model folder (transformer/config.json, read by the family model_index.json's "_class_name"
// names; the default family without a model_index.json).
//
// Plain values; thread-compatible. Errors: NOT_FOUND for an unknown name or a folder without
// transformer/config.json, INVALID_ARGUMENT naming the bad config field or an unserved class.
#ifndef DGRID_PLANNER_MODEL_SHAPE_H_
#define DGRID_PLANNER_MODEL_SHAPE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "families/model_family.h"

namespace dgrid::planner {

using ModelShape = families::TransformerShape;

// Names accepted by LookupModelShape.
std::vector<std::string> KnownModelShapes();
absl::StatusOr<ModelShape> LookupModelShape(absl::string_view name);
// The default family's default shape ("flux-dev"): what placement and planning assume when no
// model is named.
ModelShape DefaultModelShape();
// `dir` is a Diffusers pipeline folder (reads transformer/config.json) or a transformer folder
// (config.json). The text length is the family's default (FLUX.1-dev's T5 limit, 512).
absl::StatusOr<ModelShape> ReadModelShape(const std::string& dir);
// A known name, else a folder.
absl::StatusOr<ModelShape> ResolveModelShape(const std::string& name_or_dir);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_MODEL_SHAPE_H_
