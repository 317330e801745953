// dgrid-decoder: the VAE decoder stage as a gRPC server (flags: dgrid-decoder --help).
#include "common/stage_main.h"
#include "services/decoder/server/decoder_service.h"
#include "transport/stage_channel.h"

int main(int argc, char** argv) {
  dgrid::StageChannel channel;  // inline or UCX, from --transport (set up by RunStageMain)
  dgrid::EngineStage<dgrid::decoder::DecoderEngine, dgrid::decoder::DecoderService> stage(&channel);
  return dgrid::RunStageMain(argc, argv, dgrid::v1::STAGE_KIND_DECODER, 50063, stage,
                             channel.Setup());
}
