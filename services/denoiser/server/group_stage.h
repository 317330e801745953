// The leader (rank 0) of a denoiser group as a stage of RunStageMain: the ordinary denoiser
// engine and gRPC service, whose sampler runs on every rank of the group (DenoiserGroup). Load()
// loads the model, then forms the group (so the health check says NOT_SERVING until every rank
// has joined). CurrentLoad() reports serving = false once the group is broken, which the
// registration heartbeat carries to the orchestrator; Shutdown() drains the engine and stops the
// peers.
//
// Threads: as Stage (common/stage_main.h).
#ifndef DGRID_SERVICES_DENOISER_SERVER_GROUP_STAGE_H_
#define DGRID_SERVICES_DENOISER_SERVER_GROUP_STAGE_H_

#include <memory>

#include "common/stage_main.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/group/denoiser_group.h"
#include "services/denoiser/server/denoiser_service.h"

namespace dgrid {

class GroupLeaderStage final : public Stage {
 public:
  GroupLeaderStage(TensorChannel* channel, GroupFlags flags)
      : service_(channel), flags_(std::move(flags)) {}
  ~GroupLeaderStage() override;

  grpc::Service* service() override { return &service_; }
  absl::Status Load(const StageOptions& options) override;
  RegistrationClient::Load CurrentLoad() const override;
  // Registers the group's layout (the orchestrator's placement reads it).
  void DescribeWorker(v1::WorkerInfo& worker) const override;
  void Shutdown(absl::Duration drain) override;

 private:
  DenoiserService service_;
  GroupFlags flags_;
  std::unique_ptr<DenoiserEngine> engine_;
  std::unique_ptr<DenoiserGroup> group_;
};

// A peer rank's whole process: loads the model from the flags left in `args` (--model, --device,
// --dtype, --log_level, --log_file; the stage's other flags are ignored), joins the group and
// serves it until the leader stops it (exit code 0) or the group breaks (1).
int RunGroupPeerMain(const std::vector<std::string>& args, const GroupFlags& flags);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SERVER_GROUP_STAGE_H_
