// dgrid up: a local cluster on loopback — one orchestrator and encoder / denoiser / decoder
// processes — serving one model, until Ctrl-C. With --tls, every process gets a certificate from a
// throw-away CA (cli/local_certs.h): the public endpoints speak TLS and the stages accept only
// mutual TLS; --api-key protects the public API; --metrics-file gives every process a /metrics
// port.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/local_certs.h"
#include "common/component_flags.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/files.h"
#include "common/grpc_status.h"
#include "common/model_limits.h"
#include "common/service_runtime.h"
#include "common/status.h"
#include "common/step_cache.h"
#include "common/vae_tiling_flags.h"
#include "dgrid/v1/generation.grpc.pb.h"
#include "parallel/parallel_layout.h"
#include "planner/dit_settings.h"
#include "planner/memory_model.h"
#include "planner/model_shape.h"
#include "planner/nvml_discovery.h"
#include "planner/scheduling.h"
#include "services/decoder/models/vae_tiling.h"

namespace dgrid::cli {
namespace {

// The flags of `dgrid up` that name one of a few values (the rest are checked where they are read).
absl::Status CheckUpFlags(const std::string& policy, const std::string& transport,
                          const std::string& dtype) {
  if (policy != "least-loaded" && policy != "round-robin" && policy != "predicted-completion") {
    return InvalidArgument("--policy: '", policy,
                           "' must be least-loaded, round-robin or predicted-completion");
  }
  if (transport != "inline" && transport != "ucx") {
    return InvalidArgument("--transport: '", transport, "' must be ucx or inline");
  }
  if (!dtype.empty() && dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    return InvalidArgument("--dtype: '", dtype, "' must be float32, bfloat16 or float16");
  }
  return absl::OkStatus();
}

// GPUs the stages would see: CUDA_VISIBLE_DEVICES's entries when it is set, else NVML's count
// (0 without the NVIDIA driver).
int VisibleGpus() {
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) {
    return static_cast<int>(
        std::vector<std::string>(absl::StrSplit(visible, ',', absl::SkipWhitespace())).size());
  }
  absl::StatusOr<planner::Topology> topology = planner::DiscoverLocalTopology();
  return topology.ok() ? topology->TotalGpus() : 0;
}

// The --device of every denoiser process, [denoiser][rank]. With "cuda" each process gets a GPU
// of its own (denoiser i, rank k: cuda:(i * group_size + k)), so that no two groups share one;
// INVALID_ARGUMENT when that needs more GPUs than `visible_gpus`. A named device ("cuda:N") or
// "cpu" goes to every process, as asked. Anything else is INVALID_ARGUMENT naming --device.
absl::StatusOr<std::vector<std::vector<std::string>>> DenoiserDevices(const std::string& device,
                                                                      int denoisers, int group_size,
                                                                      int visible_gpus) {
  int index = 0;
  const bool named = absl::StartsWith(device, "cuda:") &&
                     absl::SimpleAtoi(absl::string_view(device).substr(5), &index) && index >= 0;
  if (device != "cpu" && device != "cuda" && !named) {
    return InvalidArgument("--device: '", device, "' must be cpu, cuda or cuda:N");
  }
  std::vector<std::vector<std::string>> devices(denoisers,
                                                std::vector<std::string>(group_size, device));
  if (device != "cuda") return devices;
  const int needed = denoisers * group_size;
  if (needed > visible_gpus) {
    return InvalidArgument("--device cuda: ", denoisers, " denoiser(s) of ", group_size,
                           " rank(s) need ", needed, " GPUs of their own, ", visible_gpus,
                           " visible; name one device (--device cuda:0) to share it");
  }
  for (int i = 0; i < denoisers; ++i) {
    for (int k = 0; k < group_size; ++k) devices[i][k] = absl::StrCat("cuda:", i * group_size + k);
  }
  return devices;
}

struct Child {
  std::string name;
  pid_t pid = -1;
  std::string log;
  // What restarts it (Supervise): the program and its arguments, and for a rank of a denoiser
  // group the group's name (its ranks are restarted together).
  std::string binary;
  std::vector<std::string> args;
  std::string group;
  std::vector<absl::Time> restarts;  // when it was restarted lately (crash-loop detection)
  absl::Time restart_at = absl::InfiniteFuture();  // exited: when to start it again
};

// Whether `port` on loopback can be bound now.
bool PortIsFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return free;
}

// A loopback port for a child to listen on. The kernel hands out ports of its ephemeral range
// (ip_local_port_range) to outgoing connections too, so one found there can be taken between this
// check and the child's bind (seen: a group's rendezvous store "Address already in use" while UCX
// and gRPC connections came and went). So: a free port below that range, tried from a random
// start; the kernel's choice only when the range leaves no room below it.
absl::StatusOr<int> FreePort() {
  int ephemeral_low = 32768;
  if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d", &ephemeral_low) != 1) ephemeral_low = 32768;
    std::fclose(f);
  }
  constexpr int kLowest = 10000;
  if (ephemeral_low - kLowest >= 1000) {
    const int span = ephemeral_low - kLowest;
    const int start = static_cast<int>(absl::Uniform(absl::BitGen(), 0, span));
    for (int i = 0; i < span; ++i) {
      const int port = kLowest + (start + i) % span;
      if (PortIsFree(port)) return port;
    }
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, "bind a free port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// Starts `binary args` as `name`, its output in <log_dir>/<name>.log (appended to for a restart,
// so that the crash that caused it stays readable).
absl::StatusOr<Child> Spawn(const std::string& name, const std::string& binary,
                            const std::vector<std::string>& args, const std::string& log_dir,
                            bool append = false) {
  Child child;
  child.name = name;
  child.binary = binary;
  child.args = args;
  child.log = JoinPath(log_dir, name + ".log");
  const int log_fd =
      open(child.log.c_str(), O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoStatus(errno, "open " + child.log);
  std::vector<std::string> argv_storage = {binary};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return ErrnoStatus(errno, "fork");
  }
  if (pid == 0) {
    // A cluster never outlives the `dgrid up` that started it.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(binary.c_str(), argv.data());
    std::fprintf(stderr, "cannot run %s: %s\n", binary.c_str(), strerror(errno));
    _exit(127);
  }
  close(log_fd);
  child.pid = pid;
  return child;
}

std::string Tail(const std::string& path, size_t bytes) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return "";
  return text->size() > bytes ? text->substr(text->size() - bytes) : *text;
}

