// dgrid generate: one image, or with a video model (Wan) one video: an MP4 or a folder of PNG
// frames. --local runs the single-process pipeline; without it the request goes to a
// cluster's orchestrator (--server).
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/local_pipeline.h"
#include "common/component_flags.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/files.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/step_cache.h"
#include "common/vae_tiling_flags.h"
#include "services/decoder/models/vae_tiling.h"
#include "services/decoder/video_io.h"

namespace dgrid::cli {
namespace {

Config GenerateConfig() {
  std::vector<Setting> settings = {
      {"local", Setting::kBool, "false", "run all stages in this process (no cluster)"},
      {"quiet", Setting::kBool, "false", "no progress output"},
      {"model", Setting::kString, "",
       "model folder (Diffusers layout); default: $DGRID_MODEL or the embedded model"},
      {"prompt", Setting::kString, "", "text prompt (or give it as the first positional argument)"},
      {"negative_prompt", Setting::kString, "",
       "negative prompt for --true-cfg > 1 (an empty one counts, as in diffusers)"},
      {"out", Setting::kString, "out.png",
       "output path (-o): .png, or .webp; a video model writes an .mp4, an animated .webp, or a "
       "folder of PNG frames"},
      {"fps", Setting::kInt, "16", "frames per second of an .mp4 (video models)", 1, 240},
      {"frames", Setting::kInt, "0", "video frames, 4k + 1 for Wan (0: model default)", 0, 10000},
      {"guidance_2", Setting::kDouble, "-1",
       "Wan2.2 A14B: the low-noise expert's guidance (not given: --guidance)"},
      {"width", Setting::kInt, "0", "pixels, multiple of 16 (0: model default)", 0, 65536},
      {"height", Setting::kInt, "0", "pixels, multiple of 16 (0: model default)", 0, 65536},
      {"steps", Setting::kInt, "0", "denoising steps (0: model default)", 0, 1000},
      {"guidance", Setting::kDouble, "-1", "distilled guidance, >= 0 (not given: model default)"},
      {"true_cfg", Setting::kDouble, "1", "true CFG scale (> 1 with a negative prompt)", 1, 100},
      {"seed", Setting::kInt, "-1", "noise seed (negative: random)"},
      {"image", Setting::kString, "",
       "image-to-image (FLUX): the input image, a PNG or JPEG file, resized to --width x "
       "--height"},
      {"strength", Setting::kDouble, "0.6",
       "image-to-image: how much of the schedule runs from the noised input image, 0 to 1", 0, 1},
      {"max_sequence_length", Setting::kInt, "0", "T5 tokens (0: model default)", 0, 512},
      {"cache", Setting::kString, "",
       "step caching: METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]], METHOD fbcache or "
       "teacache, e.g. fbcache:0.08 (docs/api.md); empty: the cluster's default, none: off"},
      {"device", Setting::kString, "cpu", "cpu, cuda or cuda:N"},
      {"dtype", Setting::kString, "",
       "float32, bfloat16 or float16 (empty: float32 on a CPU, else as stored)"},
      {"dit_precision", Setting::kString, "bf16",
       "--local: the DiT's linear layers in bf16 (as --dtype), fp8 (E4M3; CUDA sm_89+, FLUX) or "
       "fp8-fast (fp8 with fast accumulation)"},
      {"log_level", Setting::kString, "warn", "trace, debug, info, warn, error"},
  };
  for (Setting& s : VaeTilingSettings("--local")) settings.push_back(std::move(s));
  for (Setting& s : DitOffloadSettings("--local")) settings.push_back(std::move(s));
  for (Setting& s : ComponentSettings("--local")) settings.push_back(std::move(s));
  // Without --local: the cluster's address, API key and TLS.
  for (Setting& s : ServerConnectionSettings()) settings.push_back(std::move(s));
  return Config(std::move(settings));
}

// The output format a video gets for `out_path`: MP4 for a name ending in .mp4, else raw frames
// (written as a folder of PNGs).
bool WantsMp4(const std::string& out_path) { return absl::EndsWith(out_path, ".mp4"); }
// A name ending in .webp asks for WebP: a still picture, or an animated WebP of a video.
bool WantsWebp(const std::string& out_path) { return absl::EndsWith(out_path, ".webp"); }

absl::Status Run(const std::vector<std::string>& raw_args) {
  std::vector<std::string> args;
  for (const std::string& a : raw_args) args.push_back(a == "-o" ? "--out" : a);
  Config config = GenerateConfig();
  RETURN_IF_ERROR(config.ParseArgs(args));
  if (config.help_requested()) {
    std::printf("usage: dgrid generate [--local] [flags] \"prompt\" -o out.png\n%s",
                config.Usage().c_str());
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string level_name, config.GetString("log_level"));
  ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(level_name));
  RETURN_IF_ERROR(InitLogging({"cli", -1, level, ""}));

