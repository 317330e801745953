#include "services/denoiser/group/denoiser_group.h"

#include <map>

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/group/group_protocol.h"

namespace dgrid {
namespace {

// Group flag names (with '_'; '-' is accepted too).
enum class Flag { kUlysses, kRing, kCfg, kRank, kGroupSize, kLeader, kComm, kTimeout };
const std::map<std::string, Flag>& Flags() {
  static const auto* flags =
      new std::map<std::string, Flag>{{"ulysses", Flag::kUlysses},
                                      {"ring", Flag::kRing},
                                      {"cfg", Flag::kCfg},
                                      {"rank", Flag::kRank},
                                      {"group_size", Flag::kGroupSize},
                                      {"leader_address", Flag::kLeader},
                                      {"comm", Flag::kComm},
                                      {"group_timeout_seconds", Flag::kTimeout}};
  return *flags;
}

absl::Status ParseInt(const std::string& name, const std::string& text, int min, int* out) {
  if (!absl::SimpleAtoi(text, out) || *out < min) {
    return InvalidArgument("--", name, "='", text, "' must be an integer >= ", min);
  }
  return absl::OkStatus();
}

absl::Status SetFlag(Flag flag, const std::string& name, const std::string& value,
                     GroupFlags* flags) {
  switch (flag) {
    case Flag::kUlysses:
      return ParseInt(name, value, 1, &flags->ulysses);
    case Flag::kRing:
      return ParseInt(name, value, 1, &flags->ring);
    case Flag::kCfg:
      return ParseInt(name, value, 1, &flags->cfg);
    case Flag::kRank:
      return ParseInt(name, value, 0, &flags->rank);
    case Flag::kGroupSize:
      return ParseInt(name, value, 1, &flags->group_size);
    case Flag::kLeader:
      flags->leader_address = value;
      return absl::OkStatus();
    case Flag::kComm:
      flags->comm = value;
      return absl::OkStatus();
    case Flag::kTimeout:
      if (!absl::SimpleAtod(value, &flags->timeout_seconds) || !(flags->timeout_seconds > 0)) {
        return InvalidArgument("--", name, "='", value, "' must be a positive number of seconds");
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExtractGroupFlags(std::vector<std::string>& args, GroupFlags* flags) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      rest.insert(rest.end(), args.begin() + i, args.end());
      break;
    }
    if (!absl::StartsWith(arg, "--")) {
      rest.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = Flags().find(absl::StrReplaceAll(name, {{"-", "_"}}));
    if (it == Flags().end()) {
      rest.push_back(arg);
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return InvalidArgument("--", name, " needs a value");
      value = args[++i];
    }
    RETURN_IF_ERROR(SetFlag(it->second, name, value, flags));
  }
  args = std::move(rest);

  CommunicatorOptions lws;
  lws.leader_address = flags->leader_address;
  lws.rank = flags->rank;
  lws.size = flags->group_size;
  RETURN_IF_ERROR(ApplyLeaderWorkerSetEnvironment(lws));
  flags->leader_address = lws.leader_address;
  flags->rank = lws.rank;
  flags->group_size = lws.size;
  if (!flags->grouped()) return absl::OkStatus();

  const int product = flags->cfg * flags->ring * flags->ulysses;
  if (flags->group_size == 1) flags->group_size = product;  // --group-size may be left out.
  if (product != flags->group_size) {
    return InvalidArgument("--group-size ", flags->group_size,
                           " must equal cfg * ring * ulysses = ", flags->cfg, " * ", flags->ring,
                           " * ", flags->ulysses, " = ", product);
  }
  RETURN_IF_ERROR(
      ParallelLayout::Create(flags->cfg, flags->ring, flags->ulysses, flags->rank).status());
  if (flags->leader_address.empty()) {
    return InvalidArgument(
        "a denoiser group needs --leader-address host:port (or "
        "LWS_LEADER_ADDRESS)");
  }
  if (flags->comm != "gloo" && flags->comm != "nccl") {
    return InvalidArgument("--comm='", flags->comm, "' must be gloo or nccl");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DenoiserGroup>> DenoiserGroup::Join(const GroupFlags& flags,
                                                                   const FamilyDenoiser& denoiser) {
  ASSIGN_OR_RETURN(ParallelLayout layout,
                   ParallelLayout::Create(flags.cfg, flags.ring, flags.ulysses, flags.rank));
  const int64_t heads = denoiser.attention_heads();
  RETURN_IF_ERROR(layout.CheckModel(static_cast<int>(heads)));
  ASSIGN_OR_RETURN(at::Device device, TorchCall("device", [&] { return denoiser.device(); }));
  const bool nccl = flags.comm == "nccl";
  if (nccl && !device.is_cuda()) return InvalidArgument("--comm=nccl needs --device cuda[:N]");
  CommunicatorOptions options;
  options.leader_address = flags.leader_address;
  options.rank = flags.rank;
  options.size = flags.group_size;
  options.timeout = absl::Seconds(flags.timeout_seconds);
  options.device_index = device.is_cuda() && device.has_index() ? device.index() : 0;
  DG_LOG_INFO("", "joining denoiser group %s as rank %d of %d through %s (%s)", layout.ToString(),
              flags.rank, flags.group_size, flags.leader_address, flags.comm);
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      nccl ? CreateNcclCommunicator(options) : CreateGlooCommunicator(options);
  RETURN_IF_ERROR(comm.status());
  return JoinOver(*std::move(comm), layout, denoiser, nccl ? device : at::Device(at::kCPU),
                  options.timeout / 4);
}

absl::StatusOr<std::unique_ptr<DenoiserGroup>> DenoiserGroup::JoinOver(
    std::unique_ptr<Communicator> comm, const ParallelLayout& layout,
    const FamilyDenoiser& denoiser, at::Device comm_device, absl::Duration keep_alive_interval) {
  std::unique_ptr<DenoiserGroup> group(new DenoiserGroup(layout, denoiser, comm_device));
  group->keep_alive_interval_ = keep_alive_interval;
  ASSIGN_OR_RETURN(std::unique_ptr<SequenceParallelGroup> sp,
                   SplitSequenceParallelGroup(*comm, layout));
  RETURN_IF_ERROR(sp->context.Validate(denoiser.attention_heads()));
  absl::MutexLock lock(&group->mu_);
  group->comm_ = std::move(comm);
  group->sp_ = std::move(sp);
  DG_LOG_INFO("", "denoiser group %s formed", layout.ToString());
  return group;
}

DenoiserGroup::~DenoiserGroup() {
  if (layout_.rank() == 0) Stop();
}

bool DenoiserGroup::healthy() const {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok() || comm_ == nullptr || !comm_->healthy()) return false;
  for (const Communicator* c : {sp_->context.ulysses, sp_->context.ring, sp_->context.cfg}) {
    if (c != nullptr && !c->healthy()) return false;
  }
  return true;
}

absl::Status DenoiserGroup::Failed(absl::Status status) {
  if (failure_.ok() && !status.ok()) {
    failure_ = status;
    DG_LOG_ERROR("", "denoiser group %s broken: %s", layout_.ToString(), status.ToString());
  }
  return status;
}

absl::Status DenoiserGroup::GroupFailure(const absl::Status& comm_failure,
                                         const absl::Status& loop) {
  if (!comm_failure.ok()) return Failed(comm_failure);
  // A collective inside the model failed (a deadline of the request itself stops the loop through
  // is_cancelled and comes back as CANCELLED).
  const absl::StatusCode code = loop.code();
  if (code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded) {
    return Failed(loop);
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> DenoiserGroup::RunRequest(const DenoiseInput& input,
                                                     const SamplerHooks& hooks) {
  // A request that preempts another between its steps arrives here on the thread that already
  // holds mu_ (through the leader's step hook below): it runs inside the running request.
  if (holder_.load() == std::this_thread::get_id()) return RunRequestLocked(input, hooks);
  absl::MutexLock lock(&mu_);
  holder_.store(std::this_thread::get_id());
  absl::StatusOr<at::Tensor> latents = RunRequestLocked(input, hooks);
  holder_.store(std::thread::id());
  return latents;
}

absl::StatusOr<at::Tensor> DenoiserGroup::RunRequestLocked(const DenoiseInput& input,
                                                           const SamplerHooks& hooks) {
  if (!failure_.ok() || stopped_) {
    return absl::UnavailableError(
        absl::StrCat("denoiser group ", layout_.ToString(), " is not serving: ",
                     failure_.ok() ? std::string("stopped") : std::string(failure_.message())));
  }
  GroupMessage message;
  message.kind = GroupMessageKind::kDenoise;
  message.input = input;
  preempt_announced_ = false;  // a preempting request's message is the one now sent
  if (absl::Status s = SendGroupMessage(*comm_, message, comm_device_); !s.ok()) {
    return Failed(s);
  }
  absl::Status comm_failure;
  SamplerHooks group_hooks = hooks;
  // Preemption goes through the step decision, so that every rank runs the preempting request.
  group_hooks.take_preempting = nullptr;
  group_hooks.is_cancelled = [&] {
    while (true) {
      const bool stop = hooks.is_cancelled && hooks.is_cancelled();
      std::function<void()> first =
          !stop && hooks.take_preempting ? hooks.take_preempting() : nullptr;
      const StepDecision decision = stop    ? StepDecision::kStop
                                    : first ? StepDecision::kPreempt
                                            : StepDecision::kContinue;
      absl::StatusOr<StepDecision> agreed = AgreeOnStep(*comm_, decision);
      if (!agreed.ok()) {
        comm_failure = Failed(agreed.status());
        if (first) first();  // taken off the queue: it ends (UNAVAILABLE: the group is broken)
        return true;
      }
      if (decision != StepDecision::kPreempt) return stop;
      preempt_announced_ = true;
      first();
      if (preempt_announced_) {
        // It ended before reaching the group (e.g. a bad size): the peers wait for a message.
        preempt_announced_ = false;
        GroupMessage idle;
        if (absl::Status s = SendGroupMessage(*comm_, idle, comm_device_); !s.ok()) {
          comm_failure = Failed(s);
          return true;
        }
      }
      if (!failure_.ok()) {  // the preempting request broke the group
        comm_failure = failure_;
        return true;
      }
    }
  };
  absl::StatusOr<at::Tensor> latents = denoiser_.Run(input, group_hooks, &sp_->context);
  RETURN_IF_ERROR(GroupFailure(comm_failure, latents.status()));
  return latents;
}

void DenoiserGroup::StartKeepAlive() {
  keep_alive_ = std::thread([this] { KeepAliveLoop(); });
}

void DenoiserGroup::KeepAliveLoop() {
  while (!stop_keep_alive_.WaitForNotificationWithTimeout(keep_alive_interval_)) {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok() || stopped_) return;
    GroupMessage idle;
    if (absl::Status s = SendGroupMessage(*comm_, idle, comm_device_); !s.ok()) {
      // Failed() records the broken group; its returned status is for callers with a request.
      Failed(s).IgnoreError();
      return;
    }
  }
}

void DenoiserGroup::Stop() {
  if (!stop_keep_alive_.HasBeenNotified()) stop_keep_alive_.Notify();
  if (keep_alive_.joinable()) keep_alive_.join();
  absl::MutexLock lock(&mu_);
  if (stopped_) return;
  stopped_ = true;
  if (failure_.ok() && comm_ != nullptr) {
    GroupMessage stop;
    stop.kind = GroupMessageKind::kStop;
    absl::Status s = SendGroupMessage(*comm_, stop, comm_device_);
    if (!s.ok()) DG_LOG_WARN("", "denoiser group: stop message not delivered: %s", s.ToString());
  }
}

absl::Status DenoiserGroup::ServePeer() {
  absl::MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<GroupMessage> message = ReceiveGroupMessage(*comm_, comm_device_);
    if (!message.ok()) return Failed(message.status());
    if (message->kind == GroupMessageKind::kStop) {
      DG_LOG_INFO("", "denoiser group: the leader stopped the group");
      return absl::OkStatus();
    }
    if (message->kind == GroupMessageKind::kIdle) continue;
    if (message->kind == GroupMessageKind::kBatchStep) {
      RETURN_IF_ERROR(ServeBatchStepLocked(message->batch_step));
      continue;
    }
    RETURN_IF_ERROR(ServeRequestLocked(message->input));
  }
}

absl::Status DenoiserGroup::ToModelDeviceLocked(DenoiseInput& input) {
  // A rank that cannot take part breaks the group (the others would wait on it).
  return Failed(TorchCall("group request to the model's device", [&] {
    const at::Device model_device = denoiser_.device();
    for (NamedTensors* side : {&input.positive, &input.negative}) {
      for (auto& [name, t] : *side) {
        if (t.defined()) t = t.to(model_device);
      }
    }
  }));
}

absl::Status DenoiserGroup::ServeRequestLocked(DenoiseInput& input) {
  RETURN_IF_ERROR(ToModelDeviceLocked(input));
  absl::Status comm_failure;
  SamplerHooks hooks;
  hooks.is_cancelled = [&] {
    while (true) {
      absl::StatusOr<StepDecision> agreed = AgreeOnStep(*comm_, StepDecision::kContinue);
      if (!agreed.ok()) {
        comm_failure = agreed.status();
        return true;
      }
      if (*agreed != StepDecision::kPreempt) return *agreed == StepDecision::kStop;
      // The leader runs a request due earlier first; so do we, then the step decision again.
      absl::StatusOr<GroupMessage> first = ReceiveGroupMessage(*comm_, comm_device_);
      if (!first.ok()) {
        comm_failure = first.status();
        return true;
      }
      if (first->kind == GroupMessageKind::kStop) {
        comm_failure = absl::InternalError("group leader sent stop in the middle of a request");
        return true;
      }
      if (first->kind == GroupMessageKind::kDenoise) {
        if (absl::Status s = ServeRequestLocked(first->input); !s.ok()) {
          comm_failure = s;
          return true;
        }
      }
    }
  };
  absl::StatusOr<at::Tensor> latents = denoiser_.Run(input, hooks, &sp_->context);
  RETURN_IF_ERROR(GroupFailure(comm_failure, latents.status()));
  if (!latents.ok() && latents.status().code() != absl::StatusCode::kCancelled) {
    // A request error (e.g. a bad size) happens on every rank alike; the group goes on.
    DG_LOG_WARN(input.request_id, "denoiser group peer: %s", latents.status().ToString());
  }
  return absl::OkStatus();
}

}  // namespace dgrid
