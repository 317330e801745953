#include "common/stage_main.h"

#include <unistd.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"

namespace dgrid {
namespace {

const char* StageName(v1::StageKind kind) {
  switch (kind) {
    case v1::STAGE_KIND_ENCODER:
      return "encoder";
    case v1::STAGE_KIND_DENOISER:
      return "denoiser";
    case v1::STAGE_KIND_DECODER:
      return "decoder";
    default:
      return "stage";
  }
}

// "1024x1024,512x768" -> {(1024, 1024), (512, 768)}; INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<std::vector<std::pair<int, int>>> ParseResolutions(absl::string_view text) {
  std::vector<std::pair<int, int>> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::vector<absl::string_view> wh = absl::StrSplit(absl::StripAsciiWhitespace(item), 'x');
    int w = 0, h = 0;
    if (wh.size() != 2 || !absl::SimpleAtoi(wh[0], &w) || !absl::SimpleAtoi(wh[1], &h) || w <= 0 ||
        h <= 0) {
      return InvalidArgument("--warmup-resolutions: '", item,
                             "' is not WIDTHxHEIGHT with positive integers");
    }
    out.emplace_back(w, h);
  }
  return out;
}

absl::Status Run(int argc, char** argv, v1::StageKind kind, int default_port, Stage& stage,
                 const TransportSetup& setup_transport, const StageCheck& check) {
  const std::string name = StageName(kind);
  std::vector<Setting> settings = {
      {"host", Setting::kString, "127.0.0.1", "address to listen on"},
      {"port", Setting::kInt, std::to_string(default_port), "gRPC port (0: any free port)", 0,
       65535},
      {"advertise_host", Setting::kString, "",
       "host the orchestrator should call (default: --host)"},
      {"model", Setting::kString, "", "model folder (Diffusers layout)"},
      {"device", Setting::kString, "cpu", "cpu, cuda or cuda:N"},
      {"dtype", Setting::kString, "", "float32, bfloat16, float16 (empty: as stored)"},
      {"dit_precision", Setting::kString, "bf16",
       "denoiser: the DiT's linear layers in bf16 (as --dtype), fp8 (E4M3; CUDA sm_89+, FLUX) or "
       "fp8-fast (fp8 with fast accumulation)"},
      {"workers", Setting::kInt, "1", "requests run at once", 1, 64},
      {"warmup_resolutions", Setting::kString, "",
       "WxH,WxH,...: run each once before serving (denoiser; empty: no warm-up)"},
      {"max_queued", Setting::kInt, "16", "requests waiting at most (then RESOURCE_EXHAUSTED)", 0,
       100000},
      {"max_batch", Setting::kInt, "1",
       "denoiser: requests of one size sharing each step's forward (1: unbatched); they join and "
       "leave at step boundaries",
       1, 256},
      {"batch_wait_ms", Setting::kDouble, "0",
       "denoiser with --max-batch > 1: how long a lone request waits for company before its first "
       "step (0: starts at once, others join later)",
       0, 60000},
      {"scheduling", Setting::kString, "fifo",
       "fifo or edf: queue order (edf: earliest deadline first; the denoiser also preempts a "
       "request between steps for one due earlier)"},
      {"transport", Setting::kString, "inline", "stage-to-stage tensors: ucx or inline"},
      {"ucx_tls", Setting::kString, "", "UCX transports (UCX_TLS syntax; empty: UCX's default)"},
      {"inline_threshold_bytes", Setting::kInt, "65536",
       "with --transport=ucx, smaller tensors still go inline", 0, 1e12},
      {"ucx_checksum", Setting::kBool, "true",
       "with --transport=ucx, CRC-32C of host tensors set on publish and checked on fetch"},
      {"orchestrator", Setting::kString, "",
       "orchestrators to register with: host:port, several separated by commas; a DNS name stands "
       "for every address it resolves to, e.g. a headless Service (empty: none)"},
      {"orchestrator_refresh_seconds", Setting::kDouble, "10",
       "how often the --orchestrator names are resolved again", 0.1, 3600},
      {"worker_id", Setting::kString, "",
       "stable worker id (default: <stage>-<host>:<port>-<pid>)"},
      {"drain_seconds", Setting::kDouble, "30", "SIGTERM: time for running work to finish", 0,
       3600},
      {"log_level", Setting::kString, "info", "trace, debug, info, warn, error"},
      {"log_file", Setting::kString, "", "also write logs here"},
      {"port_file", Setting::kString, "", "write the bound port here once serving (for tests)"},
      {"metrics_port", Setting::kInt, "-1", "HTTP port of Prometheus /metrics (0: any, -1: off)",
       -1, 65535},
      {"health_port", Setting::kInt, "-1",
       "plain-text grpc.health.v1 port for probes when serving TLS (-1: off)", -1, 65535},
  };
  for (Setting& s : TlsSettings()) settings.push_back(std::move(s));
  for (Setting& s : VaeTilingSettings("decoder")) settings.push_back(std::move(s));
  settings.push_back(
      {"offload", Setting::kString, "none",
       "encoder, decoder: none, or model: the weights rest in host memory (pinned on CUDA) and are "
       "copied to --device around each request (diffusers' enable_model_cpu_offload)"});
  for (Setting& s : DitOffloadSettings("denoiser")) settings.push_back(std::move(s));
  for (Setting& s : DitShardSettings("denoiser")) settings.push_back(std::move(s));
  settings.push_back({"vram_budget", Setting::kString, "",
                      "denoiser: GPU memory its rank may use, e.g. 24GiB (empty: unchecked); a "
                      "model that does not fit with the given DiT flags ends the process, saying "
                      "what would fit"});
  Config config(std::move(settings));
  RETURN_IF_ERROR(config.ParseArgs(argc, argv));
  if (config.help_requested()) {
    std::printf("usage: dgrid-%s --model DIR [flags]\n%s", name.c_str(), config.Usage().c_str());
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string level_name, config.GetString("log_level"));
  ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(level_name));
  ASSIGN_OR_RETURN(std::string log_file, config.GetString("log_file"));
  RETURN_IF_ERROR(InitLogging({name, -1, level, log_file}));
  if (setup_transport) {
    TransportFlags transport;
    ASSIGN_OR_RETURN(transport.transport, config.GetString("transport"));
    ASSIGN_OR_RETURN(transport.ucx_tls, config.GetString("ucx_tls"));
    ASSIGN_OR_RETURN(transport.inline_threshold_bytes, config.GetInt("inline_threshold_bytes"));
    ASSIGN_OR_RETURN(transport.ucx_checksum, config.GetBool("ucx_checksum"));
    RETURN_IF_ERROR(setup_transport(transport));
  }

  StageOptions options;
  ASSIGN_OR_RETURN(options.model_path, config.GetString("model"));
  if (options.model_path.empty()) return InvalidArgument("--model is required");
  ASSIGN_OR_RETURN(options.limits, ReadModelLimits(options.model_path));
  RETURN_IF_ERROR(CheckStagesServe(options.limits, options.model_path));
  ASSIGN_OR_RETURN(options.load.device, config.GetString("device"));
  ASSIGN_OR_RETURN(std::string dtype, config.GetString("dtype"));
  if (!dtype.empty()) options.load.floating_dtype = dtype;
  ASSIGN_OR_RETURN(options.load.dit_precision, config.GetString("dit_precision"));
  ASSIGN_OR_RETURN(options.load.dit_offload, ReadDitOffloadFlags(config));
  // The group's rank and size are filled by a group's stage (group_stage.cc); a process alone
  // keeps size 1, which the model refuses to shard over.
  ASSIGN_OR_RETURN(options.load.dit_shard, ReadDitShardFlags(config, options.load.dit_offload));
  ASSIGN_OR_RETURN(options.vae, ReadVaeTilingFlags(config));  // checked by the decoder
  ASSIGN_OR_RETURN(const std::string offload, config.GetString("offload"));
  if (offload == "model") {
    if (kind == v1::STAGE_KIND_DENOISER) {
      return InvalidArgument(
          "--offload: 'model' is for the encoder and decoder; the DiT's offload ",
          "is --dit-offload");
    }
    options.model_offload = true;
  } else if (offload != "none") {
    return InvalidArgument("--offload: '", offload, "' must be none or model");
  }
  ASSIGN_OR_RETURN(int64_t workers, config.GetInt("workers"));
  ASSIGN_OR_RETURN(int64_t max_queued, config.GetInt("max_queued"));
  options.workers = static_cast<int>(workers);
  options.max_queued = static_cast<int>(max_queued);
  ASSIGN_OR_RETURN(std::string warmup, config.GetString("warmup_resolutions"));
  ASSIGN_OR_RETURN(options.warmup_resolutions, ParseResolutions(warmup));
  ASSIGN_OR_RETURN(std::string scheduling, config.GetString("scheduling"));
  if (scheduling != "fifo" && scheduling != "edf") {
    return InvalidArgument("--scheduling: '", scheduling, "' must be fifo or edf");
  }
  options.earliest_deadline_first = scheduling == "edf";
  ASSIGN_OR_RETURN(int64_t max_batch, config.GetInt("max_batch"));
  options.max_batch = static_cast<int>(max_batch);
  ASSIGN_OR_RETURN(double batch_wait_ms, config.GetDouble("batch_wait_ms"));
  options.batch_wait = absl::Milliseconds(batch_wait_ms);
  ASSIGN_OR_RETURN(std::string orchestrator, config.GetString("orchestrator"));
  if (!orchestrator.empty()) {  // a malformed list is refused before the weights load
    RETURN_IF_ERROR(ResolveOrchestrators(orchestrator, "--orchestrator").status());
  }
  ASSIGN_OR_RETURN(options.vram_budget, config.GetString("vram_budget"));
  if (check) RETURN_IF_ERROR(check(options));

  ASSIGN_OR_RETURN(std::string host, config.GetString("host"));
  ASSIGN_OR_RETURN(int64_t port, config.GetInt("port"));
  ASSIGN_OR_RETURN(TlsOptions tls, ReadTlsOptions(config));
  ASSIGN_OR_RETURN(int64_t health_port, config.GetInt("health_port"));
  ASSIGN_OR_RETURN(std::unique_ptr<GrpcServer> server,
                   GrpcServer::Start(absl::StrCat(host, ":", port), {stage.service()},
                                     GrpcServerOptions{name, tls, static_cast<int>(health_port)}));
  DG_LOG_INFO("", "listening on %s%s (not serving until the model is loaded)", server->address(),
              tls.server_tls() ? " with TLS" : "");

  const absl::Time load_start = absl::Now();
  RETURN_IF_ERROR(stage.Load(options));
  // Load gauges read the engine, which exists from here on; they are removed before it goes.
  metrics::Registry& registry = metrics::Registry::Global();
  metrics::ScopedCallbackGauge inflight_gauge(registry, "dgrid_inflight_requests",
                                              "Requests running now", {{"stage", name}},
                                              [&stage] { return stage.CurrentLoad().inflight; });
  metrics::ScopedCallbackGauge queue_gauge(
      registry, "dgrid_queue_depth", "Requests waiting in the stage's queue", {{"stage", name}},
      [&stage] { return stage.CurrentLoad().queued; });
  if (options.load.device != "cpu") metrics::RegisterGpuMemoryGauges(registry);
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  ASSIGN_OR_RETURN(int64_t metrics_port, config.GetInt("metrics_port"));
  if (metrics_port >= 0) {
    ASSIGN_OR_RETURN(metrics_server, metrics::MetricsServer::Start(
                                         host, static_cast<int>(metrics_port), &registry));
  }
  server->MarkServing(true);
  DG_LOG_INFO("", "serving model %s (loaded in %.1f s)", options.limits.name,
              absl::ToDoubleSeconds(absl::Now() - load_start));
  ASSIGN_OR_RETURN(std::string port_file, config.GetString("port_file"));
  if (!port_file.empty()) {
    FILE* f = std::fopen(port_file.c_str(), "w");
    if (f == nullptr) return ErrnoStatus(errno, "write " + port_file);
    std::fprintf(f, "%d\n", server->port());
    std::fclose(f);
  }

  std::unique_ptr<OrchestratorRegistrations> registration;
  if (!orchestrator.empty()) {
    ASSIGN_OR_RETURN(std::string advertise, config.GetString("advertise_host"));
    if (advertise.empty()) advertise = host == "0.0.0.0" ? "127.0.0.1" : host;
    v1::WorkerInfo worker;
    ASSIGN_OR_RETURN(std::string worker_id, config.GetString("worker_id"));
    worker.set_worker_id(!worker_id.empty() ? worker_id
                                            : absl::StrCat(name, "-", advertise, ":",
                                                           server->port(), "-", getpid()));
    worker.set_stage(kind);
    worker.set_address(absl::StrCat(advertise, ":", server->port()));
    worker.add_models(options.limits.name);
    *worker.add_model_infos() = ToModelInfo(options.limits);
    // What the stage accepts before answering RESOURCE_EXHAUSTED: running plus queued.
    // (A batching denoiser runs up to workers x max_batch.)
    worker.set_max_inflight(options.workers * options.max_batch + options.max_queued);
    worker.set_interconnect("tcp");
    worker.set_scheduling(options.earliest_deadline_first ? "edf" : "fifo");
    char hostname[256] = {0};
    gethostname(hostname, sizeof(hostname) - 1);
    worker.set_node(hostname);
    if (kind == v1::STAGE_KIND_DENOISER) {
      worker.mutable_layout()->set_cfg(1);
      worker.mutable_layout()->set_ring(1);
      worker.mutable_layout()->set_ulysses(1);
    }
    stage.DescribeWorker(worker);
    ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                     MakeChannelCredentials(tls));
    ASSIGN_OR_RETURN(double refresh, config.GetDouble("orchestrator_refresh_seconds"));
    registration = std::make_unique<OrchestratorRegistrations>(
        orchestrator, worker, [&stage] { return stage.CurrentLoad(); }, credentials,
        absl::Seconds(refresh));
    RETURN_IF_ERROR(registration->Start());
  }

  const int signo = WaitForTerminationSignal();
  ASSIGN_OR_RETURN(double drain_seconds, config.GetDouble("drain_seconds"));
  DG_LOG_INFO("", "signal %d: draining for up to %.0f s", signo, drain_seconds);
  if (registration) registration->Stop();
  server->MarkServing(false);
  const absl::Duration drain = absl::Seconds(drain_seconds);
  stage.Shutdown(drain);
  // Calls still open (e.g. a stream whose client went quiet) get a short grace, then are cancelled.
  server->Shutdown(absl::Now() + absl::Seconds(2));
  if (metrics_server) metrics_server->Stop();
  DG_LOG_INFO("", "stopped");
  FlushLogs();
  return absl::OkStatus();
}

}  // namespace

int RunStageMain(int argc, char** argv, v1::StageKind kind, int default_port, Stage& stage,
                 const TransportSetup& setup_transport, const StageCheck& check) {
  const absl::Status status = Run(argc, argv, kind, default_port, stage, setup_transport, check);
  if (status.ok()) return 0;
  DG_LOG_ERROR("", "%s", status.ToString());
  FlushLogs();
  std::fprintf(stderr, "dgrid-%s: %s\n", StageName(kind), status.ToString().c_str());
  return 1;
}

void LogWarmupIgnored(const char* why) { DG_LOG_WARN("", "--warmup-resolutions ignored: %s", why); }

}  // namespace dgrid
