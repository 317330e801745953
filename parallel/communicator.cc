// Backend-independent parts of parallel/communicator.h: the LeaderWorkerSet environment and the
// NCCL factory of builds without CUDA.
#include "parallel/communicator.h"

#include <cstdlib>

#include <ATen/core/Tensor.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dgrid {
namespace {

// The value of `name`, or nullptr when unset or empty.
const char* Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? value : nullptr;
}

absl::Status ParseEnvInt(const char* name, const char* value, int min, int* out) {
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < min) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "='", value, "' is not an integer >= ", min));
  }
  *out = parsed;
  return absl::OkStatus();
}

}  // namespace

absl::Status Communicator::AllToAllMany(const std::vector<at::Tensor>& ins,
                                        std::vector<at::Tensor>& outs) {
  if (ins.size() != outs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAllMany: ", ins.size(), " inputs but ", outs.size(), " outputs"));
  }
  for (size_t i = 0; i < ins.size(); ++i) {
    if (absl::Status s = AllToAll(ins[i], outs[i]); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ApplyLeaderWorkerSetEnvironment(CommunicatorOptions& options) {
  // LeaderWorkerSet (Kubernetes) gives the leader pod's host name without a port; the port of the
  // rendezvous is dgrid's own.
  const char* leader = Env("LWS_LEADER_ADDRESS");
  const char* size = Env("LWS_GROUP_SIZE");
  const char* index = Env("LWS_WORKER_INDEX");
  const char* port_env = Env("DGRID_RENDEZVOUS_PORT");
  CommunicatorOptions updated = options;
  if (leader != nullptr) {
    int port = 29500;
    if (port_env != nullptr) {
      absl::Status s = ParseEnvInt("DGRID_RENDEZVOUS_PORT", port_env, 1, &port);
      if (!s.ok()) return s;
      if (port > 65535) return absl::InvalidArgumentError("DGRID_RENDEZVOUS_PORT above 65535");
    }
    absl::string_view host = leader;
    bool v6 = host.find(':') != absl::string_view::npos;
    updated.leader_address =
        v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
  }
  if (size != nullptr) {
    if (absl::Status s = ParseEnvInt("LWS_GROUP_SIZE", size, 1, &updated.size); !s.ok()) return s;
  }
  if (index != nullptr) {
    if (absl::Status s = ParseEnvInt("LWS_WORKER_INDEX", index, 0, &updated.rank); !s.ok()) {
      return s;
    }
  }
  if ((size != nullptr || index != nullptr) && updated.rank >= updated.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("LWS_WORKER_INDEX ", updated.rank, " outside a group of ", updated.size));
  }
  options = updated;
  return absl::OkStatus();
}

#ifndef DGRID_WITH_NCCL
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const CommunicatorOptions& /*options*/) {
  return absl::UnimplementedError("NCCL communicator: this build has no CUDA (-DDGRID_WITH_CUDA)");
}
#endif

}  // namespace dgrid
