// gRPC server interceptor that counts every answered RPC in dgrid_requests_total{stage, method,
// code} and times it in dgrid_rpc_seconds{stage, method} (registry: metrics::Registry::Global()).
// grpc.* services (health, reflection) are left out: probes would drown the real traffic.
// The same list also answers a request whose bytes do not parse as the method's message with
// INVALID_ARGUMENT naming the method (gRPC's own answer is UNIMPLEMENTED, as for a missing method).
//
// Install with ServerBuilder::experimental().SetInterceptorCreators(...). Threads: interceptors run
// on gRPC's threads; the metrics they touch are thread-safe.
#ifndef DGRID_COMMON_METRICS_GRPC_H_
#define DGRID_COMMON_METRICS_GRPC_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

namespace dgrid::metrics {

// Interceptor creators for a server of stage `stage` ("encoder", "orchestrator", ...).
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestMetricsInterceptors(const std::string& stage);

// "UNAVAILABLE" for grpc::StatusCode::UNAVAILABLE: the label value of `code`.
std::string GrpcCodeName(int code);

}  // namespace dgrid::metrics

#endif  // DGRID_COMMON_METRICS_GRPC_H_
