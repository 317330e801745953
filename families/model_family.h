// A model family: the Diffusers pipeline classes it serves, the defaults a request gets, and the
// shape facts of its transformer (token counts, FLOPs, weight bytes) that model limits, request
// validation, placement, the planner and the benchmarks read. Each family is written once, in
// families/<family>/, and found through families/registry.h by model_index.json's "_class_name",
// as diffusers picks a pipeline class.
//
// The stages reach a family's models through their own small interfaces, one implementation per
// family: services/encoder/text_conditioner.h, services/denoiser/family_denoiser.h and
// services/decoder/latent_decoder.h (docs/architecture.md, "Model families").
//
// Contract: a ModelFamily is an immutable object with static storage duration (never destroyed
// before exit); every method is const, has no side effects and may be called from any thread.
// The library is torch-free and gRPC-free.
#ifndef DGRID_FAMILIES_MODEL_FAMILY_H_
#define DGRID_FAMILIES_MODEL_FAMILY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace dgrid::families {

// What a request that names nothing gets, and what a model of the family accepts unless its
// dgrid.json says otherwise (common/model_limits.h). A literal type, so families define theirs
// as constexpr.
struct GenerationDefaults {
  int width = 0;  // pixels
  int height = 0;
  int steps = 0;                // num_inference_steps
  double guidance_scale = 0;    // the pipeline's guidance_scale
  double true_cfg_scale = 1.0;  // classifier-free guidance scale; 1 = off
  int max_width = 0;
  int max_height = 0;
  int max_sequence_length = 0;  // text tokens of a request that names none
  int max_text_tokens = 0;      // the most text tokens a request may ask for
  int vae_scale_factor = 0;     // pixels per latent cell along each side
  // Latent cells per side of a request that names no size (diffusers' default_sample_size): a
  // model's default width and height are sample_size x its VAE's scale factor, as the pipeline
  // computes them. 0: width and height above, whatever the VAE.
  int sample_size = 0;
  int patch_size = 0;  // latent cells per transformer token along each side
  // Frames. An image family keeps 1 / 1 / 1 / 0; a video family has max_num_frames > 1, and
  // num_frames - 1 must be a multiple of frame_step (the VAE's temporal compression).
  int num_frames = 1;
  int max_num_frames = 1;
  int frame_step = 1;
  int fps = 0;
  // The most frames x width x height one request may ask for (a video's memory and time grow with
  // it); 0: no bound beyond the per-field maxima. A deployment can lower or raise it
  // (dgrid-orchestrator --max-video-pixels).
  int64_t max_video_pixels = 0;
  // Whether a request may bring an input image (image-to-image: GenerateRequest.image).
  bool image_input = false;
  // Whether the family's denoiser loop has step caching (GenerateRequest.cache).
  bool step_cache = false;

  constexpr bool makes_video() const { return max_num_frames > 1; }

  // Width and height must be multiples of this (pixels per token along each side).
  constexpr int size_multiple() const { return vae_scale_factor * patch_size; }
};

// The shape of a family's transformer as limits, placement and the planner need it. Fields a
// family has no use for stay 0. Plain value; thread-compatible.
struct TransformerShape {
  std::string name;    // "flux-dev", or the model folder's name
  std::string family;  // ModelFamily::name() of the family that counts its FLOPs, e.g. "flux"
  int num_layers = 0;  // double-stream (joint) blocks; Wan: its blocks
  int num_single_layers = 0;  // single-stream blocks
  int num_heads = 0;
  int head_dim = 0;
  int in_channels = 0;          // packed latent channels per token
  int joint_attention_dim = 0;  // text embedding width (FLUX: T5's; Wan: UMT5's text_dim)
  int pooled_projection_dim = 0;
  int ffn_dim = 0;  // feed-forward width, where the family does not fix it as a ratio
  int text_tokens = 0;
  bool guidance_embeds = false;
  // Pixels per token along each side (vae_scale_factor x patch_size).
  int pixels_per_token = 0;
  // Video families: frames per token along time (the VAE's temporal factor x the temporal patch),
  // so that N frames make (N - 1) / frames_per_token + 1 latent frames; 0 for image families.
  int frames_per_token = 0;
  // Whether the text tokens join the self-attention sequence that sequence parallelism shards
  // (FLUX's joint attention); false where the text is attended to by cross-attention only (Wan).
  bool joint_text_attention = true;