void StopAll(std::vector<Child>& children, absl::Duration grace) {
  // Stages first, the orchestrator (children[0]) last, so no request is accepted that cannot run.
  for (size_t i = children.size(); i-- > 0;) {
    if (children[i].pid > 0) kill(children[i].pid, SIGTERM);
  }
  const absl::Time until = absl::Now() + grace;
  for (Child& c : children) {
    while (c.pid > 0) {
      int status = 0;
      const pid_t r = waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.pid = -1;
      } else if (absl::Now() > until) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        c.pid = -1;
      } else {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }
}

// Keeps the cluster's processes running: a child that exits is started again with the same
// arguments (the orchestrator on its same ports, so that the stages find it again; a stage on a
// new port, registering anew), after a back-off that doubles with each restart in the last minute
// (0.2 s, 0.4 s, ... at most 5 s). A rank of a denoiser group takes the whole group with it: the
// other ranks are stopped and all are started again around a new leader port. More than
// kMaxRestarts restarts of one process within a minute is a crash loop: Supervise returns its
// error and dgrid up stops the cluster. Called every few hundred milliseconds from one thread.
class Supervisor {
 public:
  static constexpr int kMaxRestarts = 5;

  Supervisor(std::vector<Child>* children, std::string log_dir, std::string host)
      : children_(children), log_dir_(std::move(log_dir)), host_(std::move(host)) {}

  absl::Status Supervise() {
    const absl::Time now = absl::Now();
    for (Child& c : *children_) {
      int status = 0;
      if (c.pid > 0 && waitpid(c.pid, &status, WNOHANG) == c.pid) {
        const pid_t pid = c.pid;
        c.pid = -1;
        c.restarts.erase(std::remove_if(c.restarts.begin(), c.restarts.end(),
                                        [&](absl::Time t) { return now - t > absl::Minutes(1); }),
                         c.restarts.end());
        if (static_cast<int>(c.restarts.size()) >= kMaxRestarts) {
          return Unavailable(c.name, " exited ", c.restarts.size() + 1, " times within a minute (",
                             ExitText(status), "); giving up. The end of ", c.log, ":\n",
                             Tail(c.log, 1500));
        }
        const absl::Duration backoff = std::min(
            absl::Milliseconds(200) * (1 << static_cast<int>(c.restarts.size())), absl::Seconds(5));
        c.restart_at = now + backoff;
        std::fprintf(stderr, "%s (pid %d) exited (%s); restarting it in %s (see %s)\n",
                     c.name.c_str(), static_cast<int>(pid), ExitText(status).c_str(),
                     absl::FormatDuration(backoff).c_str(), c.log.c_str());
      }
    }
    for (Child& c : *children_) {
      if (c.pid > 0 || now < c.restart_at) continue;
      if (c.group.empty()) {
        RETURN_IF_ERROR(Restart(c, now));
      } else {
        RETURN_IF_ERROR(RestartGroup(c.group, now));
      }
    }
    return absl::OkStatus();
  }

 private:
  static std::string ExitText(int status) {
    if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
    if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
    return "ended";
  }

  absl::Status Restart(Child& c, absl::Time now) {
    ASSIGN_OR_RETURN(Child fresh, Spawn(c.name, c.binary, c.args, log_dir_, /*append=*/true));
    c.pid = fresh.pid;
    c.restart_at = absl::InfiniteFuture();
    c.restarts.push_back(now);
    std::fprintf(stderr, "%s restarted (pid %d, restart %zu within a minute)\n", c.name.c_str(),
                 static_cast<int>(c.pid), c.restarts.size());
    return absl::OkStatus();
  }

  absl::Status RestartGroup(const std::string& group, absl::Time now) {
    std::vector<Child*> ranks;
    for (Child& c : *children_) {
      if (c.group == group) ranks.push_back(&c);
    }
    // The survivors cannot go on without their peer: stop them first.
    std::vector<Child> alive;
    for (Child* c : ranks) {
      if (c->pid > 0) alive.push_back(*c);
    }
    StopAll(alive, absl::Seconds(10));
    ASSIGN_OR_RETURN(int leader_port, FreePort());
    for (Child* c : ranks) {
      for (size_t i = 0; i + 1 < c->args.size(); ++i) {
        if (c->args[i] == "--leader-address")
          c->args[i + 1] = absl::StrCat(host_, ":", leader_port);
      }
      c->pid = -1;
    }
    std::fprintf(stderr, "denoiser group %s: restarting its %zu ranks (leader port %d)\n",
                 group.c_str(), ranks.size(), leader_port);
    for (Child* c : ranks) RETURN_IF_ERROR(Restart(*c, now));
    return absl::OkStatus();
  }

  std::vector<Child>* children_;
  const std::string log_dir_;
  const std::string host_;
};

