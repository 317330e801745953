#include "common/service_runtime.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <csignal>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/auth_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/metrics_grpc.h"
#include "common/status.h"

namespace dgrid {

std::vector<Setting> TlsSettings() {
  return {
      {"tls_cert", Setting::kString, "", "PEM certificate chain (empty: plain text)"},
      {"tls_key", Setting::kString, "", "PEM private key of --tls-cert"},
      {"tls_ca", Setting::kString, "", "PEM CA of peers: verifies servers and client certificates"},
      {"tls_client_auth", Setting::kString, "none",
       "client certificates: none, optional (verified when sent) or require (mutual TLS)"},
  };
}

absl::StatusOr<TlsOptions> ReadTlsOptions(const Config& config) {
  TlsOptions tls;
  ASSIGN_OR_RETURN(tls.cert_file, config.GetString("tls_cert"));
  ASSIGN_OR_RETURN(tls.key_file, config.GetString("tls_key"));
  ASSIGN_OR_RETURN(tls.ca_file, config.GetString("tls_ca"));
  ASSIGN_OR_RETURN(std::string auth, config.GetString("tls_client_auth"));
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return InvalidArgument("tls_cert and tls_key go together");
  }
  if (auth == "none") {
    tls.client_auth = TlsOptions::ClientAuth::kNone;
  } else if (auth == "optional") {
    tls.client_auth = TlsOptions::ClientAuth::kOptional;
  } else if (auth == "require") {
    tls.client_auth = TlsOptions::ClientAuth::kRequire;
  } else {
    return InvalidArgument("tls_client_auth: must be none, optional or require, not ", auth);
  }
  if (tls.client_auth != TlsOptions::ClientAuth::kNone &&
      (tls.ca_file.empty() || tls.cert_file.empty())) {
    return InvalidArgument("tls_client_auth: needs tls_cert, tls_key and tls_ca");
  }
  return tls;
}

namespace {
absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return NotFound(what, ": cannot read ", path, ": ", text.status().message());
  return *std::move(text);
}
}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls) {
  if (!tls.server_tls()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(tls.cert_file, "tls_cert"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem(tls.key_file, "tls_key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.ca_file.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(tls.ca_file, "tls_ca"));
  }
  switch (tls.client_auth) {
    case TlsOptions::ClientAuth::kNone:
      ssl.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
      break;
    case TlsOptions::ClientAuth::kOptional:
      ssl.client_certificate_request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
      break;
    case TlsOptions::ClientAuth::kRequire:
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      break;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls) {
  if (!tls.channel_tls()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(tls.ca_file, "tls_ca"));
  // The same certificate identifies this process as a client (mutual TLS with the stages).
  if (tls.server_tls()) {
    ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(tls.cert_file, "tls_cert"));
    ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(tls.key_file, "tls_key"));
  }
  return grpc::SslCredentials(ssl);
}

bool AuthenticatedPeer(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  // With SSL, the peer identity (the certificate's SANs / CN) is set only for a verified
  // certificate.
  return auth != nullptr && auth->IsPeerAuthenticated();
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealthServer(const std::string& host, int port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(),
                           &bound);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    return Unavailable("cannot serve the health port on ", host, ":", port);
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  return server;
}

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const std::string& address,
                                                              std::vector<grpc::Service*> services,
                                                              const GrpcServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   MakeServerCredentials(options.tls));
  if (!options.tls.server_tls() && !absl::StartsWith(address, "127.") &&
      !absl::StartsWith(address, "localhost:") && !absl::StartsWith(address, "[::1]")) {
    DG_LOG_WARN("", "serving plain text on %s: use --tls-cert/--tls-key off loopback", address);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, credentials, &port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  builder.experimental().SetInterceptorCreators(metrics::RequestMetricsInterceptors(options.stage));
  for (grpc::Service* service : services) builder.RegisterService(service);
  auto out = std::unique_ptr<GrpcServer>(new GrpcServer());
  out->server_ = builder.BuildAndStart();
  if (!out->server_ || port == 0) {
    return Unavailable("cannot listen on ", address, " (address in use or invalid)");
  }
  out->port_ = port;
  out->address_ = address.substr(0, address.rfind(':') + 1) + std::to_string(port);
  if (options.health_port >= 0) {
    ASSIGN_OR_RETURN(out->health_server_,
                     StartHealthServer(address.substr(0, address.rfind(':')), options.health_port));
  }
  out->MarkServing(false);
  return out;
}

GrpcServer::~GrpcServer() {
  if (server_) Shutdown(absl::Now());
}

void GrpcServer::MarkServing(bool serving) {
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(serving);
  if (health_server_ != nullptr) health_server_->GetHealthCheckService()->SetServingStatus(serving);
}

void GrpcServer::Shutdown(absl::Time deadline) {
  if (!server_) return;
  MarkServing(false);
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
  server_.reset();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(deadline));
    health_server_.reset();
  }
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
                                       std::function<Load()> load,
                                       std::shared_ptr<grpc::ChannelCredentials> credentials,
                                       const std::string& tls_target_name)
    : orchestrator_address_(std::move(orchestrator_address)),
      worker_(std::move(worker)),
      load_(std::move(load)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  if (!tls_target_name.empty()) args.SetSslTargetNameOverride(tls_target_name);
  if (credentials == nullptr) credentials = grpc::InsecureChannelCredentials();
  stub_ =
      v1::Registry::NewStub(grpc::CreateCustomChannel(orchestrator_address_, credentials, args));
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

namespace {

bool IsIpLiteral(const std::string& host) {
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 || inet_pton(AF_INET6, host.c_str(), &v6) == 1;
}

// The addresses `host` resolves to as "ip:port" ("[ip]:port" for IPv6): the IPv4 ones when there
// are any, else the IPv6 ones; sorted, without repeats. Empty when it does not resolve.
std::vector<std::string> ResolveHost(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return {};
  std::vector<std::string> v4, v6;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {0};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof(text));
      v4.push_back(absl::StrCat(text, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, text,
                sizeof(text));
      v6.push_back(absl::StrCat("[", text, "]:", port));
    }
  }
  freeaddrinfo(found);
  std::vector<std::string>& chosen = v4.empty() ? v6 : v4;
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  return chosen;
}

