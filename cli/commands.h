// Subcommands of the dgrid CLI. Each takes the arguments after its name and returns the process
// exit code (0 ok, 1 failure, 2 usage error).
#ifndef DGRID_CLI_COMMANDS_H_
#define DGRID_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid::cli {

int GenerateCommand(const std::vector<std::string>& args);
int UpCommand(const std::vector<std::string>& args);
int ModelsCommand(const std::vector<std::string>& args);
// `dgrid bench compare a.json b.json` (cli/bench_compare.cc).
int BenchCompareCommand(const std::vector<std::string>& args);
// `dgrid plan --topology t.json --model flux-dev --workload mix.json` (cli/plan_command.cc).
int PlanCommand(const std::vector<std::string>& args);

// Sends `request` to the orchestrator at `server`, draws the progress stream on stderr (unless
// `quiet`) and writes the image to `out_path`.
// Writes a video's bytes to `out_path`: an encoded file (MP4, WebP: `encoded`) as it is; raw RGB8
// frames (num_frames of width x height, one after another) as a folder of PNGs frame_0000.png,
// frame_0001.png, ...
absl::Status WriteVideoOutput(const std::string& out_path, bool encoded, const std::string& data,
                              int width, int height, int num_frames);

// How the client commands reach a cluster: the orchestrator's address, the API key its public API
// requires (sent as "authorization: Bearer <key>"; empty: none) and TLS (a CA file turns it on;
// a client certificate and key are optional).
struct ServerConnection {
  std::string server = "127.0.0.1:50050";
  std::string api_key;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

// The flags of a ServerConnection (--server, --api-key, --tls-ca, --tls-cert, --tls-key), for a
// command's Config. --api-key defaults to $DGRID_API_KEY.
std::vector<Setting> ServerConnectionSettings();
absl::StatusOr<ServerConnection> ReadServerConnection(const Config& config);

absl::Status RemoteGenerate(const ServerConnection& connection, const v1::GenerateRequest& request,
                            const std::string& out_path, bool quiet);

// Path of a dgrid program (dgrid-encoder, dgrid-orchestrator, ...): next to this executable, in the
// build tree it was built in, or on PATH.
absl::StatusOr<std::string> FindBinary(const std::string& name);

// The model used when none is named: $DGRID_MODEL, else the first existing folder of the defaults
// compiled in (the project's embedded model, then the tiny random pipeline scripts/setup.sh makes).
std::string DefaultModelPath();

}  // namespace dgrid::cli

#endif  // DGRID_CLI_COMMANDS_H_
