// dgrid-orchestrator: the public endpoint of a dgrid cluster (see
// orchestrator/api/orchestrator_server.h).
//
//   dgrid-orchestrator --port 50050 --http-port 8080 --host 127.0.0.1 --policy least-loaded
//                      [--placement-model SHAPE|DIR] [--placement-calibration FILES]
//                      --max-inflight 64 --max-queued 256 --heartbeat-ms 1000 --log-file F
//                      [--max-video-pixels N] [--preview-mode latent-rgb|vae]
//                      [--step-cache METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]]]
//                      --log-level info --drain-timeout-ms 30000 [--config file.json]
//                      [--tls-cert F --tls-key F [--tls-ca F --tls-client-auth optional|require]]
//                      [--api-keys-file F] [--max-request-bytes N] [--metrics-port N]
//
// SIGTERM / SIGINT drain: new requests get UNAVAILABLE, accepted ones may finish within the drain
// timeout, the rest are cancelled, then the process exits.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include <semaphore.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/step_cache.h"
#include "orchestrator/api/orchestrator_server.h"
#include "planner/model_shape.h"

namespace {

sem_t g_stop;

void OnSignal(int) { sem_post(&g_stop); }  // async-signal-safe

absl::Status Main(int argc, char** argv) {
  std::vector<dgrid::Setting> settings = {
      {"host", dgrid::Setting::kString, "127.0.0.1", "address to listen on"},
      {"port", dgrid::Setting::kInt, "50050", "gRPC port (0: any free port)", 0, 65535},
      {"http-port", dgrid::Setting::kInt, "8080", "HTTP port (0: any, -1: off)", -1, 65535},
      {"policy", dgrid::Setting::kString, "least-loaded",
       "placement policy: least-loaded, round-robin or predicted-completion (docs/placement.md)"},
      {"placement-model", dgrid::Setting::kString, dgrid::planner::DefaultModelShape().name,
       absl::StrCat("predicted-completion: the model's shape (",
                    absl::StrJoin(dgrid::planner::KnownModelShapes(), ", "),
                    " or a Diffusers folder)")},
      {"placement-calibration", dgrid::Setting::kString, "",
       "predicted-completion: bench JSON files/folders of the serving card (empty: built-in "
       "H100)"},
      {"max-inflight", dgrid::Setting::kInt, "64", "requests running at once", 1, 1 << 20},
      {"max-queued", dgrid::Setting::kInt, "256", "requests waiting for admission", 0, 1 << 20},
      {"heartbeat-ms", dgrid::Setting::kInt, "1000", "heartbeat period told to workers", 10,
       3600 * 1000},
      {"drain-timeout-ms", dgrid::Setting::kInt, "30000", "grace period on SIGTERM", 0,
       3600 * 1000},
      {"default-model", dgrid::Setting::kString, "", "model used when a request names none"},
      {"models", dgrid::Setting::kString, "",
       "models served besides --default-model, separated by commas: until their stages register "
       "they are listed as unavailable and answered UNAVAILABLE (not NOT_FOUND)"},
      {"max-video-pixels", dgrid::Setting::kInt, "0",
       "most frames x width x height one video request may ask for (0: the family's default; "
       "Wan: 121 x 1280 x 720)",
       0, int64_t{1} << 40},
      {"preview-mode", dgrid::Setting::kString, "latent-rgb",
       "how previews (preview_images, partial_images) are made: latent-rgb or vae (docs/api.md)"},
      {"step-cache", dgrid::Setting::kString, "none",
       "step caching of requests that set no cache: "
       "METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]], METHOD none, fbcache or teacache "
       "(docs/api.md)"},
      {"log-file", dgrid::Setting::kString, "", "also log to this file"},
      {"log-level", dgrid::Setting::kString, "info", "trace|debug|info|warn|error|off"},
      {"api-keys-file", dgrid::Setting::kString, "",
       "file of API keys, one a line (empty: the public API is open)"},
      {"max-request-bytes", dgrid::Setting::kInt, "41943040",
       "largest public request accepted (an image-to-image request carries its image, up to "
       "32 MiB)",
       1024, 1 << 30},
      {"metrics-port", dgrid::Setting::kInt, "-1",
       "plain-HTTP port of /metrics (0: any, -1: off; /metrics is on the HTTP port too)", -1,
       65535},
  };
  settings.push_back({"health-port", dgrid::Setting::kInt, "-1",
                      "plain-text grpc.health.v1 port for probes when gRPC is TLS (-1: off)", -1,
                      65535});
  for (dgrid::Setting& s : dgrid::TlsSettings()) settings.push_back(std::move(s));
  dgrid::Config config(std::move(settings));
  RETURN_IF_ERROR(config.ParseArgs(argc, argv));
  if (config.help_requested()) {
    std::printf("usage: dgrid-orchestrator [flags]\n%s", config.Usage().c_str());
    return absl::OkStatus();
  }
  dgrid::LoggingOptions logging;
  logging.stage = "orchestrator";
  ASSIGN_OR_RETURN(logging.file, config.GetString("log-file"));
  ASSIGN_OR_RETURN(std::string level, config.GetString("log-level"));
  ASSIGN_OR_RETURN(logging.level, dgrid::ParseLogLevel(level));
  RETURN_IF_ERROR(dgrid::InitLogging(logging));

  dgrid::orchestrator::OrchestratorOptions options;
  ASSIGN_OR_RETURN(options.host, config.GetString("host"));
  ASSIGN_OR_RETURN(int64_t port, config.GetInt("port"));
  ASSIGN_OR_RETURN(int64_t http_port, config.GetInt("http-port"));
  ASSIGN_OR_RETURN(options.policy, config.GetString("policy"));
  ASSIGN_OR_RETURN(std::string placement_model, config.GetString("placement-model"));
  ASSIGN_OR_RETURN(std::string placement_calibration, config.GetString("placement-calibration"));
  ASSIGN_OR_RETURN(options.placement, dgrid::orchestrator::MakePlacementContext(
                                          placement_model, placement_calibration));
  ASSIGN_OR_RETURN(int64_t max_inflight, config.GetInt("max-inflight"));
  ASSIGN_OR_RETURN(int64_t max_queued, config.GetInt("max-queued"));
  ASSIGN_OR_RETURN(int64_t heartbeat_ms, config.GetInt("heartbeat-ms"));
  ASSIGN_OR_RETURN(int64_t drain_ms, config.GetInt("drain-timeout-ms"));
  ASSIGN_OR_RETURN(options.pipeline.default_model, config.GetString("default-model"));
  ASSIGN_OR_RETURN(std::string models, config.GetString("models"));
  options.models = absl::StrSplit(models, ',', absl::SkipEmpty());
  ASSIGN_OR_RETURN(options.pipeline.max_video_pixels, config.GetInt("max-video-pixels"));
  ASSIGN_OR_RETURN(std::string preview_mode, config.GetString("preview-mode"));
  if (preview_mode != "latent-rgb" && preview_mode != "vae") {
    return absl::InvalidArgumentError("--preview-mode must be latent-rgb or vae, got " +
                                      preview_mode);
  }
  options.pipeline.preview_mode =
      preview_mode == "vae" ? dgrid::v1::PREVIEW_MODE_VAE : dgrid::v1::PREVIEW_MODE_LATENT_RGB;
  ASSIGN_OR_RETURN(std::string step_cache, config.GetString("step-cache"));
  ASSIGN_OR_RETURN(options.pipeline.step_cache,
                   dgrid::ParseStepCacheSpec(step_cache, "--step-cache"));
  options.port = static_cast<int>(port);
  options.http_port = static_cast<int>(http_port);
  options.pipeline.max_inflight = static_cast<int>(max_inflight);
  options.pipeline.max_queued = static_cast<int>(max_queued);
  options.heartbeat_interval = absl::Milliseconds(heartbeat_ms);
  ASSIGN_OR_RETURN(options.tls, dgrid::ReadTlsOptions(config));
  ASSIGN_OR_RETURN(std::string api_keys_file, config.GetString("api-keys-file"));
  if (!api_keys_file.empty()) {
    ASSIGN_OR_RETURN(options.api_keys, dgrid::orchestrator::ApiKeys::FromFile(api_keys_file));
  }
  ASSIGN_OR_RETURN(int64_t max_request_bytes, config.GetInt("max-request-bytes"));
  options.max_request_bytes = static_cast<size_t>(max_request_bytes);
  ASSIGN_OR_RETURN(int64_t metrics_port, config.GetInt("metrics-port"));
  options.metrics_port = static_cast<int>(metrics_port);
  ASSIGN_OR_RETURN(int64_t health_port, config.GetInt("health-port"));
  options.health_port = static_cast<int>(health_port);

  sem_init(&g_stop, 0, 0);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  dgrid::orchestrator::OrchestratorServer server(options);
  RETURN_IF_ERROR(server.Start());
  // Parseable by scripts that start the process with port 0.
  std::printf("dgrid-orchestrator grpc=%s http=%d metrics=%d\n", server.grpc_address().c_str(),
              server.http_port(), server.metrics_port());
  std::fflush(stdout);
  while (sem_wait(&g_stop) != 0) {
  }
  DG_LOG_INFO("", "signal received: draining (up to %d ms)", static_cast<int>(drain_ms));
  const bool clean = server.Drain(absl::Milliseconds(drain_ms));
  server.Shutdown();
  DG_LOG_INFO("", "stopped%s", clean ? "" : " (some requests were cancelled)");
  dgrid::FlushLogs();
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::Status status = Main(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "dgrid-orchestrator: %s\n", status.ToString().c_str());
    dgrid::FlushLogs();
    return 1;
  }
  return 0;
}
