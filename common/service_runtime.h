// What every dgrid gRPC process shares: building the server (max message size, grpc.health.v1,
// reflection, TLS, request metrics), waiting for SIGTERM / SIGINT, draining, and registering with
// the orchestrator.
//
// Readiness is honest: the health service says NOT_SERVING from start until MarkServing(), which a
// stage calls once its weights are loaded.
#ifndef DGRID_COMMON_SERVICE_RUNTIME_H_
#define DGRID_COMMON_SERVICE_RUNTIME_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "dgrid/v1/registry.grpc.pb.h"

namespace dgrid {

// Transport security of one process, for the servers it runs and the channels it opens. PEM files.
// No certificate: plain text (meant for loopback development; a warning is logged when a plain-text
// server listens on another address).
struct TlsOptions {
  enum class ClientAuth {
    kNone,      // Servers do not ask clients for certificates.
    kOptional,  // Asked for and verified against `ca_file` when presented (AuthenticatedPeer()).
    kRequire,   // Mutual TLS: a client without a certificate signed by `ca_file` is refused.
  };
  std::string cert_file;  // This process's certificate chain (server and client use).
  std::string key_file;   // Its private key.
  std::string ca_file;  // CA that signed the peers' certificates; channels verify servers with it.
  ClientAuth client_auth = ClientAuth::kNone;

  bool server_tls() const { return !cert_file.empty(); }
  bool channel_tls() const { return !ca_file.empty(); }
};

// The flags of TlsOptions (tls_cert, tls_key, tls_ca, tls_client_auth = none|optional|require), to
// append to a process's Config settings, and reading them back (INVALID_ARGUMENT for a key without
// a certificate and the reverse, an unknown client_auth, or client_auth without a CA).
std::vector<Setting> TlsSettings();
absl::StatusOr<TlsOptions> ReadTlsOptions(const Config& config);

// Credentials for a server / a channel. Files that cannot be read are NOT_FOUND naming the file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls);

// Whether the caller presented a certificate that the server verified (always false on plain text).
bool AuthenticatedPeer(const grpc::ServerContextBase& context);

// A plain-text gRPC server that serves only grpc.health.v1 on host:port (port 0: any), for
// Kubernetes' native gRPC probes, which cannot speak TLS. Starts NOT_SERVING.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealthServer(const std::string& host, int port);

struct GrpcServerOptions {
  std::string stage = "stage";  // Label of the request metrics (dgrid_requests_total{stage}).
  TlsOptions tls;
  int health_port = -1;  // StartHealthServer on the same host (-1: none), kept in step.
};

// Starts a gRPC server on `address` ("host:port"; port 0 picks a free one) with `services`.
// Health checking and reflection are on; the overall health status starts NOT_SERVING.
class GrpcServer {
 public:
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const std::string& address,
                                                           std::vector<grpc::Service*> services,
                                                           const GrpcServerOptions& options = {});
  ~GrpcServer();

  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  void MarkServing(bool serving);
  // Stops accepting calls; calls in flight get until `deadline` to finish, then are cancelled.
  void Shutdown(absl::Time deadline);
  grpc::Server* server() { return server_.get(); }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // Plain-text probe port, if any.
  std::string address_;
  int port_ = 0;
};

// Blocks until SIGTERM or SIGINT arrives (installs the handlers on first use). Returns the signal.
int WaitForTerminationSignal();

// Registers a worker with the orchestrator at `orchestrator_address` and heartbeats in the
// background with the load that `load()` reports. Re-registers when the orchestrator forgets the
// worker (it restarted); keeps trying while the orchestrator is unreachable. Deregisters on Stop().
// `credentials` of the channel to the orchestrator; nullptr: plain text.
// `tls_target_name`: the name the orchestrator's certificate is checked against when
// `orchestrator_address` is one of the addresses a DNS name resolved to (empty: the address's
// host).
class RegistrationClient {
 public:
  struct Load {
    int inflight = 0;
    int queued = 0;
    bool serving = true;
  };
  RegistrationClient(std::string orchestrator_address, v1::WorkerInfo worker,
                     std::function<Load()> load,
                     std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
                     const std::string& tls_target_name = "");
  ~RegistrationClient();
  void Start();
  void Stop();
  bool registered() const { return registered_.load(); }

 private:
  void Loop();
  std::string orchestrator_address_;
  v1::WorkerInfo worker_;
  std::function<Load()> load_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  std::atomic<bool> registered_{false};
  absl::Notification stop_;
  std::thread thread_;
};

// One orchestrator address to register with: `address` is "host:port" to dial and `tls_name` the
// DNS name it came from (empty for an address given as an IP literal).
struct OrchestratorTarget {
  std::string address;
  std::string tls_name;
  bool operator==(const OrchestratorTarget& o) const {
    return address == o.address && tls_name == o.tls_name;
  }
};

// The orchestrators named by a --orchestrator value: comma-separated "host:port" entries (IPv6 as
// "[addr]:port"). A host given as a DNS name stands for every address it resolves to (IPv4 ones
// when there are any, else IPv6), so a headless Service's name reaches every orchestrator replica;
// a name that does not resolve (yet) is kept as it is, for gRPC to resolve. INVALID_ARGUMENT naming
// `flag` for an entry that is not host:port.
absl::StatusOr<std::vector<OrchestratorTarget>> ResolveOrchestrators(absl::string_view list,
                                                                     absl::string_view flag);

// Registers one worker with every orchestrator of a --orchestrator list (RegistrationClient each),
// and resolves the list again every `refresh`: an orchestrator that appears is registered with, one
// that is gone is dropped. Each orchestrator keeps its own registry, so any of them can place
// requests on the worker; losing one loses only the requests it holds.
class OrchestratorRegistrations {
 public:
  OrchestratorRegistrations(std::string list, v1::WorkerInfo worker,
                            std::function<RegistrationClient::Load()> load,
                            std::shared_ptr<grpc::ChannelCredentials> credentials,
                            absl::Duration refresh);
  ~OrchestratorRegistrations();
  // INVALID_ARGUMENT when the list is malformed (nothing started then).
  absl::Status Start();
  // Deregisters from every orchestrator.
  void Stop();
  // The addresses registered with (or being tried) now.
  std::vector<std::string> addresses() const;
  // How many of them have accepted the registration.
  int registered() const;

 private:
  void Update(const std::vector<OrchestratorTarget>& targets);
  const std::string list_;
  const v1::WorkerInfo worker_;
  const std::function<RegistrationClient::Load()> load_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const absl::Duration refresh_;
  mutable absl::Mutex mutex_;
  std::vector<std::pair<OrchestratorTarget, std::unique_ptr<RegistrationClient>>> clients_
      ABSL_GUARDED_BY(mutex_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace dgrid

#endif  // DGRID_COMMON_SERVICE_RUNTIME_H_

namespace dgrid {

// `request_id`, or a process-unique "anon-N" when it is empty: engines key queued work and
// cancellation by id, so two calls without ids must not share one.
std::string RequestIdOrUnique(const std::string& request_id);

// The absl deadline of a server call (InfiniteFuture when the client set none).
absl::Time CallDeadline(const grpc::ServerContextBase& context);

}  // namespace dgrid
