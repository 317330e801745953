#include "common/metrics_grpc.h"

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/metrics.h"

namespace dgrid::metrics {
namespace {

class RequestMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  RequestMetricsInterceptor(std::string stage, std::string method)
      : stage_(std::move(stage)), method_(std::move(method)), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      Registry& registry = Registry::Global();
      registry
          .GetCounter(
              "dgrid_requests_total", "RPCs answered, by stage, method and gRPC code",
              {{"stage", stage_}, {"method", method_}, {"code", GrpcCodeName(status.error_code())}})
          ->Increment();
      registry
          .GetHistogram("dgrid_rpc_seconds",
                        "Time from an RPC's arrival to its status, by stage and method (seconds)",
                        {{"stage", stage_}, {"method", method_}})
          ->ObserveDuration(absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  const std::string stage_;
  const std::string method_;
  const absl::Time start_;
};

class RequestMetricsFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RequestMetricsFactory(std::string stage) : stage_(std::move(stage)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const absl::string_view full = info->method() != nullptr ? info->method() : "";
    if (absl::StartsWith(full, "/grpc.")) return nullptr;  // Health checks and reflection.
    // "/dgrid.v1.Encoder/Encode" -> "Encode".
    const size_t slash = full.rfind('/');
    const absl::string_view method =
        slash == absl::string_view::npos ? full : full.substr(slash + 1);
    return new RequestMetricsInterceptor(stage_, std::string(method));
  }

 private:
  const std::string stage_;
};

// gRPC's callback handlers answer a request whose bytes do not parse as the method's message with
// UNIMPLEMENTED and no message, as if the method did not exist. The received message is null at
// POST_RECV_MESSAGE exactly then; this turns that status into INVALID_ARGUMENT naming the method.
class MalformedRequestInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit MalformedRequestInterceptor(std::string method) : method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsable_ = true;
    }
    if (unparsable_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      methods->ModifySendStatus(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("request: the bytes sent to ", method_,
                                    " are not a valid protobuf message of its request type")));
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  bool unparsable_ = false;
};

class MalformedRequestFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MalformedRequestInterceptor(info->method() != nullptr ? info->method() : "");
  }
};

}  // namespace

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestMetricsInterceptors(const std::string& stage) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  // First, so that the metrics count the status the client gets.
  out.push_back(std::make_unique<MalformedRequestFactory>());
  out.push_back(std::make_unique<RequestMetricsFactory>(stage));
  return out;
}

std::string GrpcCodeName(int code) {
  // gRPC and absl share the numbering; absl spells the names.
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace dgrid::metrics
