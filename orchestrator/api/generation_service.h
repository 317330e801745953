// The public gRPC service dgrid.v1.Generation, adapting the callback API to Pipeline.
//
// Generate returns a ServerWriteReactor that streams the pipeline's events; a client that
// disconnects (OnCancel) cancels the request in the pipeline. Cancel and ListModels answer inline.
// The pipeline must outlive the service and every call it started.
#ifndef DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_
#define DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_

#include "dgrid/v1/generation.grpc.pb.h"
#include "orchestrator/pipeline/pipeline.h"

namespace dgrid::orchestrator {

class GenerationService : public dgrid::v1::Generation::CallbackService {
 public:
  explicit GenerationService(Pipeline* pipeline) : pipeline_(pipeline) {}

  grpc::ServerWriteReactor<dgrid::v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* context, const dgrid::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* context,
                                   const dgrid::v1::CancelRequest* request,
                                   dgrid::v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dgrid::v1::ListModelsRequest* request,
                                       dgrid::v1::ListModelsResponse* response) override;

 private:
  Pipeline* const pipeline_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_
