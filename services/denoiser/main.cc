// dgrid-denoiser: one denoiser process (a group of one rank) as a gRPC server
// (flags: dgrid-denoiser --help).
#include "common/stage_main.h"
#include "services/denoiser/server/denoiser_service.h"
#include "transport/stage_channel.h"

int main(int argc, char** argv) {
  dgrid::StageChannel channel;  // inline or UCX, from --transport (set up by RunStageMain)
  dgrid::EngineStage<dgrid::DenoiserEngine, dgrid::DenoiserService> stage(&channel);
  return dgrid::RunStageMain(argc, argv, dgrid::v1::STAGE_KIND_DENOISER, 50062, stage,
                             channel.Setup());
}
