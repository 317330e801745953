#include "cli/local_pipeline.h"

#include <random>

#include <ATen/ATen.h>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status.h"
#include "services/denoiser/img2img.h"

namespace dgrid {
namespace {

double MsSince(absl::Time start) { return absl::ToDoubleMilliseconds(absl::Now() - start); }

}  // namespace

absl::StatusOr<std::unique_ptr<LocalPipeline>> LocalPipeline::Create(const std::string& model_path,
                                                                     const LoadOptions& load,
                                                                     const VaeTilingFlags& vae) {
  return Create(model_path, LocalPipelineLoad{load, load, load}, vae);
}

absl::StatusOr<std::unique_ptr<LocalPipeline>> LocalPipeline::Create(const std::string& model_path,
                                                                     const LocalPipelineLoad& load,
                                                                     const VaeTilingFlags& vae) {
  std::unique_ptr<LocalPipeline> pipeline(new LocalPipeline());
  encoder::EncoderEngineOptions encoder_options{model_path, load.encoder, /*workers=*/1, 1};
  encoder_options.model_offload = load.offload_text_encoders;
  ASSIGN_OR_RETURN(pipeline->encoder_, encoder::EncoderEngine::Create(encoder_options));
  ASSIGN_OR_RETURN(pipeline->denoiser_, DenoiserEngine::Create({model_path, load.denoiser, 1, 1}));
  decoder::DecoderEngineOptions decoder_options{model_path, load.decoder, 1, 1};
  decoder_options.vae_tiling = vae.mode;
  decoder_options.vae_tile_size = vae.tile_size;
  decoder_options.model_offload = load.offload_vae;
  ASSIGN_OR_RETURN(pipeline->decoder_, decoder::DecoderEngine::Create(decoder_options));
  return pipeline;
}

std::vector<const ModelResidency*> LocalPipeline::residencies() const {
  std::vector<const ModelResidency*> out = encoder_->residencies();
  for (const ModelResidency* dit : denoiser_->family_denoiser().residencies()) out.push_back(dit);
  if (const ModelResidency* vae = decoder_->vae_residency()) out.push_back(vae);
  return out;
}

absl::StatusOr<GenerateOutput> LocalPipeline::Generate(
    const GenerateParams& params, const std::function<void(int, int, double)>& on_step) const {
  const ModelLimits& limits = denoiser_->limits();
  const absl::Time start = absl::Now();
  const CancellationToken token;
  GenerateOutput out;
  out.seed = params.seed ? *params.seed : std::random_device{}();

  const families::ModelFamily& family = denoiser_->family();
  DenoiseInput denoise;
  denoise.request_id = params.request_id;
  denoise.width = params.width > 0 ? params.width : limits.default_width;
  denoise.height = params.height > 0 ? params.height : limits.default_height;
  denoise.num_frames = params.num_frames > 0 ? params.num_frames : limits.default_num_frames;
  denoise.num_inference_steps =
      params.num_inference_steps > 0 ? params.num_inference_steps : limits.default_steps;
  denoise.guidance_scale = params.guidance_scale.value_or(limits.default_guidance);
  denoise.guidance_scale_2 = params.guidance_scale_2;
  // FluxPipeline: true CFG only with a negative prompt (which may be empty).
  denoise.true_cfg_scale = params.negative_prompt.has_value() ? params.true_cfg_scale : 1.0;
  if (!family.RunsCfg(denoise.guidance_scale, denoise.true_cfg_scale)) {
    denoise.true_cfg_scale = 1.0;
  }
  denoise.seed = out.seed;

  // Image-to-image: the input image is checked and encoded first (nothing else has run if it is
  // refused), with the seed's first draw, as FluxImg2ImgPipeline draws it before the noise.
  if (!params.image.empty()) {
    if (!family.defaults().image_input) {
      return InvalidArgument("image: the ", family.name(), " family takes no input image");
    }
    denoise.strength = params.strength.value_or(0.6);
    RETURN_IF_ERROR(Img2ImgFirstStep(denoise.num_inference_steps, denoise.strength).status());
    decoder::EncodeImageInput image;
    image.request_id = params.request_id;
    image.image = params.image;
    image.width = denoise.width;
    image.height = denoise.height;
    image.seed = denoise.seed;
    ASSIGN_OR_RETURN(denoise.image_latents, decoder_->EncodeImage(image, token));
  } else if (params.strength.has_value()) {
    return InvalidArgument("strength: only with an input image (image)");
  }

  encoder::EncodeInput encode;
  encode.request_id = params.request_id;
  encode.prompt = params.prompt;
  encode.negative_prompt = params.negative_prompt.value_or("");
  encode.encode_negative = family.RunsCfg(denoise.guidance_scale, denoise.true_cfg_scale);
  encode.max_sequence_length =
      params.max_sequence_length > 0 ? params.max_sequence_length : limits.max_sequence_length;
  ASSIGN_OR_RETURN(encoder::EncodeOutput embeddings, encoder_->Encode(encode, token));
  out.times.encode_ms = MsSince(start);

  const absl::Time denoise_start = absl::Now();
  denoise.positive = std::move(embeddings.positive);
  denoise.negative = std::move(embeddings.negative);
  if (params.cache) denoise.cache = *params.cache;
  ASSIGN_OR_RETURN(at::Tensor latents,
                   denoiser_->Denoise(denoise, token, on_step, nullptr,
                                      [&out](int /*step*/) { ++out.skipped_steps; }));
  out.times.denoise_ms = MsSince(denoise_start);

  const absl::Time decode_start = absl::Now();
  decoder::DecodeInput decode;
  decode.request_id = params.request_id;
  decode.latents = latents;
  decode.format = params.format;
  decode.fps = params.fps;
  ASSIGN_OR_RETURN(out.image, decoder_->Decode(decode, token));
  out.times.decode_ms = MsSince(decode_start);
  out.times.total_ms = MsSince(start);
  DG_LOG_INFO(params.request_id,
              "generated %d x %dx%d in %.1f ms (encode %.1f, denoise %.1f, decode %.1f)",
              out.image.num_frames, out.image.width, out.image.height, out.times.total_ms,
              out.times.encode_ms, out.times.denoise_ms, out.times.decode_ms);
  return out;
}

}  // namespace dgrid
