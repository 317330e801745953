// The shape of a diffusion transformer as the planner needs it: layer counts, width, heads, text
// length, and how a request's resolution becomes a token count. Known shapes by name
// ("flux-dev", "flux-schnell") or read from a Diffusers model folder (transformer/config.json).
//
// Plain values; thread-compatible. Errors: NOT_FOUND for an unknown name or a folder without
// transformer/config.json, INVALID_ARGUMENT naming the bad config field.
#ifndef DGRID_PLANNER_MODEL_SHAPE_H_
#define DGRID_PLANNER_MODEL_SHAPE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::planner {

struct ModelShape {
  std::string name;
  int num_layers = 19;         // double-stream (joint) blocks
  int num_single_layers = 38;  // single-stream blocks
  int num_heads = 24;
  int head_dim = 128;
  int in_channels = 64;  // packed latent channels per token
  int joint_attention_dim = 4096;
  int pooled_projection_dim = 768;
  int text_tokens = 512;
  bool guidance_embeds = true;
  // Pixels per token along each side (VAE factor 8 x patch 2 for FLUX).
  int pixels_per_token = 16;

  int inner_dim() const { return num_heads * head_dim; }
  int attention_layers() const { return num_layers + num_single_layers; }
  int64_t ImageTokens(int width, int height) const;
  // bf16 weights of the transformer, bytes (linear layers only; norms and biases are noise).
  double WeightBytes() const;
};

// Names accepted by LookupModelShape.
std::vector<std::string> KnownModelShapes();
absl::StatusOr<ModelShape> LookupModelShape(absl::string_view name);
// `dir` is a Diffusers pipeline folder (reads transformer/config.json) or a transformer folder
// (config.json). Text length stays 512 (FLUX.1-dev's T5 limit) unless the config says otherwise.
absl::StatusOr<ModelShape> ReadModelShape(const std::string& dir);
// A known name, else a folder.
absl::StatusOr<ModelShape> ResolveModelShape(const std::string& name_or_dir);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_MODEL_SHAPE_H_
