// dgrid generate: one image (or, with a Wan model and --local, one video: an MP4 or a folder of
// PNG frames). --local runs the single-process pipeline; without it the request goes to a
// cluster's orchestrator (--server).
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/local_pipeline.h"
#include "cli/wan_local_pipeline.h"
#include "common/config.h"
#include "common/files.h"
#include "common/logging.h"
#include "common/status.h"
#include "services/decoder/video_io.h"

namespace dgrid::cli {
namespace {

Config GenerateConfig() {
  return Config({
      {"local", Setting::kBool, "false", "run all stages in this process (no cluster)"},
      {"server", Setting::kString, "127.0.0.1:50050", "orchestrator address (without --local)"},
      {"quiet", Setting::kBool, "false", "no progress output"},
      {"model", Setting::kString, "",
       "model folder (Diffusers layout); default: $DGRID_MODEL or the embedded model"},
      {"prompt", Setting::kString, "", "text prompt (or give it as the first positional argument)"},
      {"negative_prompt", Setting::kString, "",
       "negative prompt for --true-cfg > 1 (an empty one counts, as in diffusers)"},
      {"out", Setting::kString, "out.png",
       "output PNG path (-o); a video model writes an .mp4, or a folder of PNG frames"},
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
      {"max_sequence_length", Setting::kInt, "0", "T5 tokens (0: model default)", 0, 512},
      {"device", Setting::kString, "cpu", "cpu, cuda or cuda:N"},
      {"dtype", Setting::kString, "",
       "float32, bfloat16 or float16 (empty: float32 on a CPU, else as stored)"},
      {"log_level", Setting::kString, "warn", "trace, debug, info, warn, error"},
  });
}

// A Wan model with --local: the single-process video pipeline; `out_dir` ending in .mp4 gets an
// MP4 (H.264), any other name a folder with one PNG per frame.
absl::Status RunWanLocal(const Config& config, const GenerateParams& image_params,
                         const std::string& model, const LoadOptions& load,
                         const std::string& out_dir) {
  WanGenerateParams params;
  params.prompt = image_params.prompt;
  params.negative_prompt = image_params.negative_prompt;
  params.width = image_params.width;
  params.height = image_params.height;
  params.num_inference_steps = image_params.num_inference_steps;
  params.guidance_scale = image_params.guidance_scale;
  params.seed = image_params.seed;
  params.max_sequence_length = image_params.max_sequence_length;
  ASSIGN_OR_RETURN(int64_t frames, config.GetInt("frames"));
  params.num_frames = static_cast<int>(frames);
  if (config.WasSet("guidance_2")) {
    ASSIGN_OR_RETURN(double g2, config.GetDouble("guidance_2"));
    if (!(g2 >= 0)) return InvalidArgument("--guidance-2 = ", g2, " must be >= 0");
    params.guidance_scale_2 = g2;
  }
  const absl::Time load_start = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<WanLocalPipeline> pipeline,
                   WanLocalPipeline::Create(model, load));
  const double load_ms = absl::ToDoubleMilliseconds(absl::Now() - load_start);
  std::fprintf(stderr, "loaded %s in %.0f ms\n", model.c_str(), load_ms);
  ASSIGN_OR_RETURN(
      WanGenerateOutput result, pipeline->Generate(params, [](int step, int total, double seconds) {
        std::fprintf(stderr, "\rdenoise step %d/%d (%.1f ms)", step, total, seconds * 1e3);
        if (step == total) std::fprintf(stderr, "\n");
      }));
  if (absl::EndsWith(out_dir, ".mp4")) {
    ASSIGN_OR_RETURN(int64_t fps, config.GetInt("fps"));
    decoder::Mp4Options mp4;
    mp4.fps = static_cast<int>(fps);
    ASSIGN_OR_RETURN(std::string bytes, decoder::EncodeMp4(result.frames, mp4));
    RETURN_IF_ERROR(WriteFileAtomically(out_dir, bytes));
  } else {
    if (!IsDirectory(out_dir) && ::mkdir(out_dir.c_str(), 0755) != 0) {
      return absl::PermissionDeniedError("cannot create the frames folder " + out_dir);
    }
    for (size_t i = 0; i < result.frames.size(); ++i) {
      ASSIGN_OR_RETURN(std::string png, decoder::EncodePng(result.frames[i]));
      char name[32];
      std::snprintf(name, sizeof(name), "frame_%04zu.png", i);
      RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_dir, name), png));
    }
  }
  const decoder::Image8& first = result.frames.front();
  std::printf("wrote %s (%zu frames of %lldx%lld, seed %llu)\n", out_dir.c_str(),
              result.frames.size(), static_cast<long long>(first.width),
              static_cast<long long>(first.height), static_cast<unsigned long long>(result.seed));
  std::printf("timings: encode %.1f ms, denoise %.1f ms, decode %.1f ms (load %.0f ms)\n",
              result.encode_ms, result.denoise_ms, result.decode_ms, load_ms);
  return absl::OkStatus();
}

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
    ASSIGN_OR_RETURN(int64_t frames, config.GetInt("frames"));
    if (frames > 0) request.set_num_frames(static_cast<int32_t>(frames));
    ASSIGN_OR_RETURN(std::string server, config.GetString("server"));
    ASSIGN_OR_RETURN(bool quiet, config.GetBool("quiet"));
    return RemoteGenerate(server, request, out_path, quiet);
  }
  if (model.empty()) model = DefaultModelPath();
  if (model.empty()) {
    return NotFound("model: no model given and no default model found (run scripts/setup.sh)");
  }
  LoadOptions load;
  ASSIGN_OR_RETURN(load.device, config.GetString("device"));
  ASSIGN_OR_RETURN(std::string dtype, config.GetString("dtype"));
  // Half-precision weights (the embedded model is float16) compute several times slower on a CPU
  // than in float32, which ATen's CPU kernels are built for: upcast there unless told otherwise.
  // `dgrid up` does the same, so that the cluster and --local compute alike.
  if (dtype.empty() && load.device == "cpu") dtype = "float32";
  if (!dtype.empty()) load.floating_dtype = dtype;

  if (WanLocalPipeline::IsWanModel(model)) {
    // A video's default output: an MP4 where this build has FFmpeg, else a folder of frames.
    if (!config.WasSet("out")) out_path = decoder::HaveVideoCodecs() ? "out.mp4" : "out_frames";
    return RunWanLocal(config, params, model, load, out_path);
  }
  ASSIGN_OR_RETURN(int64_t frames, config.GetInt("frames"));
  if (frames > 1) {
    return InvalidArgument("frames: ", model, " makes images (one frame); --frames ", frames,
                           " needs a video model");
  }

  const absl::Time load_start = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<LocalPipeline> pipeline, LocalPipeline::Create(model, load));
  const double load_ms = absl::ToDoubleMilliseconds(absl::Now() - load_start);
  std::fprintf(stderr, "loaded %s in %.0f ms\n", model.c_str(), load_ms);
  ASSIGN_OR_RETURN(
      GenerateOutput result, pipeline->Generate(params, [](int step, int total, double seconds) {
        std::fprintf(stderr, "\rdenoise step %d/%d (%.1f ms)", step, total, seconds * 1e3);
        if (step == total) std::fprintf(stderr, "\n");
      }));
  std::ofstream out(out_path, std::ios::binary);
  out.write(result.image.data.data(), static_cast<std::streamsize>(result.image.data.size()));
  if (!out) return absl::PermissionDeniedError("cannot write " + out_path);
  std::printf("wrote %s (%dx%d, seed %llu)\n", out_path.c_str(), result.image.width,
              result.image.height, static_cast<unsigned long long>(result.seed));
  std::printf(
      "timings: encode %.1f ms, denoise %.1f ms, decode %.1f ms, total %.1f ms (load %.0f ms)\n",
      result.times.encode_ms, result.times.denoise_ms, result.times.decode_ms,
      result.times.total_ms, load_ms);
  return absl::OkStatus();
}

}  // namespace

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
