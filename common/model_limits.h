// What a served model accepts and defaults to, read from its Diffusers folder.
//
// The model's family is chosen by model_index.json's "_class_name" (families/registry.h). Limits
// and defaults come from the optional dgrid.json at the model root ({"name", "default_width",
// "default_height", "default_steps", "default_guidance", "max_width", "max_height",
// "max_sequence_length"}), with the family's defaults (families::GenerationDefaults) where it is
// absent; for FluxPipeline: 128 x the VAE's scale factor on each side (1024 x 1024 for FLUX.1's
// VAE, as FluxPipeline computes it), 28 steps, guidance 3.5, T5 sequence 512 (also the most
// dgrid.json may ask for); at most 2048 x 2048.
#ifndef DGRID_COMMON_MODEL_LIMITS_H_
#define DGRID_COMMON_MODEL_LIMITS_H_

#include <string>

#include "absl/status/statusor.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid {

// Every field is filled by ReadModelLimits.
struct ModelLimits {
  std::string name;      // Model name clients use (dgrid.json "name", else the root folder's name).
  std::string pipeline;  // model_index.json "_class_name", e.g. "FluxPipeline".
  std::string family;    // families::ModelFamily::name() of the family serving it, e.g. "flux".
  bool stages_serve = true;  // families::ModelFamily::stages_serve(): the cluster can serve it
  int default_width = 0;
  int default_height = 0;
  int default_steps = 0;
  double default_guidance = 0;
  int max_width = 0;
  int max_height = 0;
  int max_sequence_length = 0;
  bool guidance_embeds = false;
  // Pixels per latent cell (2^(len(vae.block_out_channels) - 1)); read from vae/config.json, the
  // family's default without a vae component.
  int vae_scale_factor = 0;
  // Frames (the family's): 1 / 1 / 1 / 0 for an image model (families::GenerationDefaults).
  int max_num_frames = 1;
  int default_num_frames = 1;
  int frame_step = 1;
  int default_fps = 0;
};

// Reads the limits of the model at `model_path` (model_index.json, transformer/config.json,
// vae/config.json and the optional dgrid.json). A "_class_name" that no family serves is
// INVALID_ARGUMENT naming model_index.json and the class.
absl::StatusOr<ModelLimits> ReadModelLimits(const std::string& model_path);
// OK when the stages serve the model's family; UNIMPLEMENTED naming the model, its pipeline class
// and the single-process way to run it otherwise (for the stage programs and `dgrid up`).
absl::Status CheckStagesServe(const ModelLimits& limits, const std::string& model_path);
// The public description of the model (ListModels, worker registration).
v1::ModelInfo ToModelInfo(const ModelLimits& limits);

}  // namespace dgrid

#endif  // DGRID_COMMON_MODEL_LIMITS_H_