  int inner_dim() const { return num_heads * head_dim; }
  int attention_layers() const { return num_layers + num_single_layers; }
  int64_t ImageTokens(int width, int height) const;
  // Tokens of `frames` frames of width x height: ImageTokens for one frame (or an image family),
  // times the latent frames of a video.
  int64_t VideoTokens(int width, int height, int frames) const;
  // Its family's counts (FamilyOf(*this), families/registry.h): bf16 weight bytes of the
  // transformer, and FLOPs of one forward pass of batch 1 over `image_tokens` image tokens.
  double WeightBytes() const;
  double ForwardFlops(int64_t image_tokens) const;
  // Its family's split of the weights for layerwise offload (--dit-offload layerwise): bf16 bytes
  // of each transformer block in the order a forward pass runs them (kept in host memory and
  // copied to the device one by one), and of the rest (embedders, output norm and projection),
  // which stays on the device.
  std::vector<double> BlockWeightBytes() const;
  double NonBlockWeightBytes() const;
};

class ModelFamily {
 public:
  virtual ~ModelFamily() = default;

  // Short lower-case name ("flux"): the key of FindFamily and TransformerShape::family.
  virtual absl::string_view name() const = 0;
  // The model_index.json "_class_name"s this family serves, e.g. {"FluxPipeline"}.
  virtual std::vector<std::string> pipeline_classes() const = 0;
  virtual const GenerationDefaults& defaults() const = 0;
  // Whether the encoder / denoiser / decoder stages (and so `dgrid up`) serve this family yet. A
  // family whose stage engines have not landed runs only in the single-process pipeline.
  virtual bool stages_serve() const = 0;
  // The names of one prompt's text-conditioning tensors, as the encoder stage sends them and the
  // denoiser stage needs them (stages.proto TextEmbeddings), e.g. {"prompt_embeds",
  // "pooled_prompt_embeds"}.
  virtual std::vector<std::string> text_embedding_names() const = 0;
  // The family's classifier-free guidance policy: whether a request with these scales runs the
  // negative prompt too (and so the encoder encodes it, and placement counts two passes a step).
  // FLUX: true_cfg_scale > 1; Wan: guidance_scale > 1 (its guidance_scale is CFG).
  virtual bool RunsCfg(double guidance_scale, double true_cfg_scale) const = 0;

  // Names of the family's released models' shapes; the first is the family's default shape.
  virtual std::vector<std::string> shape_names() const = 0;
  // A shape by name or alias ("flux-dev", "FLUX.1-dev"); NOT_FOUND when the family has none.
  virtual absl::StatusOr<TransformerShape> LookupShape(absl::string_view name) const = 0;
  // The shape the first of shape_names() names.
  TransformerShape DefaultShape() const;
  // The shape from the transformer's parsed config.json; `source` (the file) heads every error.
  // Keys the config leaves out keep the default shape's values; a value of the wrong type, or
  // below 1, is INVALID_ARGUMENT "<source>: <key>: ...". The result's name is left empty.
  virtual absl::StatusOr<TransformerShape> ShapeFromConfig(const nlohmann::json& config,
                                                           absl::string_view source) const = 0;

  // FLOPs of one transformer forward pass (batch 1) over `image_tokens` and shape.text_tokens.
  virtual double ForwardFlops(const TransformerShape& shape, int64_t image_tokens) const = 0;
  // bf16 bytes of the transformer's weights.
  virtual double WeightBytes(const TransformerShape& shape) const = 0;
  // bf16 bytes of each transformer block, in forward order: the layers layerwise offload streams.
  // Biases and norm scales (well under 1% of a block) are left out, as WeightBytes leaves them.
  virtual std::vector<double> BlockWeightBytes(const TransformerShape& shape) const = 0;
  // bf16 bytes of the weights outside the blocks, which stay on the device under offload.
  virtual double NonBlockWeightBytes(const TransformerShape& shape) const = 0;
};

// Helpers for the families' shape code.
// config[key] when present and not null: an integer >= 1 written as a JSON number, into `*out`;
// absent or null leaves `*out` as it is; anything else is INVALID_ARGUMENT "<source>: <key>: ...".
absl::Status ReadPositiveIntField(const nlohmann::json& config, absl::string_view source,
                                  const char* key, int* out);
// FLOPs of one linear layer [in -> out] applied to `rows` rows.
inline double LinearFlops(double rows, double in, double out) { return 2.0 * rows * in * out; }

}  // namespace dgrid::families

#endif  // DGRID_FAMILIES_MODEL_FAMILY_H_
