#include "services/denoiser/models/sequence_parallel.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

absl::Status CheckCommunicator(const Communicator* comm, int degree, int rank,
                               absl::string_view axis) {
  if (degree == 1) return absl::OkStatus();
  if (comm == nullptr) {
    return InvalidArgument("SequenceParallelContext: ", axis, " degree ", degree,
                           " needs a communicator");
  }
  if (comm->size() != degree || comm->rank() != rank) {
    return InvalidArgument("SequenceParallelContext: ", axis, " communicator is rank ",
                           comm->rank(), " of ", comm->size(), ", layout wants rank ", rank, " of ",
                           degree);
  }
  return absl::OkStatus();
}

enum class Axis { kUlysses, kRing, kCfg };

std::vector<int> Members(const ParallelLayout& layout, Axis axis) {
  switch (axis) {
    case Axis::kUlysses:
      return layout.UlyssesGroup();
    case Axis::kRing:
      return layout.RingGroup();
    case Axis::kCfg:
      return layout.CfgGroup();
  }
  return {};
}

// Every rank calls Split once per subgroup of `axis`, in the order of the subgroups' first
// members, so that the calls match on all ranks; the one containing this rank is kept.
absl::StatusOr<std::unique_ptr<Communicator>> SplitAxis(Communicator& group,
                                                        const ParallelLayout& layout, Axis axis) {
  std::unique_ptr<Communicator> mine;
  for (int g = 0; g < layout.size(); ++g) {
    ASSIGN_OR_RETURN(ParallelLayout other,
                     ParallelLayout::Create(layout.cfg(), layout.ring(), layout.ulysses(), g));
    const std::vector<int> members = Members(other, axis);
    if (members.front() != g) continue;  // Not the first member: this subgroup is done already.
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, group.Split(members));
    if (comm != nullptr) mine = std::move(comm);
  }
  return mine;
}

}  // namespace

absl::Status SequenceParallelContext::Validate(int64_t num_heads) const {
  RETURN_IF_ERROR(layout.CheckModel(static_cast<int>(num_heads)));
  const ParallelCoords coords = layout.coords();
  RETURN_IF_ERROR(CheckCommunicator(ulysses, layout.ulysses(), coords.ulysses, "ulysses"));
  RETURN_IF_ERROR(CheckCommunicator(ring, layout.ring(), coords.ring, "ring"));
  const int64_t local_heads = num_heads / layout.ulysses();
  if (ulysses_chunks < 0 || (ulysses_chunks > 0 && local_heads % ulysses_chunks != 0)) {
    return InvalidArgument("SequenceParallelContext: ulysses_chunks ", ulysses_chunks,
                           " does not divide the ", local_heads, " heads per Ulysses rank");
  }
  return CheckCommunicator(cfg, layout.cfg(), coords.cfg, "cfg");
}

SequenceShardPlan::SequenceShardPlan(const ParallelLayout& layout, int64_t n)
    : length(n),
      padded(layout.PaddedLength(n)),
      shard_length(layout.PaddedLength(n) / layout.sequence_parallel_degree()),
      shard(layout.sequence_shard()) {}

int64_t SequenceShardPlan::ValidIn(int64_t begin, int64_t count) const {
  return std::clamp<int64_t>(length - begin, 0, count);
}

absl::StatusOr<std::unique_ptr<SequenceParallelGroup>> SplitSequenceParallelGroup(
    Communicator& group, const ParallelLayout& layout) {
  if (group.size() != layout.size() || group.rank() != layout.rank()) {
    return InvalidArgument("SplitSequenceParallelGroup: communicator is rank ", group.rank(),
                           " of ", group.size(), " but the layout ", layout.ToString(), " is rank ",
                           layout.rank(), " of ", layout.size());
  }
  auto out = std::make_unique<SequenceParallelGroup>(layout);
  if (layout.ulysses() > 1) {
    ASSIGN_OR_RETURN(out->ulysses, SplitAxis(group, layout, Axis::kUlysses));
  }
  if (layout.ring() > 1) {
    ASSIGN_OR_RETURN(out->ring, SplitAxis(group, layout, Axis::kRing));
  }
  if (layout.cfg() > 1) {
    ASSIGN_OR_RETURN(out->cfg, SplitAxis(group, layout, Axis::kCfg));
  }
  out->context.ulysses = out->ulysses.get();
  out->context.ring = out->ring.get();
  out->context.cfg = out->cfg.get();
  out->context.group = &group;
  return out;
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> ExchangeCfgBranches(
    Communicator& cfg, const at::Tensor& prediction) {
  at::Tensor send, both;
  RETURN_IF_ERROR(TorchCall("CFG-parallel gather", [&] {
    send = prediction.unsqueeze(0).contiguous();
    std::vector<int64_t> shape = send.sizes().vec();
    shape[0] = 2;
    both = at::empty(shape, send.options());
  }));
  RETURN_IF_ERROR(cfg.AllGather(send, both));
  return std::make_pair(both[0], both[1]);
}

}  // namespace dgrid