  ASSIGN_OR_RETURN(bool local, config.GetBool("local"));
  GenerateParams params;
  ASSIGN_OR_RETURN(params.prompt, config.GetString("prompt"));
  if (params.prompt.empty() && !config.positional().empty()) params.prompt = config.positional()[0];
  if (params.prompt.empty()) return InvalidArgument("prompt: give a prompt");
  if (config.WasSet("negative_prompt")) {
    ASSIGN_OR_RETURN(params.negative_prompt, config.GetString("negative_prompt"));
  }
  ASSIGN_OR_RETURN(int64_t width, config.GetInt("width"));
  ASSIGN_OR_RETURN(int64_t height, config.GetInt("height"));
  ASSIGN_OR_RETURN(int64_t steps, config.GetInt("steps"));
  ASSIGN_OR_RETURN(double guidance, config.GetDouble("guidance"));
  ASSIGN_OR_RETURN(params.true_cfg_scale, config.GetDouble("true_cfg"));
  ASSIGN_OR_RETURN(int64_t seed, config.GetInt("seed"));
  ASSIGN_OR_RETURN(int64_t max_seq, config.GetInt("max_sequence_length"));
  params.width = static_cast<int>(width);
  params.height = static_cast<int>(height);
  params.num_inference_steps = static_cast<int>(steps);
  if (config.WasSet("guidance")) {
    if (!(guidance >= 0)) {
      return InvalidArgument("--guidance = ", guidance,
                             " must be >= 0 (leave it out for the model's default)");
    }
    params.guidance_scale = guidance;
  }
  if (params.true_cfg_scale > 1 && !params.negative_prompt) {
    std::fprintf(stderr,
                 "note: --true-cfg needs --negative-prompt (an empty one will do); running "
                 "without true CFG, as diffusers does\n");
  }
  if (seed >= 0) params.seed = static_cast<uint64_t>(seed);
  params.max_sequence_length = static_cast<int>(max_seq);
  ASSIGN_OR_RETURN(int64_t frames, config.GetInt("frames"));
  params.num_frames = static_cast<int>(frames);
  if (config.WasSet("fps")) {
    ASSIGN_OR_RETURN(int64_t fps, config.GetInt("fps"));
    params.fps = static_cast<int>(fps);
  }
  if (config.WasSet("guidance_2")) {
    ASSIGN_OR_RETURN(double g2, config.GetDouble("guidance_2"));
    if (!(g2 >= 0)) return InvalidArgument("--guidance-2 = ", g2, " must be >= 0");
    params.guidance_scale_2 = g2;
  }

  ASSIGN_OR_RETURN(std::string image_path, config.GetString("image"));
  if (!image_path.empty()) {
    absl::StatusOr<std::string> image = ReadFileToString(image_path);
    if (!image.ok()) return Annotate(image.status(), "--image");
    params.image = *std::move(image);
    ASSIGN_OR_RETURN(params.strength, config.GetDouble("strength"));
  } else if (config.WasSet("strength")) {
    return InvalidArgument("--strength is for image-to-image: give --image too");
  }

  ASSIGN_OR_RETURN(std::string cache_spec, config.GetString("cache"));
  if (!cache_spec.empty()) {
    ASSIGN_OR_RETURN(params.cache, ParseStepCacheSpec(cache_spec, "--cache"));
  }

