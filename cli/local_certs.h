// Certificates for a local TLS cluster (`dgrid up --tls`): a throw-away CA and one certificate it
// signs, used by every process as its server certificate and as its client certificate (mutual TLS
// between the orchestrator and the stages). Made with the openssl command-line tool, which the
// set-up installs with libssl; keys never leave the folder (mode 0700).
//
// Not for production: the CA key sits next to the certificates. Kubernetes deployments use
// cert-manager or their own PKI (docs/deploy.md).
#ifndef DGRID_CLI_LOCAL_CERTS_H_
#define DGRID_CLI_LOCAL_CERTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dgrid::cli {

struct LocalCertificates {
  std::string ca_file;    // ca.crt
  std::string cert_file;  // node.crt (serverAuth + clientAuth)
  std::string key_file;   // node.key
};

// Makes the CA and the node certificate in `dir` (created if needed), valid for 30 days for
// localhost, 127.0.0.1 and `hosts` (IP addresses or DNS names). UNAVAILABLE when openssl is missing
// or fails (its output is in the message).
absl::StatusOr<LocalCertificates> MakeLocalCertificates(const std::string& dir,
                                                        const std::vector<std::string>& hosts);

}  // namespace dgrid::cli

#endif  // DGRID_CLI_LOCAL_CERTS_H_