// Polls the orchestrator until it lists `model` (all three stages registered), a child dies, or the
// timeout passes.
absl::Status WaitReady(const std::string& address, const std::string& model,
                       std::vector<Child>& children, absl::Duration timeout, const TlsOptions& tls,
                       const std::string& api_key) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   MakeChannelCredentials(tls));
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(address, credentials));
  const absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    for (Child& c : children) {
      int status = 0;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.pid = -1;
        return Unavailable(c.name, " exited during start-up; the end of ", c.log, ":\n",
                           Tail(c.log, 2000));
      }
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
    v1::ListModelsResponse response;
    if (stub->ListModels(&context, v1::ListModelsRequest(), &response).ok()) {
      for (const v1::ModelInfo& m : response.models()) {
        if (m.name() == model && !m.unavailable()) return absl::OkStatus();
      }
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::DeadlineExceededError(absl::StrCat("the cluster did not list model '", model,
                                                  "' within ", absl::FormatDuration(timeout),
                                                  "; see the logs"));
}

absl::Status Run(const std::vector<std::string>& args) {
  std::vector<Setting> settings = {
      {"model", Setting::kString, "",
       "model folder, or several separated by commas (one set of stages each, the first the "
       "default model); default: $DGRID_MODEL or the embedded model"},
      {"host", Setting::kString, "127.0.0.1", "address every process listens on"},
      {"port", Setting::kInt, "50050",
       "orchestrator gRPC port (0: a free one); with --orchestrators N, the i-th uses port + i", 0,
       65535},
      {"http_port", Setting::kInt, "8080",
       "orchestrator HTTP port (0: a free one); the i-th orchestrator uses http_port + i", 0,
       65535},
      {"orchestrators", Setting::kInt, "1",
       "orchestrator processes; every stage registers with each, any of them takes requests", 1,
       16},
      {"encoders", Setting::kInt, "1", "encoder processes", 1, 64},
      {"denoisers", Setting::kInt, "1", "denoiser groups (one process each unless parallel)", 1,
       64},
      {"ulysses", Setting::kInt, "1", "Ulysses degree of every denoiser group", 1, 64},
      {"ring", Setting::kInt, "1", "Ring degree of every denoiser group", 1, 64},
      {"cfg", Setting::kInt, "1", "CFG degree of every denoiser group (1 or 2)", 1, 2},
      {"comm", Setting::kString, "gloo", "collectives inside a denoiser group: gloo or nccl"},
      {"group_timeout_s", Setting::kDouble, "60", "bound on every collective of a group", 0.1,
       3600},
      {"decoders", Setting::kInt, "1", "decoder processes", 1, 64},
      {"policy", Setting::kString, "least-loaded",
       "orchestrator placement policy: least-loaded, round-robin, predicted-completion"},
      {"placement_calibration", Setting::kString, "",
       "predicted-completion: bench JSON of the card (empty: built-in H100)"},
      {"max_video_pixels", Setting::kInt, "0",
       "most frames x width x height one video request may ask for (0: the family's default)", 0,
       1e12},
      {"step_cache", Setting::kString, "",
       "step caching of requests that set none: "
       "METHOD[:THRESHOLD[:WARMUP_STEPS[:MAX_SKIP]]], e.g. fbcache:0.08 (docs/api.md); empty: off"},
      {"scheduling", Setting::kString, "fifo",
       "queue order of every stage: fifo or edf (earliest deadline first; denoisers preempt "
       "between steps)"},
      {"device", Setting::kString, "cpu", "device of every stage: cpu, cuda, cuda:N"},
      {"dtype", Setting::kString, "",
       "float32, bfloat16, float16 (empty: float32 on a CPU, else as stored)"},
      {"max_batch", Setting::kInt, "1",
       "denoisers: requests of one size sharing each step's forward, joining and leaving at step "
       "boundaries (1: unbatched; FLUX and Wan, on one process or a group)",
       1, 256},
      {"batch_wait_ms", Setting::kDouble, "0",
       "denoisers with --max-batch > 1: how long a lone request waits for company (0: none)", 0,
       60000},
      {"dit_precision", Setting::kString, "bf16",
       "denoisers' DiT linear layers: bf16 (as --dtype), fp8 (E4M3; CUDA sm_89+, FLUX) or "
       "fp8-fast (fp8 with fast accumulation)"},
      {"vram_budget", Setting::kString, "",
       "GPU memory a denoiser rank may use, e.g. 24GiB: the denoisers' DiT settings (bf16, "
       "layerwise offload, FP8) are chosen to fit each model's largest request as "
       "--performance-mode says, unless --dit-precision / --dit-offload are given, which are "
       "checked instead; a model nothing fits is refused before anything starts, with what "
       "would fit (planner/dit_settings.h; empty: no check)"},
      {"performance_mode", Setting::kString, "auto",
       "with --vram-budget: auto (the fastest lossless settings that fit), speed (the fastest "
       "that fit, FP8 included) or memory (the smallest footprint)"},
      {"transport", Setting::kString, "inline", "stage-to-stage tensors: ucx or inline"},
      {"ucx_tls", Setting::kString, "", "UCX transports of every stage (empty: UCX's default)"},
      {"inline_threshold_bytes", Setting::kInt, "65536",
       "with --transport=ucx, smaller tensors still go inline", 0, 1e12},
      {"log_dir", Setting::kString, "dgrid-logs", "one log file per process"},
      {"log_level", Setting::kString, "info", "log level of every process"},
      {"ready_timeout_s", Setting::kDouble, "180", "start-up time limit", 1, 3600},
      {"ready_file", Setting::kString, "",
       "write \"<grpc address> <http address>\" here when ready (a line per orchestrator)"},
      {"tls", Setting::kBool, "false",
       "TLS with certificates made in <log_dir>/tls (mutual TLS between processes)"},
      {"api_key", Setting::kString, "", "API key the public API requires (empty: none)"},
      {"metrics_file", Setting::kString, "",
       "give every process a /metrics port and write \"<name> <host:port>\" lines here"},
  };
  for (Setting& s : VaeTilingSettings("decoders")) settings.push_back(std::move(s));
  for (Setting& s : DitOffloadSettings("denoisers")) settings.push_back(std::move(s));
  for (Setting& s : DitShardSettings("denoiser groups")) settings.push_back(std::move(s));
  for (Setting& s : ComponentSettings("encoders and decoders")) settings.push_back(std::move(s));
  Config config(std::move(settings));
  RETURN_IF_ERROR(config.ParseArgs(args));
  if (config.help_requested()) {
    std::printf("usage: dgrid up [--config cluster.json] [flags]\n%s", config.Usage().c_str());
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string model_flag, config.GetString("model"));
  std::vector<std::string> models = absl::StrSplit(model_flag, ',', absl::SkipEmpty());
  if (models.empty()) {
    const std::string fallback = DefaultModelPath();
    if (fallback.empty()) return NotFound("model: none given and no default model found");
    models.push_back(fallback);
  }
  // Every model gets its own encoders, denoisers and decoders; the orchestrator routes requests
  // by GenerateRequest.model, the first model serving those that name none.
  std::vector<ModelLimits> model_limits;
  for (std::string& m : models) {
    m = AbsolutePath(m);
    ASSIGN_OR_RETURN(ModelLimits l, ReadModelLimits(m));
    RETURN_IF_ERROR(CheckStagesServe(l, m));
    for (const ModelLimits& other : model_limits) {
      if (other.name == l.name) {
        return InvalidArgument("model: two models are named '", l.name,
                               "' (a model's name is its folder's name)");
      }
    }
    model_limits.push_back(l);
  }
  const std::string& model = models[0];
  const ModelLimits& limits = model_limits[0];
  ASSIGN_OR_RETURN(std::string host, config.GetString("host"));
  ASSIGN_OR_RETURN(int64_t port, config.GetInt("port"));
  ASSIGN_OR_RETURN(int64_t http_port, config.GetInt("http_port"));
  ASSIGN_OR_RETURN(int64_t orchestrator_count, config.GetInt("orchestrators"));
  // The i-th orchestrator listens on port + i and http_port + i (a free pair each when 0).
  std::vector<std::pair<int, int>> orchestrator_ports;
  for (int64_t i = 0; i < orchestrator_count; ++i) {
    int grpc_port = port == 0 ? 0 : static_cast<int>(port + i);
    int web_port = http_port == 0 ? 0 : static_cast<int>(http_port + i);
    if (grpc_port > 65535 || web_port > 65535) {
      return InvalidArgument("--orchestrators: ", orchestrator_count, " orchestrators from port ",
                             grpc_port > 65535 ? port : http_port, " pass port 65535");
    }
    for (const auto& [g, h] : orchestrator_ports) {
      for (int taken : {g, h}) {
        if (taken != 0 && (taken == grpc_port || taken == web_port)) {
          return InvalidArgument("--port and --http-port: orchestrators would share port ", taken,
                                 "; give ranges that do not overlap");
        }
      }
    }
    if (grpc_port != 0 && grpc_port == web_port) {
      return InvalidArgument("--port and --http-port are both ", grpc_port,
                             ": give them different ports");
    }
    orchestrator_ports.emplace_back(grpc_port, web_port);
  }
  for (auto& [g, h] : orchestrator_ports) {
    if (g == 0) {
      ASSIGN_OR_RETURN(g, FreePort());
    }
    if (h == 0) {
      ASSIGN_OR_RETURN(h, FreePort());
    }
  }
  ASSIGN_OR_RETURN(std::string log_dir, config.GetString("log_dir"));
  ASSIGN_OR_RETURN(std::string log_level, config.GetString("log_level"));
  ASSIGN_OR_RETURN(std::string device, config.GetString("device"));
  ASSIGN_OR_RETURN(std::string dtype, config.GetString("dtype"));
  ASSIGN_OR_RETURN(const std::string dit_precision, config.GetString("dit_precision"));
  if (dit_precision != "bf16" && dit_precision != "fp8" && dit_precision != "fp8-fast") {
    return InvalidArgument("--dit-precision: '", dit_precision, "' must be bf16, fp8 or fp8-fast");
  }
  ASSIGN_OR_RETURN(const VaeTilingFlags vae, ReadVaeTilingFlags(config));
  RETURN_IF_ERROR(decoder::ParseVaeTilingMode(vae.mode, "--vae-tiling").status());
  ASSIGN_OR_RETURN(const DitOffload dit_offload, ReadDitOffloadFlags(config));
  ASSIGN_OR_RETURN(const DitShard dit_shard, ReadDitShardFlags(config, dit_offload));
  // The encoders run the text encoders, the decoders the VAE: their --device and --dtype where the
  // component flags name them (common/component_flags.h), else --device and --dtype.
  ASSIGN_OR_RETURN(const ComponentFlags components, ReadComponentFlags(config));
  ASSIGN_OR_RETURN(std::string vram_budget, config.GetString("vram_budget"));
  double budget_mib = 0;
  if (!vram_budget.empty()) {
    ASSIGN_OR_RETURN(budget_mib, planner::ParseMemorySize(vram_budget, "--vram-budget"));
  }
  ASSIGN_OR_RETURN(const std::string performance_mode_text, config.GetString("performance_mode"));
  ASSIGN_OR_RETURN(const planner::PerformanceMode performance_mode,
                   planner::ParsePerformanceMode(performance_mode_text, "--performance-mode"));
  const std::string given_dtype = dtype;  // before the CPU default, for the component flags
  if (dtype.empty() && device == "cpu") dtype = "float32";  // as `dgrid generate --local` does
  ASSIGN_OR_RETURN(std::string transport, config.GetString("transport"));
  ASSIGN_OR_RETURN(std::string ucx_tls, config.GetString("ucx_tls"));
  ASSIGN_OR_RETURN(int64_t inline_threshold, config.GetInt("inline_threshold_bytes"));
  // Every flag is checked before anything is started.
  ASSIGN_OR_RETURN(std::string policy, config.GetString("policy"));
  ASSIGN_OR_RETURN(int64_t encoders, config.GetInt("encoders"));
  ASSIGN_OR_RETURN(int64_t denoisers, config.GetInt("denoisers"));
  ASSIGN_OR_RETURN(int64_t decoders, config.GetInt("decoders"));
  // Denoiser groups: each "denoiser" is cfg * ring * ulysses processes; rank 0 serves.
  ASSIGN_OR_RETURN(int64_t ulysses, config.GetInt("ulysses"));
  ASSIGN_OR_RETURN(int64_t ring, config.GetInt("ring"));
  ASSIGN_OR_RETURN(int64_t cfg, config.GetInt("cfg"));
  ASSIGN_OR_RETURN(std::string comm, config.GetString("comm"));
  ASSIGN_OR_RETURN(double group_timeout, config.GetDouble("group_timeout_s"));
  ASSIGN_OR_RETURN(ParallelLayout layout,
                   ParallelLayout::Create(static_cast<int>(cfg), static_cast<int>(ring),
                                          static_cast<int>(ulysses), 0));
  if (comm != "gloo" && comm != "nccl") return InvalidArgument("--comm must be gloo or nccl");
  RETURN_IF_ERROR(CheckDitShardGroup(dit_shard, layout.size()));
  // The DiT flags each model's denoisers start with: the given ones, or what the budget chooses.
  std::vector<std::vector<std::string>> denoiser_dit_args(models.size());
  for (std::vector<std::string>& a : denoiser_dit_args) {
    if (dit_precision != "bf16") a.insert(a.end(), {"--dit-precision", dit_precision});
    for (std::string& flag : DitOffloadArgs(dit_offload)) a.push_back(std::move(flag));
  }
  // --dit-shard-weights given (on or off): only that is tried; not given, the budget may choose
  // sharding for a group of 2 or more, at --dit-shard-prefetch's depth.
  const bool shard_given = config.WasSet("dit_shard_weights");
  if (budget_mib > 0) {
    // Each model's largest request on one denoiser rank of the layout: the candidates of
    // planner/dit_settings.h that fit the budget, narrowed to the flags the user gave.
    planner::GroupShape shape;
    shape.cfg = static_cast<int>(cfg);
    shape.ring = static_cast<int>(ring);
    shape.ulysses = static_cast<int>(ulysses);
    const bool precision_given = config.WasSet("dit_precision");
    // --dit-offload given: only that is tried (none, or layerwise at its prefetch). A prefetch
    // given alone is the depth offload uses if the budget chooses offload.
    const bool offload_given = config.WasSet("dit_offload");
    const bool prefetch_given = config.WasSet("dit_offload_prefetch");
    for (size_t i = 0; i < models.size(); ++i) {
      ASSIGN_OR_RETURN(planner::ModelShape transformer, planner::ReadModelShape(models[i]));
      planner::Workload largest;
      planner::RequestClass request;
      request.shape.width = model_limits[i].max_width;
      request.shape.height = model_limits[i].max_height;
      request.shape.frames = std::max(model_limits[i].max_num_frames, 1);
      request.shape.cfg = true;
      request.name = absl::StrCat(
          "its largest request (", request.shape.width, "x", request.shape.height,
          request.shape.frames > 1 ? absl::StrCat("x", request.shape.frames) : std::string(),
          ", CFG)");
      largest.classes.push_back(request);
      planner::DitChoiceOptions options;
      options.mode = performance_mode;
      if (precision_given) {
        ASSIGN_OR_RETURN(options.precision, planner::ParseDitPrecision(dit_precision));
      }
      const int given_depth = static_cast<int>(
          dit_offload.PrefetchDepth(static_cast<int64_t>(transformer.BlockWeightBytes().size())));
      if (offload_given) options.offload_prefetch = dit_offload.layerwise ? given_depth : 0;
      if (dit_offload.model) {
        // The denoiser holds the whole bf16 DiT while it denoises (the peak of no offload), and
        // refuses model offload with FP8 or sharded weights: only that candidate is the user's
        // (an FP8 precision given with it is left for the denoiser to refuse, naming both flags).
        if (!precision_given) options.precision = planner::DitPrecision::kBf16;
        options.shard_prefetch = 0;
      }
      if (offload_given || prefetch_given) options.prefetch_depths = {given_depth};
      if (shard_given) {
        options.shard_prefetch = dit_shard.weights ? static_cast<int>(dit_shard.prefetch) : 0;
      }
      options.shard_prefetch_depths = {static_cast<int>(dit_shard.prefetch)};
      ASSIGN_OR_RETURN(planner::DitChoice choice,
                       planner::ChooseDitSettings(
                           planner::BuiltInMemoryModel(),
                           planner::CostModel(planner::Calibration(), planner::LinkSpeeds()),
                           transformer, largest, shape, budget_mib, options));
      if (!choice.fits()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "--vram-budget: ", choice.refusal,
            precision_given || offload_given || shard_given
                ? " (only the --dit-precision / --dit-offload / --dit-shard-weights settings given "
                  "were tried)"
                : "",
            "\n", choice.ToText("  ")));
      }
      const planner::DitCandidate& chosen = choice.candidates[choice.chosen];
      // A lossy precision is taken only when asked for: --dit-precision, or --performance-mode
      // speed (which accepts FP8's measured quality cost).
      if (!chosen.lossless && !precision_given &&
          performance_mode != planner::PerformanceMode::kSpeed) {
        return absl::ResourceExhaustedError(
            absl::StrCat("--vram-budget: ", transformer.name, " fits the ",
                         planner::FormatMib(budget_mib), " budget only as ", chosen.name,
                         " (predicted peak ", planner::FormatMib(chosen.memory.total_mib()),
                         "): pass --dit-precision fp8 or --performance-mode speed to accept it\n",
                         choice.ToText("  ")));
      }
      if (!precision_given || !offload_given || !shard_given) {
        // The given flags stay as they are; the rest come from the choice.
        std::vector<std::string> args;
        const bool fp8 = precision_given ? dit_precision != "bf16"
                                         : chosen.precision == planner::DitPrecision::kFp8;
        if (fp8) {
          args.insert(args.end(), {"--dit-precision", precision_given ? dit_precision : "fp8"});
        }
        if (offload_given) {
          for (std::string& flag : DitOffloadArgs(dit_offload)) args.push_back(std::move(flag));
        } else if (chosen.offload_prefetch > 0) {
          args.insert(args.end(), {"--dit-offload", "layerwise", "--dit-offload-prefetch",
                                   std::to_string(chosen.offload_prefetch)});
        }
        if (!shard_given && chosen.shard_prefetch > 0) {
          DitShard shard = dit_shard;
          shard.weights = true;
          shard.prefetch = chosen.shard_prefetch;
          for (std::string& flag : DitShardArgs(shard)) args.push_back(std::move(flag));
        }
        denoiser_dit_args[i] = args;
      }
      std::fprintf(stderr,
                   "dgrid up: %s denoisers: %s for a %s budget (--performance-mode %s; predicted "
                   "peak %s per rank, step %.0f ms for its largest request)%s\n",
                   transformer.name.c_str(), chosen.name.c_str(),
                   planner::FormatMib(budget_mib).c_str(),
                   planner::PerformanceModeName(performance_mode),
                   planner::FormatMib(chosen.memory.total_mib()).c_str(), chosen.step_ms,
                   denoiser_dit_args[i].empty()
                       ? ""
                       : absl::StrCat(": ", absl::StrJoin(denoiser_dit_args[i], " ")).c_str());
    }
  }
  ASSIGN_OR_RETURN(std::string scheduling, config.GetString("scheduling"));
  RETURN_IF_ERROR(planner::ParseGroupScheduling(scheduling, "--scheduling").status());
  ASSIGN_OR_RETURN(const int64_t max_batch, config.GetInt("max_batch"));
  ASSIGN_OR_RETURN(const double batch_wait_ms, config.GetDouble("batch_wait_ms"));
  RETURN_IF_ERROR(CheckUpFlags(policy, transport, dtype));
  ASSIGN_OR_RETURN(
      std::vector<std::vector<std::string>> denoiser_devices,
      DenoiserDevices(device, static_cast<int>(denoisers) * static_cast<int>(models.size()),
                      layout.size(), device == "cuda" ? VisibleGpus() : 0));
  mkdir(log_dir.c_str(), 0755);
  if (!IsDirectory(log_dir)) return NotFound("log_dir: cannot create ", log_dir);
  ASSIGN_OR_RETURN(bool use_tls, config.GetBool("tls"));
  ASSIGN_OR_RETURN(std::string api_key, config.GetString("api_key"));
  ASSIGN_OR_RETURN(std::string metrics_file, config.GetString("metrics_file"));
  TlsOptions tls;
  if (use_tls) {
    ASSIGN_OR_RETURN(LocalCertificates certs,
                     MakeLocalCertificates(JoinPath(log_dir, "tls"), {host}));
    tls = TlsOptions{certs.cert_file, certs.key_file, certs.ca_file,
                     TlsOptions::ClientAuth::kRequire};
  }
  // Flags of one process's TLS: the stages require client certificates, the orchestrator asks for
  // them (its registry needs one) but lets public clients in without.
  auto tls_args = [&tls](TlsOptions::ClientAuth auth) -> std::vector<std::string> {
    if (tls.cert_file.empty()) return {};
    return {"--tls-cert",        tls.cert_file,
            "--tls-key",         tls.key_file,
            "--tls-ca",          tls.ca_file,
            "--tls-client-auth", auth == TlsOptions::ClientAuth::kRequire ? "require" : "optional"};
  };
  std::vector<std::pair<std::string, int>> metrics_ports;
  // Adds "--metrics-port N" (a free port) to `args` when --metrics-file asks for metrics.
  auto metrics_args = [&](const std::string& name, std::vector<std::string>& args) -> absl::Status {
    if (metrics_file.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(int metrics_port, FreePort());
    metrics_ports.emplace_back(name, metrics_port);
    args.insert(args.end(), {"--metrics-port", std::to_string(metrics_port)});
    return absl::OkStatus();
  };

  ASSIGN_OR_RETURN(std::string placement_calibration, config.GetString("placement_calibration"));
  std::vector<std::string> grpc_addresses, http_addresses;
  for (const auto& [g, h] : orchestrator_ports) {
    grpc_addresses.push_back(absl::StrCat(host, ":", g));
    http_addresses.push_back(absl::StrCat(use_tls ? "https://" : "http://", host, ":", h));
  }
  // What the stages register with: every orchestrator.
  const std::string orchestrator = absl::StrJoin(grpc_addresses, ",");
  std::vector<Child> children;
  auto cleanup = [&] { StopAll(children, absl::Seconds(10)); };
  ASSIGN_OR_RETURN(std::string orchestrator_bin, FindBinary("dgrid-orchestrator"));
  std::vector<std::string> orchestrator_args = {
      "--host", host, "--default-model", limits.name, "--log-level", log_level, "--policy", policy};
  if (model_limits.size() > 1) {  // every model is answered UNAVAILABLE until its stages are up
    std::vector<std::string> others;
    for (size_t m = 1; m < model_limits.size(); ++m) others.push_back(model_limits[m].name);
    orchestrator_args.insert(orchestrator_args.end(), {"--models", absl::StrJoin(others, ",")});
  }
  ASSIGN_OR_RETURN(int64_t max_video_pixels, config.GetInt("max_video_pixels"));
  if (max_video_pixels > 0) {
    orchestrator_args.insert(orchestrator_args.end(),
                             {"--max-video-pixels", std::to_string(max_video_pixels)});
  }
  ASSIGN_OR_RETURN(std::string step_cache, config.GetString("step_cache"));
  if (!step_cache.empty()) {
    RETURN_IF_ERROR(ParseStepCacheSpec(step_cache, "--step-cache").status());
    orchestrator_args.insert(orchestrator_args.end(), {"--step-cache", step_cache});
  }
  // The cost model predicts for the served model (only predicted-completion uses it).
  if (policy == "predicted-completion") {
    orchestrator_args.insert(orchestrator_args.end(), {"--placement-model", model});
  }
  if (!placement_calibration.empty()) {
    orchestrator_args.insert(orchestrator_args.end(),
                             {"--placement-calibration", placement_calibration});
  }
  for (std::string& a : tls_args(TlsOptions::ClientAuth::kOptional)) {
    orchestrator_args.push_back(std::move(a));
  }
  if (!api_key.empty()) {
    const std::string keys_file = JoinPath(log_dir, "api-keys");
    FILE* f = std::fopen(keys_file.c_str(), "w");
    if (f == nullptr) return ErrnoStatus(errno, "write " + keys_file);
    fchmod(fileno(f), 0600);
    std::fprintf(f, "%s\n", api_key.c_str());
    std::fclose(f);
    orchestrator_args.insert(orchestrator_args.end(), {"--api-keys-file", keys_file});
  }
  // Orchestrators are children[0 .. orchestrator_count): StopAll stops them last.
  absl::StatusOr<Child> child;
  for (size_t i = 0; i < orchestrator_ports.size(); ++i) {
    const std::string name = i == 0 ? "orchestrator" : absl::StrCat("orchestrator-", i);
    std::vector<std::string> args = {"--port", std::to_string(orchestrator_ports[i].first),
                                     "--http-port", std::to_string(orchestrator_ports[i].second)};
    args.insert(args.end(), orchestrator_args.begin(), orchestrator_args.end());
    absl::Status metrics = metrics_args(name, args);
    if (metrics.ok()) {
      child = Spawn(name, orchestrator_bin, args, log_dir);
      metrics = child.status();
    }
    if (!metrics.ok()) {
      cleanup();
      return metrics;
    }
    children.push_back(*child);
  }

  struct StageSpec {
    const char* name;
    const char* binary;
    int64_t count;
  };
  for (size_t m = 0; m < models.size(); ++m) {
    const std::string& stage_model = models[m];
    for (const StageSpec& spec : {StageSpec{"encoder", "dgrid-encoder", encoders},
                                  StageSpec{"denoiser", "dgrid-denoiser", denoisers},
                                  StageSpec{"decoder", "dgrid-decoder", decoders}}) {
      absl::StatusOr<std::string> binary = FindBinary(spec.binary);
      if (!binary.ok()) {
        cleanup();
        return binary.status();
      }
      const bool encoder = spec.name == std::string("encoder");
      const bool decoder = spec.name == std::string("decoder");
      std::string stage_device = device;
      std::string stage_dtype = dtype;
      bool stage_offload = false;
      // A component flag given: the component's device and dtype as --local places it
      // (PlaceComponent: float32 on a CPU unless a dtype is named, as stored on a GPU).
      const std::string& component_device =
          encoder ? components.text_encoder_device : components.vae_device;
      const std::string& component_precision =
          encoder ? components.text_encoder_precision : components.vae_precision;
      if ((encoder || decoder) && (!component_device.empty() || !component_precision.empty())) {
        const ComponentPlacement place =
            PlaceComponent(component_device, component_precision, device, given_dtype);
        stage_device = place.device;
        stage_dtype = place.dtype.value_or("");
        stage_offload = place.offload;
      }
      for (int64_t i = 0; i < spec.count; ++i) {
        std::vector<std::string> stage_args = {
            "--model",        stage_model,  "--host",   host,         "--port",      "0",
            "--orchestrator", orchestrator, "--device", stage_device, "--log-level", log_level};
        if (!stage_dtype.empty()) {
          stage_args.push_back("--dtype");
          stage_args.push_back(stage_dtype);
        }
        if (stage_offload) stage_args.insert(stage_args.end(), {"--offload", "model"});
        if (spec.name == std::string("denoiser")) {
          stage_args.insert(stage_args.end(), denoiser_dit_args[m].begin(),
                            denoiser_dit_args[m].end());
          // Given sharding; sharding the budget chose is in denoiser_dit_args.
          for (std::string& a : DitShardArgs(dit_shard)) stage_args.push_back(std::move(a));
        }
        if (spec.name == std::string("denoiser") && max_batch > 1) {
          stage_args.insert(stage_args.end(), {"--max-batch", std::to_string(max_batch),
                                               "--batch-wait-ms", absl::StrCat(batch_wait_ms)});
        }
        stage_args.insert(stage_args.end(), {"--transport", transport, "--inline-threshold-bytes",
                                             std::to_string(inline_threshold)});
        if (!ucx_tls.empty()) stage_args.insert(stage_args.end(), {"--ucx-tls", ucx_tls});
        stage_args.insert(stage_args.end(), {"--scheduling", scheduling});
        if (spec.name == std::string("decoder") && (vae.mode != "auto" || vae.tile_size != 0)) {
          stage_args.insert(stage_args.end(), {"--vae-tiling", vae.mode, "--vae-tile-size",
                                               std::to_string(vae.tile_size)});
        }
        for (std::string& a : tls_args(TlsOptions::ClientAuth::kRequire)) {
          stage_args.push_back(std::move(a));
        }
        // The first model's processes are encoder-0, ...; the next ones' encoder-0-m1, ...
        const std::string name =
            absl::StrCat(spec.name, "-", i, m == 0 ? "" : absl::StrCat("-m", m));
        const absl::Status metrics = metrics_args(name, stage_args);
        if (!metrics.ok()) {
          cleanup();
          return metrics;
        }
        const bool group = spec.name == std::string("denoiser") && layout.size() > 1;
        absl::StatusOr<int> leader_port = group ? FreePort() : absl::StatusOr<int>(0);
        for (int rank = 0; rank < (group ? layout.size() : 1) && leader_port.ok(); ++rank) {
          std::vector<std::string> rank_args = stage_args;
          if (group) {
            rank_args.insert(rank_args.end(),
                             {"--ulysses", std::to_string(ulysses), "--ring", std::to_string(ring),
                              "--cfg", std::to_string(cfg), "--rank", std::to_string(rank),
                              "--group-size", std::to_string(layout.size()), "--leader-address",
                              absl::StrCat(host, ":", *leader_port), "--comm", comm,
                              "--group-timeout-seconds", absl::StrCat(group_timeout)});
          }
          if (spec.name == std::string("denoiser")) {
            rank_args.insert(
                rank_args.end(),
                {"--device", denoiser_devices[static_cast<int64_t>(m) * denoisers + i][rank]});
          }
          child = Spawn(rank == 0 ? name : absl::StrCat(name, "-rank", rank), *binary, rank_args,
                        log_dir);
          if (!child.ok()) break;
          if (group) child->group = name;  // its ranks are restarted together
          children.push_back(*child);
        }
        if (!leader_port.ok() || !child.ok()) {
          cleanup();
          return leader_port.ok() ? child.status() : leader_port.status();
        }
      }
    }
  }

  ASSIGN_OR_RETURN(double ready_timeout, config.GetDouble("ready_timeout_s"));
  std::fprintf(stderr, "starting %zu processes (logs in %s/) ...\n", children.size(),
               log_dir.c_str());
  const absl::Time ready_until = absl::Now() + absl::Seconds(ready_timeout);
  std::vector<std::string> names;
  for (const ModelLimits& l : model_limits) {
    for (const std::string& address : grpc_addresses) {  // every orchestrator has every stage
      const absl::Status ready =
          WaitReady(address, l.name, children,
                    std::max(ready_until - absl::Now(), absl::ZeroDuration()), tls, api_key);
      if (!ready.ok()) {
        cleanup();
        return ready;
      }
    }
    names.push_back(l.name);
  }
  std::printf("dgrid cluster up: model%s %s, gRPC %s, HTTP %s\n", names.size() > 1 ? "s" : "",
              absl::StrJoin(names, ", ").c_str(), absl::StrJoin(grpc_addresses, " ").c_str(),
              absl::StrJoin(http_addresses, " ").c_str());
  std::printf("try: dgrid generate --server %s \"a red circle\" -o out.png   (Ctrl-C stops)\n",
              grpc_addresses[0].c_str());
  std::fflush(stdout);
  if (!metrics_file.empty()) {
    std::string lines;
    for (const auto& [name, metrics_port] : metrics_ports) {
      absl::StrAppend(&lines, name, " ", host, ":", metrics_port, "\n");
    }
    RETURN_IF_ERROR(WriteFileAtomically(metrics_file, lines));
  }
  if (use_tls) {
    std::printf("TLS: CA %s; clients need it (and the API key when one is set)\n",
                tls.ca_file.c_str());
  }
  ASSIGN_OR_RETURN(std::string ready_file, config.GetString("ready_file"));
  if (!ready_file.empty()) {
    std::string lines;
    for (size_t i = 0; i < grpc_addresses.size(); ++i) {
      absl::StrAppend(&lines, grpc_addresses[i], " ", http_addresses[i], "\n");
    }
    RETURN_IF_ERROR(WriteFileAtomically(ready_file, lines));
  }

  // Runs until a signal; a process that dies meanwhile is started again (Supervisor), and a crash
  // loop stops the cluster with an error.
  std::atomic<bool> stopping{false};
  absl::Status gave_up;
  std::thread watcher([&] {
    Supervisor supervisor(&children, log_dir, host);
    while (!stopping.load()) {
      absl::Status s = supervisor.Supervise();
      if (!s.ok()) {
        gave_up = s;
        raise(SIGTERM);  // wakes WaitForTerminationSignal below
        return;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  const int signo = WaitForTerminationSignal();
  // The watcher reads `children`; it must be gone before StopAll reaps them.
  stopping.store(true);
  watcher.join();
  if (gave_up.ok()) std::fprintf(stderr, "signal %d: stopping the cluster\n", signo);
  cleanup();
  if (!gave_up.ok()) return gave_up;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> FindBinary(const std::string& name) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::vector<std::string> dirs;
  if (n > 0) {
    self[n] = '\0';
    std::string dir(self);
    dirs.push_back(dir.substr(0, dir.rfind('/')));
  }
  for (absl::string_view d : absl::StrSplit(DGRID_STAGE_BINARY_DIRS, ':', absl::SkipEmpty())) {
    dirs.emplace_back(d);
  }
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view d : absl::StrSplit(path, ':', absl::SkipEmpty())) dirs.emplace_back(d);
  }
  for (const std::string& dir : dirs) {
    const std::string candidate = JoinPath(dir, name);
    if (access(candidate.c_str(), X_OK) == 0 && IsRegularFile(candidate)) return candidate;
  }
  return NotFound("cannot find the ", name, " program next to dgrid, in the build tree or on PATH");
}

int UpCommand(const std::vector<std::string>& args) {
  const absl::Status status = Run(args);
  if (status.ok()) return 0;
  std::fprintf(stderr, "dgrid up: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace dgrid::cli