  ASSIGN_OR_RETURN(std::string out_path, config.GetString("out"));
  ASSIGN_OR_RETURN(std::string model, config.GetString("model"));
  if (!local) {
    v1::GenerateRequest request;
    request.set_model(model);  // a model name here; empty: the cluster's default
    request.set_prompt(params.prompt);
    request.set_negative_prompt(params.negative_prompt.value_or(""));
    request.set_width(params.width);
    request.set_height(params.height);
    request.set_num_inference_steps(params.num_inference_steps);
    if (params.guidance_scale) request.set_guidance_scale(*params.guidance_scale);
    // The cluster runs true CFG whenever true_cfg_scale > 1: send it only when --local would.
    if (params.true_cfg_scale > 1 && params.negative_prompt) {
      request.set_true_cfg_scale(params.true_cfg_scale);
    }
    if (params.seed) request.set_seed(*params.seed);
    request.set_max_sequence_length(params.max_sequence_length);
    if (params.num_frames > 0) request.set_num_frames(params.num_frames);
    request.set_fps(params.fps);
    if (params.guidance_scale_2) request.set_guidance_scale_2(*params.guidance_scale_2);
    if (!params.image.empty()) {
      request.set_image(params.image);
      request.set_strength(*params.strength);
    }
    if (params.cache) StepCacheToProto(*params.cache, request.mutable_cache());
    // A name ending in .mp4 asks for MP4, one ending in .png for a PNG (left to the model when -o
    // is not given: a video model's default is MP4); anything else is a folder for a video's
    // frames (raw from the cluster, written as PNGs here).
    if (WantsMp4(out_path)) {
      request.set_output_format(v1::OUTPUT_FORMAT_MP4);
    } else if (WantsWebp(out_path)) {
      request.set_output_format(v1::OUTPUT_FORMAT_WEBP);
    } else if (absl::EndsWith(out_path, ".png")) {
      if (config.WasSet("out")) request.set_output_format(v1::OUTPUT_FORMAT_PNG);
    } else {
      request.set_output_format(v1::OUTPUT_FORMAT_RAW_RGB8);
    }
    ASSIGN_OR_RETURN(ServerConnection connection, ReadServerConnection(config));
    ASSIGN_OR_RETURN(bool quiet, config.GetBool("quiet"));
    return RemoteGenerate(connection, request, out_path, quiet);
  }
  if (model.empty()) model = DefaultModelPath();
  if (model.empty()) {
    return NotFound("model: no model given and no default model found (run scripts/setup.sh)");
  }
  LoadOptions load;
  ASSIGN_OR_RETURN(load.device, config.GetString("device"));
  ASSIGN_OR_RETURN(std::string dtype, config.GetString("dtype"));
  const std::string given_dtype = dtype;
  // Half-precision weights (the embedded model is float16) compute several times slower on a CPU
  // than in float32, which ATen's CPU kernels are built for: upcast there unless told otherwise.
  // `dgrid up` does the same, so that the cluster and --local compute alike.
  if (dtype.empty() && load.device == "cpu") dtype = "float32";
  if (!dtype.empty()) load.floating_dtype = dtype;
  ASSIGN_OR_RETURN(load.dit_precision, config.GetString("dit_precision"));
  ASSIGN_OR_RETURN(load.dit_offload, ReadDitOffloadFlags(config));
  ASSIGN_OR_RETURN(const VaeTilingFlags vae, ReadVaeTilingFlags(config));
  RETURN_IF_ERROR(decoder::ParseVaeTilingMode(vae.mode, "--vae-tiling").status());
  // The text encoders and the VAE where their own flags say, else with the DiT.
  ASSIGN_OR_RETURN(const ComponentFlags components, ReadComponentFlags(config));
  LocalPipelineLoad stages{load, load, load};
  const ComponentPlacement text = PlaceComponent(
      components.text_encoder_device, components.text_encoder_precision, load.device, given_dtype);
  stages.encoder.device = text.device;
  stages.encoder.floating_dtype = text.dtype;
  stages.offload_text_encoders = text.offload;
  const ComponentPlacement vae_place =
      PlaceComponent(components.vae_device, components.vae_precision, load.device, given_dtype);
  stages.decoder.device = vae_place.device;
  stages.decoder.floating_dtype = vae_place.dtype;
  stages.offload_vae = vae_place.offload;

