// dgrid-denoiser: one denoiser process as a gRPC server (flags: dgrid-denoiser --help), or one rank
// of a denoiser group (--ulysses U --ring R --cfg C --rank K --group-size N --leader-address H:P
// --comm gloo|nccl, or LeaderWorkerSet's LWS_* environment): rank 0 serves the Denoise RPC for the
// whole group, the other ranks serve rank 0 (services/denoiser/server/group_stage.h).
#include <cstdio>
#include <string>
#include <vector>

#include "common/stage_main.h"
#include "services/denoiser/group/denoiser_group.h"
#include "services/denoiser/server/denoiser_service.h"
#include "services/denoiser/server/group_stage.h"
#include "services/denoiser/server/vram_budget.h"
#include "transport/stage_channel.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  dgrid::GroupFlags group;
  if (absl::Status s = dgrid::ExtractGroupFlags(args, &group); !s.ok()) {
    std::fprintf(stderr, "dgrid-denoiser: %s\n", s.ToString().c_str());
    return 1;
  }
  if (group.grouped() && group.rank != 0) return dgrid::RunGroupPeerMain(args, group);
  // The stage's own flags, without the group's.
  std::vector<char*> stage_argv = {argv[0]};
  for (std::string& a : args) stage_argv.push_back(a.data());
  const int stage_argc = static_cast<int>(stage_argv.size());
  stage_argv.push_back(nullptr);

  dgrid::StageChannel channel;  // inline or UCX, from --transport (set up by RunStageMain)
  // --vram-budget: checked against the planner's memory model before the model loads.
  const dgrid::StageCheck budget = [&group](const dgrid::StageOptions& options) {
    return dgrid::CheckDenoiserVramBudget(options, group);
  };
  if (group.grouped()) {
    dgrid::GroupLeaderStage stage(&channel, group);
    return dgrid::RunStageMain(stage_argc, stage_argv.data(), dgrid::v1::STAGE_KIND_DENOISER, 50062,
                               stage, channel.Setup(), budget);
  }
  dgrid::EngineStage<dgrid::DenoiserEngine, dgrid::DenoiserService> stage(&channel);
  return dgrid::RunStageMain(stage_argc, stage_argv.data(), dgrid::v1::STAGE_KIND_DENOISER, 50062,
                             stage, channel.Setup(), budget);
}
