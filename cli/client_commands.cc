// Client subcommands against a running cluster: dgrid generate (without --local) and dgrid models.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "common/files.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "dgrid/v1/generation.grpc.pb.h"

namespace dgrid::cli {
namespace {

absl::StatusOr<std::unique_ptr<v1::Generation::Stub>> Connect(const ServerConnection& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!c.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileToString(c.tls_ca));
    if (!c.tls_cert.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFileToString(c.tls_cert));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFileToString(c.tls_key));
    }
    credentials = grpc::SslCredentials(ssl);
  }
  return v1::Generation::NewStub(grpc::CreateCustomChannel(c.server, credentials, args));
}

void Authorize(const ServerConnection& c, grpc::ClientContext* context) {
  if (!c.api_key.empty()) context->AddMetadata("authorization", "Bearer " + c.api_key);
}

void DrawProgress(const v1::DenoiseStep& step) {
  constexpr int kWidth = 30;
  const int filled = step.total() > 0 ? kWidth * step.step() / step.total() : 0;
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r  denoise [%s] %d/%d  %.0f ms/step  eta %.1f s   ", bar.c_str(),
               step.step(), step.total(), step.step_ms(), step.eta_ms() / 1e3);
  if (step.step() == step.total()) std::fprintf(stderr, "\n");
}

}  // namespace

std::vector<Setting> ServerConnectionSettings() {
  const char* env_key = std::getenv("DGRID_API_KEY");
  return {
      {"server", Setting::kString, "127.0.0.1:50050", "orchestrator address (host:port)"},
      {"api_key", Setting::kString, env_key != nullptr ? env_key : "",
       "API key of a cluster started with --api-key (default: $DGRID_API_KEY)"},
      {"tls_ca", Setting::kString, "",
       "PEM CA of a cluster with TLS (e.g. <log dir>/tls/ca.crt of dgrid up --tls); empty: plain "
       "text"},
      {"tls_cert", Setting::kString, "", "PEM client certificate, with --tls-ca (optional)"},
      {"tls_key", Setting::kString, "", "PEM private key of --tls-cert"},
  };
}

absl::StatusOr<ServerConnection> ReadServerConnection(const Config& config) {
  ServerConnection c;
  ASSIGN_OR_RETURN(c.server, config.GetString("server"));
  ASSIGN_OR_RETURN(c.api_key, config.GetString("api_key"));
  ASSIGN_OR_RETURN(c.tls_ca, config.GetString("tls_ca"));
  ASSIGN_OR_RETURN(c.tls_cert, config.GetString("tls_cert"));
  ASSIGN_OR_RETURN(c.tls_key, config.GetString("tls_key"));
  if (c.server.empty()) return InvalidArgument("--server: empty");
  if (c.tls_ca.empty() && !(c.tls_cert.empty() && c.tls_key.empty())) {
    return InvalidArgument("--tls-cert / --tls-key need --tls-ca (the cluster's CA)");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return InvalidArgument("--tls-cert and --tls-key go together");
  }
  return c;
}

