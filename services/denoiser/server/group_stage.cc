#include "services/denoiser/server/group_stage.h"

#include <cstdio>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/logging.h"
#include "common/status.h"

namespace dgrid {

GroupLeaderStage::~GroupLeaderStage() {
  if (group_) group_->Stop();
  // The engine's batches refer to the group: they go first.
  engine_.reset();
}

absl::Status GroupLeaderStage::Load(const StageOptions& options) {
  LoadOptions load = options.load;
  // Sharded weights (--dit-shard-weights) are sharded over this group.
  load.dit_shard.rank = flags_.rank;
  load.dit_shard.size = flags_.group_size;
  ASSIGN_OR_RETURN(engine_,
                   DenoiserEngine::Create({options.model_path, load, options.workers,
                                           options.max_queued, options.earliest_deadline_first,
                                           options.max_batch, options.batch_wait}));
  ASSIGN_OR_RETURN(group_, DenoiserGroup::Join(flags_, engine_->family_denoiser()));
  DenoiserGroup* group = group_.get();
  // --max-batch: batches step on every rank (DenoiserGroup::BatchBackend); lone requests, and all
  // of them when the family does not batch in groups, run through RunRequest.
  engine_->SetRunner([group](const DenoiseInput& input,
                             const SamplerHooks& hooks) { return group->RunRequest(input, hooks); },
                     group->BatchBackend());
  group_->StartKeepAlive();
  // Through the group's sampler, so every rank warms up together.
  if (!options.warmup_resolutions.empty()) {
    RETURN_IF_ERROR(engine_->Warmup(options.warmup_resolutions));
  }
  service_.SetEngine(engine_.get(), options.limits.name);
  return absl::OkStatus();
}

RegistrationClient::Load GroupLeaderStage::CurrentLoad() const {
  return {engine_->running(), engine_->queued(), group_->healthy()};
}

void GroupLeaderStage::DescribeWorker(v1::WorkerInfo& worker) const {
  worker.mutable_layout()->set_cfg(flags_.cfg);
  worker.mutable_layout()->set_ring(flags_.ring);
  worker.mutable_layout()->set_ulysses(flags_.ulysses);
}

void GroupLeaderStage::Shutdown(absl::Duration drain) {
  engine_->Shutdown(drain);
  group_->Stop();
}

int RunGroupPeerMain(const std::vector<std::string>& args, const GroupFlags& flags) {
  // The few stage flags a peer needs; "--name=value" or "--name value".
  std::map<std::string, std::string> values = {{"model", ""},
                                               {"device", "cpu"},
                                               {"dtype", ""},
                                               {"dit_precision", ""},
                                               {"dit_offload", "none"},
                                               {"dit_offload_prefetch", "1"},
                                               {"dit_shard_weights", "false"},
                                               {"dit_shard_prefetch", "1"},
                                               {"log_level", "info"},
                                               {"log_file", ""}};
  for (size_t i = 0; i < args.size(); ++i) {
    if (!absl::StartsWith(args[i], "--")) continue;
    std::string name = absl::StrReplaceAll(args[i].substr(2), {{"-", "_"}});
    std::string value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = args[i].substr(2 + eq + 1);
      name = name.substr(0, eq);
    } else if (name == "dit_shard_weights") {
      value = "true";  // A boolean: a bare flag turns it on (as Config reads it on the leader).
    } else if (values.count(name) && i + 1 < args.size()) {
      value = args[++i];
    }
    if (values.count(name)) values[name] = value;
  }
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(values["log_level"]));
    RETURN_IF_ERROR(InitLogging({"denoiser", flags.rank, level, values["log_file"]}));
    if (values["model"].empty()) return InvalidArgument("--model is required");
    DenoiserEngineOptions options;
    options.model_path = values["model"];
    options.load.device = values["device"];
    if (!values["dtype"].empty()) options.load.floating_dtype = values["dtype"];
    options.load.dit_precision = values["dit_precision"];
    ASSIGN_OR_RETURN(options.load.dit_offload,
                     ParseDitOffload(values["dit_offload"], values["dit_offload_prefetch"]));
    ASSIGN_OR_RETURN(options.load.dit_shard,
                     ParseDitShard(values["dit_shard_weights"], values["dit_shard_prefetch"],
                                   options.load.dit_offload));
    options.load.dit_shard.rank = flags.rank;
    options.load.dit_shard.size = flags.group_size;
    options.max_queued = 0;
    ASSIGN_OR_RETURN(std::unique_ptr<DenoiserEngine> engine, DenoiserEngine::Create(options));
    ASSIGN_OR_RETURN(std::unique_ptr<DenoiserGroup> group,
                     DenoiserGroup::Join(flags, engine->family_denoiser()));
    return group->ServePeer();
  }();
  if (status.ok()) return 0;
  DG_LOG_ERROR("", "denoiser group peer rank %d: %s", flags.rank, status.ToString());
  FlushLogs();
  std::fprintf(stderr, "dgrid-denoiser rank %d: %s\n", flags.rank, status.ToString().c_str());
  return 1;
}

}  // namespace dgrid
