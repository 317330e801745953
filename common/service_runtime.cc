#include "common/service_runtime.h"

#include <csignal>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status.h"

namespace dgrid {

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const std::string& address, std::vector<grpc::Service*> services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  for (grpc::Service* service : services) builder.RegisterService(service);
  auto out = std::unique_ptr<GrpcServer>(new GrpcServer());
  out->server_ = builder.BuildAndStart();
  if (!out->server_ || port == 0) {
    return Unavailable("cannot listen on ", address, " (address in use or invalid)");
  }
  out->port_ = port;
  out->address_ = address.substr(0, address.rfind(':') + 1) + std::to_string(port);
  out->MarkServing(false);
  return out;
}

GrpcServer::~GrpcServer() {
  if (server_) Shutdown(absl::Now());
}

void GrpcServer::MarkServing(bool serving) {
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(serving);
}

void GrpcServer::Shutdown(absl::Time deadline) {
  if (!server_) return;
  MarkServing(false);
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
  server_.reset();
}

std::string RequestIdOrUnique(const std::string& request_id) {
  if (!request_id.empty()) return request_id;
  static std::atomic<uint64_t> next{1};
  return "anon-" + std::to_string(next.fetch_add(1));
}

absl::Time CallDeadline(const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  // gRPC reports "no deadline" as a far-future time point that absl cannot represent.
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

namespace {
std::atomic<int> g_signal{0};
extern "C" void OnTerminationSignal(int signo) { g_signal.store(signo); }
}  // namespace

int WaitForTerminationSignal() {
  static const bool installed = [] {
    std::signal(SIGTERM, OnTerminationSignal);
    std::signal(SIGINT, OnTerminationSignal);
    return true;
  }();
  (void)installed;
  while (g_signal.load() == 0) absl::SleepFor(absl::Milliseconds(50));
  return g_signal.load();
}

RegistrationClient::RegistrationClient(std::string orchestrator_address, v1::WorkerInfo worker,
                                       std::function<Load()> load)
    : orchestrator_address_(std::move(orchestrator_address)),
      worker_(std::move(worker)),
      load_(std::move(load)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  stub_ = v1::Registry::NewStub(
      grpc::CreateCustomChannel(orchestrator_address_, grpc::InsecureChannelCredentials(), args));
}

RegistrationClient::~RegistrationClient() { Stop(); }

void RegistrationClient::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void RegistrationClient::Stop() {
  if (!thread_.joinable()) return;
  stop_.Notify();
  thread_.join();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::DeregisterRequest request;
  request.set_worker_id(worker_.worker_id());
  v1::DeregisterResponse response;
  stub_->Deregister(&context, request, &response);
}

void RegistrationClient::Loop() {
  absl::Duration interval = absl::Seconds(1);
  bool warned = false;
  while (!stop_.HasBeenNotified()) {
    if (!registered_) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::RegisterRequest request;
      *request.mutable_worker() = worker_;
      v1::RegisterResponse response;
      const grpc::Status status = stub_->Register(&context, request, &response);
      if (status.ok()) {
        registered_ = true;
        warned = false;
        if (response.heartbeat_interval_ms() > 0) {
          interval = absl::Milliseconds(response.heartbeat_interval_ms());
        }
        DG_LOG_INFO("", "registered %s with the orchestrator at %s", worker_.worker_id(),
                    orchestrator_address_);
      } else if (!warned) {
        DG_LOG_WARN("", "cannot register with the orchestrator at %s: %s (retrying)",
                    orchestrator_address_, status.error_message());
        warned = true;
      }
    } else {
      const Load load = load_ ? load_() : Load{};
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::HeartbeatRequest request;
      request.set_worker_id(worker_.worker_id());
      request.set_inflight(load.inflight);
      request.set_queued(load.queued);
      request.set_serving(load.serving);
      v1::HeartbeatResponse response;
      const grpc::Status status = stub_->Heartbeat(&context, request, &response);
      if (status.ok() && !response.known()) {
        DG_LOG_WARN("", "the orchestrator forgot %s; registering again", worker_.worker_id());
        registered_ = false;
        continue;
      }
      if (!status.ok()) registered_ = false;
    }
    stop_.WaitForNotificationWithTimeout(interval);
  }
}

}  // namespace dgrid
