// dgrid-encoder: the encoder stage as a gRPC server (flags: dgrid-encoder --help).
#include "common/stage_main.h"
#include "services/encoder/server/encoder_service.h"
#include "transport/stage_channel.h"

int main(int argc, char** argv) {
  dgrid::StageChannel channel;  // inline or UCX, from --transport (set up by RunStageMain)
  dgrid::EngineStage<dgrid::encoder::EncoderEngine, dgrid::encoder::EncoderService> stage(&channel);
  return dgrid::RunStageMain(argc, argv, dgrid::v1::STAGE_KIND_ENCODER, 50061, stage,
                             channel.Setup());
}