// ResolveOrchestrators, also telling whether every name resolved (`*all_resolved`).
absl::StatusOr<std::vector<OrchestratorTarget>> ResolveOrchestratorList(absl::string_view list,
                                                                        absl::string_view flag,
                                                                        bool* all_resolved) {
  *all_resolved = true;
  std::vector<OrchestratorTarget> targets;
  for (absl::string_view entry : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    std::string host, port;
    if (absl::StartsWith(entry, "[")) {
      const size_t close = entry.find("]:");
      if (close != absl::string_view::npos) {
        host = std::string(entry.substr(1, close - 1));
        port = std::string(entry.substr(close + 2));
      }
    } else {
      const size_t colon = entry.rfind(':');
      if (colon != absl::string_view::npos && entry.find(':') == colon) {
        host = std::string(entry.substr(0, colon));
        port = std::string(entry.substr(colon + 1));
      }
    }
    int port_number = 0;
    if (host.empty() || !absl::SimpleAtoi(port, &port_number) || port_number < 1 ||
        port_number > 65535) {
      return InvalidArgument(flag, ": '", entry, "' is not host:port");
    }
    std::vector<OrchestratorTarget> found;
    if (IsIpLiteral(host)) {
      found.push_back({std::string(entry), ""});
    } else {
      for (std::string& address : ResolveHost(host, port)) {
        found.push_back({std::move(address), host});
      }
      if (found.empty()) {  // gRPC resolves it later
        found.push_back({std::string(entry), ""});
        *all_resolved = false;
      }
    }
    for (OrchestratorTarget& t : found) {
      if (std::find(targets.begin(), targets.end(), t) == targets.end()) {
        targets.push_back(std::move(t));
      }
    }
  }
  if (targets.empty()) return InvalidArgument(flag, ": no orchestrator address given");
  return targets;
}

}  // namespace

absl::StatusOr<std::vector<OrchestratorTarget>> ResolveOrchestrators(absl::string_view list,
                                                                     absl::string_view flag) {
  bool all_resolved = true;
  return ResolveOrchestratorList(list, flag, &all_resolved);
}

OrchestratorRegistrations::OrchestratorRegistrations(
    std::string list, v1::WorkerInfo worker, std::function<RegistrationClient::Load()> load,
    std::shared_ptr<grpc::ChannelCredentials> credentials, absl::Duration refresh)
    : list_(std::move(list)),
      worker_(std::move(worker)),
      load_(std::move(load)),
      credentials_(std::move(credentials)),
      refresh_(refresh) {}

OrchestratorRegistrations::~OrchestratorRegistrations() { Stop(); }

absl::Status OrchestratorRegistrations::Start() {
  ASSIGN_OR_RETURN(std::vector<OrchestratorTarget> targets,
                   ResolveOrchestrators(list_, "--orchestrator"));
  Update(targets);
  thread_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(refresh_)) {
      // A name that fails to resolve now (a DNS hiccup) keeps the orchestrators it had.
      bool all_resolved = true;
      absl::StatusOr<std::vector<OrchestratorTarget>> again =
          ResolveOrchestratorList(list_, "--orchestrator", &all_resolved);
      if (again.ok() && all_resolved) Update(*again);
    }
  });
  return absl::OkStatus();
}

void OrchestratorRegistrations::Update(const std::vector<OrchestratorTarget>& targets) {
  std::vector<std::unique_ptr<RegistrationClient>> dropped;
  {
    absl::MutexLock lock(&mutex_);
    for (auto it = clients_.begin(); it != clients_.end();) {
      if (std::find(targets.begin(), targets.end(), it->first) == targets.end()) {
        DG_LOG_INFO("", "orchestrator %s is no longer listed; leaving it", it->first.address);
        dropped.push_back(std::move(it->second));
        it = clients_.erase(it);
      } else {
        ++it;
      }
    }
    for (const OrchestratorTarget& t : targets) {
      const bool known = std::any_of(clients_.begin(), clients_.end(),
                                     [&](const auto& c) { return c.first == t; });
      if (known) continue;
      auto client =
          std::make_unique<RegistrationClient>(t.address, worker_, load_, credentials_, t.tls_name);
      client->Start();
      clients_.emplace_back(t, std::move(client));
    }
  }
  // Deregistering may wait on an unreachable orchestrator: outside the lock.
  dropped.clear();
}

void OrchestratorRegistrations::Stop() {
  if (thread_.joinable()) {
    stop_.Notify();
    thread_.join();
  }
  std::vector<std::pair<OrchestratorTarget, std::unique_ptr<RegistrationClient>>> clients;
  {
    absl::MutexLock lock(&mutex_);
    clients.swap(clients_);
  }
  for (auto& c : clients) c.second->Stop();
}

std::vector<std::string> OrchestratorRegistrations::addresses() const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::string> out;
  for (const auto& c : clients_) out.push_back(c.first.address);
  return out;
}

int OrchestratorRegistrations::registered() const {
  absl::MutexLock lock(&mutex_);
  int n = 0;
  for (const auto& c : clients_) n += c.second->registered();
  return n;
}

}  // namespace dgrid
