// dgrid-denoiser: one denoiser process (a group of one rank) as a gRPC server
// (flags: dgrid-denoiser --help).
#include "common/stage_main.h"
#include "services/denoiser/server/denoiser_service.h"
#include "transport/inline/inline_channel.h"

int main(int argc, char** argv) {
  dgrid::InlineChannel channel;
  dgrid::EngineStage<dgrid::DenoiserEngine, dgrid::DenoiserService> stage(&channel);
  return dgrid::RunStageMain(argc, argv, dgrid::v1::STAGE_KIND_DENOISER, 50062, stage);
}