absl::Status RemoteGenerate(const ServerConnection& connection, const v1::GenerateRequest& request,
                            const std::string& out_path, bool quiet) {
  ASSIGN_OR_RETURN(std::unique_ptr<v1::Generation::Stub> stub, Connect(connection));
  grpc::ClientContext context;
  Authorize(connection, &context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader(stub->Generate(&context, request));
  v1::GenerateEvent event;
  bool have_result = false;
  v1::GenerateResult result;
  while (reader->Read(&event)) {
    switch (event.event_case()) {
      case v1::GenerateEvent::kAccepted:
        if (!quiet) {
          std::fprintf(stderr, "accepted %s: model %s, %dx%d, %d steps, seed %llu\n",
                       event.request_id().c_str(), event.accepted().model().c_str(),
                       event.accepted().width(), event.accepted().height(),
                       event.accepted().num_inference_steps(),
                       static_cast<unsigned long long>(event.accepted().seed()));
        }
        break;
      case v1::GenerateEvent::kQueued:
        if (!quiet) {
          std::fprintf(stderr, "  queued for the %s, position %d\n", event.queued().stage().c_str(),
                       event.queued().position());
        }
        break;
      case v1::GenerateEvent::kEncoded:
        if (!quiet) std::fprintf(stderr, "  encoded in %.1f ms\n", event.encoded().duration_ms());
        break;
      case v1::GenerateEvent::kStep:
        if (!quiet) DrawProgress(event.step());
        break;
      case v1::GenerateEvent::kDecoded:
        if (!quiet) std::fprintf(stderr, "  decoded in %.1f ms\n", event.decoded().duration_ms());
        break;
      case v1::GenerateEvent::kResult:
        result = event.result();
        have_result = true;
        break;
      default:
        break;
    }
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (!have_result) return Internal("the stream ended without a result");
  if (result.has_video()) {
    const v1::Video& video = result.video();
    std::string path = out_path;
    // The default name (out.png) for what turned out to be an MP4.
    if (video.format() == v1::OUTPUT_FORMAT_MP4 && absl::EndsWith(path, ".png")) {
      path = path.substr(0, path.size() - 4) + ".mp4";
    }
    RETURN_IF_ERROR(WriteVideoOutput(
        path, video.format() == v1::OUTPUT_FORMAT_MP4 || video.format() == v1::OUTPUT_FORMAT_WEBP,
        video.data(), video.width(), video.height(), video.num_frames()));
    std::printf(
        "wrote %s (%d frames of %dx%d at %d fps, seed %llu) in %.0f ms (encode %.0f, denoise "
        "%.0f, decode %.0f)\n",
        path.c_str(), video.num_frames(), video.width(), video.height(), video.fps(),
        static_cast<unsigned long long>(result.seed()), result.timings().total_ms(),
        result.timings().encode_ms(), result.timings().denoise_ms(), result.timings().decode_ms());
    return absl::OkStatus();
  }
  std::ofstream out(out_path, std::ios::binary);
  out.write(result.image().data().data(),
            static_cast<std::streamsize>(result.image().data().size()));
  if (!out) return absl::PermissionDeniedError("cannot write " + out_path);
  std::printf("wrote %s (%dx%d, seed %llu) in %.0f ms (encode %.0f, denoise %.0f, decode %.0f)\n",
              out_path.c_str(), result.image().width(), result.image().height(),
              static_cast<unsigned long long>(result.seed()), result.timings().total_ms(),
              result.timings().encode_ms(), result.timings().denoise_ms(),
              result.timings().decode_ms());
  if (request.has_cache()) {
    std::printf("step cache %s: %d steps skipped\n", request.cache().method().c_str(),
                result.skipped_steps());
  }
  return absl::OkStatus();
}

int ModelsCommand(const std::vector<std::string>& args) {
  Config config(ServerConnectionSettings());
  absl::Status parsed = config.ParseArgs(args);
  if (parsed.ok() && config.help_requested()) {
    std::printf("usage: dgrid models [flags]\n%s", config.Usage().c_str());
    return 0;
  }
  absl::StatusOr<ServerConnection> connection =
      parsed.ok() ? ReadServerConnection(config) : absl::StatusOr<ServerConnection>(parsed);
  absl::StatusOr<std::unique_ptr<v1::Generation::Stub>> stub =
      connection.ok() ? Connect(*connection)
                      : absl::StatusOr<std::unique_ptr<v1::Generation::Stub>>(connection.status());
  if (!stub.ok()) {
    std::fprintf(stderr, "dgrid models: %s\n", stub.status().ToString().c_str());
    return 1;
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  Authorize(*connection, &context);
  v1::ListModelsResponse response;
  const grpc::Status status = (*stub)->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) {
    std::fprintf(stderr, "dgrid models: %s\n", FromGrpcStatus(status).ToString().c_str());
    return 1;
  }
  std::printf("%-24s %-16s %-12s %-8s %s\n", "MODEL", "PIPELINE", "DEFAULT", "STEPS", "MAX");
  for (const v1::ModelInfo& m : response.models()) {
    std::printf("%-24s %-16s %-12s %-8d %dx%d%s\n", m.name().c_str(), m.pipeline().c_str(),
                absl::StrCat(m.default_width(), "x", m.default_height()).c_str(), m.default_steps(),
                m.max_width(), m.max_height(),
                m.unavailable() ? "  (unavailable: a stage is down)" : "");
  }
  return 0;
}

}  // namespace dgrid::cli
