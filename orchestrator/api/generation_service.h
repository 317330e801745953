// The public gRPC service dgrid.v1.Generation, adapting the callback API to Pipeline.
//
// Generate returns a ServerWriteReactor that streams the pipeline's events; a client that
// disconnects (OnCancel) cancels the request in the pipeline. Cancel and ListModels answer inline.
// The pipeline must outlive the service and every call it started.
//
// Every call must carry an API key when `api_keys` has any (UNAUTHENTICATED otherwise); the key is
// checked before the request reaches the pipeline.
#ifndef DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_
#define DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_

#include "dgrid/v1/generation.grpc.pb.h"
#include "orchestrator/api/api_keys.h"
#include "orchestrator/pipeline/pipeline.h"

namespace dgrid::orchestrator {

class GenerationService : public dgrid::v1::Generation::CallbackService {
 public:
  // `api_keys` (nullptr: none) is not owned and must outlive the service.
  explicit GenerationService(Pipeline* pipeline, const ApiKeys* api_keys = nullptr)
      : pipeline_(pipeline), api_keys_(api_keys) {}

  grpc::ServerWriteReactor<dgrid::v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* context, const dgrid::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* context,
                                   const dgrid::v1::CancelRequest* request,
                                   dgrid::v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dgrid::v1::ListModelsRequest* request,
                                       dgrid::v1::ListModelsResponse* response) override;

 private:
  // UNAUTHENTICATED unless the call carries a configured key (or none is configured).
  grpc::Status Authorize(const grpc::CallbackServerContext& context) const;

  Pipeline* const pipeline_;
  const ApiKeys* const api_keys_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_GENERATION_SERVICE_H_