  const absl::Time load_start = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<LocalPipeline> pipeline,
                   LocalPipeline::Create(model, stages, vae));
  const double load_ms = absl::ToDoubleMilliseconds(absl::Now() - load_start);
  std::fprintf(stderr, "loaded %s in %.0f ms\n", model.c_str(), load_ms);
  const bool video = pipeline->limits().max_num_frames > 1;
  if (!video && params.num_frames > 1) {
    return InvalidArgument("frames: ", model, " makes images (one frame); --frames ",
                           params.num_frames, " needs a video model");
  }
  if (video) {
    // A video's default output: an MP4 where this build has FFmpeg, else a folder of frames.
    if (!config.WasSet("out")) out_path = decoder::HaveVideoCodecs() ? "out.mp4" : "out_frames";
    params.format = WantsMp4(out_path)                 ? decoder::ImageFormat::kMp4
                    : WantsWebp(out_path)              ? decoder::ImageFormat::kWebp
                    : absl::EndsWith(out_path, ".png") ? decoder::ImageFormat::kPng
                                                       : decoder::ImageFormat::kRawRgb8;
  } else if (WantsWebp(out_path)) {
    params.format = decoder::ImageFormat::kWebp;
  }
  ASSIGN_OR_RETURN(
      GenerateOutput result, pipeline->Generate(params, [](int step, int total, double seconds) {
        std::fprintf(stderr, "\rdenoise step %d/%d (%.1f ms)", step, total, seconds * 1e3);
        if (step == total) std::fprintf(stderr, "\n");
      }));
  if (result.image.video) {
    RETURN_IF_ERROR(WriteVideoOutput(
        out_path,
        params.format == decoder::ImageFormat::kMp4 || params.format == decoder::ImageFormat::kWebp,
        result.image.data, result.image.width, result.image.height, result.image.num_frames));
    std::printf("wrote %s (%d frames of %dx%d, seed %llu)\n", out_path.c_str(),
                result.image.num_frames, result.image.width, result.image.height,
                static_cast<unsigned long long>(result.seed));
  } else {
    std::ofstream out(out_path, std::ios::binary);
    out.write(result.image.data.data(), static_cast<std::streamsize>(result.image.data.size()));
    if (!out) return absl::PermissionDeniedError("cannot write " + out_path);
    std::printf("wrote %s (%dx%d, seed %llu)\n", out_path.c_str(), result.image.width,
                result.image.height, static_cast<unsigned long long>(result.seed));
  }
  std::printf(
      "timings: encode %.1f ms, denoise %.1f ms, decode %.1f ms, total %.1f ms (load %.0f ms)\n",
      result.times.encode_ms, result.times.denoise_ms, result.times.decode_ms,
      result.times.total_ms, load_ms);
  if (params.cache && params.cache->enabled()) {
    std::printf("step cache %s: %d steps skipped\n", StepCacheSpec(*params.cache).c_str(),
                result.skipped_steps);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteVideoOutput(const std::string& out_path, bool encoded, const std::string& data,
                              int width, int height, int num_frames) {
  if (encoded) return WriteFileAtomically(out_path, data);
  const size_t frame_bytes = static_cast<size_t>(width) * height * 3;
  if (num_frames < 1 || frame_bytes == 0 || data.size() != frame_bytes * num_frames) {
    return Internal("video: ", data.size(), " bytes are not ", num_frames, " frames of ", width,
                    "x", height);
  }
  if (!IsDirectory(out_path) && ::mkdir(out_path.c_str(), 0755) != 0) {
    return absl::PermissionDeniedError("cannot create the frames folder " + out_path);
  }
  for (int i = 0; i < num_frames; ++i) {
    decoder::Image8 frame;
    frame.width = width;
    frame.height = height;
    frame.channels = 3;
    frame.pixels.assign(data.begin() + i * frame_bytes, data.begin() + (i + 1) * frame_bytes);
    ASSIGN_OR_RETURN(std::string png, decoder::EncodePng(frame));
    char name[32];
    std::snprintf(name, sizeof(name), "frame_%04d.png", i);
    RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_path, name), png));
  }
  return absl::OkStatus();
}

std::string DefaultModelPath() {
  if (const char* env = std::getenv("DGRID_MODEL"); env != nullptr && *env != '\0') return env;
  for (absl::string_view dir : absl::StrSplit(DGRID_DEFAULT_MODEL_DIRS, ':', absl::SkipEmpty())) {
    if (IsRegularFile(JoinPath(dir, "model_index.json"))) return std::string(dir);
  }
  return "";
}

int GenerateCommand(const std::vector<std::string>& args) {
  const absl::Status status = Run(args);
  if (status.ok()) return 0;
  std::fprintf(stderr, "dgrid generate: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace dgrid::cli
