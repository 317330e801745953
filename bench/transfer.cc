// dgrid-bench-transfer: one stage-to-stage tensor hand-off, UCX against gRPC inline.
//
//   dgrid-bench-transfer --modes=ucx-tcp,ucx-shm,grpc-inline --min_mib=1 --max_mib=512
//       --out=bench/results/DATE-CARD-transfer.json --card="..." --commit=SHA
//
// Each hand-off is what a stage does: the producer Publish()es the tensor, a real gRPC call
// (dgrid.v1.Decoder/Decode on loopback) carries the TensorRef, the server Fetch()es and Release()s
// it and answers. With gRPC inline the bytes travel in that call; with UCX only the reference does
// and the server pulls the bytes with ucp_get_nbx (UCX_TLS=tcp or shm). Sizes go from min_mib to
// max_mib by factors of 4 (plus max_mib). Reported per mode and size: GB/s at the median time
// (bytes / 1e9 / s), p50 and p99 of the hand-off latency; as a table and as JSON (bench/report.h).
#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_main.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "dgrid/v1/stages.grpc.pb.h"
#include "transport/inline/inline_channel.h"
#include "transport/ucx/ucx_channel.h"

namespace dgrid::bench {
namespace {

constexpr int kMaxMessageBytes = 1 << 30;  // 512 MiB tensors do not fit gRPC's usual limit

// The consumer side: fetches the tensor of every Decode call through `channel` and releases it.
class SinkService final : public v1::Decoder::CallbackService {
 public:
  void set_channel(TensorChannel* channel) { channel_ = channel; }
  grpc::ServerUnaryReactor* Decode(grpc::CallbackServerContext* context,
                                   const v1::DecodeRequest* request,
                                   v1::DecodeResponse* /*response*/) override {
    auto* reactor = context->DefaultReactor();
    absl::StatusOr<at::Tensor> tensor = channel_->Fetch(request->latents(), "latents");
    if (tensor.ok()) channel_->Release(request->latents());
    reactor->Finish(ToGrpcStatus(tensor.status()));
    return reactor;
  }

 private:
  TensorChannel* channel_ = nullptr;
};

double Percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const size_t index = static_cast<size_t>(q * (values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

struct Channels {
  std::unique_ptr<TensorChannel> producer;
  std::unique_ptr<TensorChannel> consumer;
};

absl::StatusOr<Channels> MakeChannels(const std::string& mode) {
  Channels channels;
  if (mode == "grpc-inline") {
    channels.producer = std::make_unique<InlineChannel>(kMaxMessageBytes);
    channels.consumer = std::make_unique<InlineChannel>(kMaxMessageBytes);
    return channels;
  }
  if (mode != "ucx-tcp" && mode != "ucx-shm") return InvalidArgument("unknown mode ", mode);
  UcxChannelOptions options;
  // Shared-memory transports have no peer failure handling in UCX, so tcp joins them for the
  // wire-up and active messages; the gets themselves go over cma.
  options.tls = mode == "ucx-tcp" ? "tcp" : "shm,tcp";
  options.inline_threshold_bytes = 0;
  options.fetch_timeout = absl::Seconds(120);
  ASSIGN_OR_RETURN(channels.producer, UcxChannel::Create(options));
  ASSIGN_OR_RETURN(channels.consumer, UcxChannel::Create(options));
  return channels;
}

absl::Status Run(const Config& config) {
  ASSIGN_OR_RETURN(std::string modes_text, config.GetString("modes"));
  ASSIGN_OR_RETURN(int64_t min_mib, config.GetInt("min_mib"));
  ASSIGN_OR_RETURN(int64_t max_mib, config.GetInt("max_mib"));
  ASSIGN_OR_RETURN(int64_t max_iters, config.GetInt("iters"));
  ASSIGN_OR_RETURN(std::string out, config.GetString("out"));
  PerfReport report;
  report.tool = "dgrid-bench-transfer";
  ASSIGN_OR_RETURN(report.card, config.GetString("card"));
  ASSIGN_OR_RETURN(report.commit, config.GetString("commit"));
  ASSIGN_OR_RETURN(report.date, config.GetString("date"));
  if (report.date.empty()) report.date = TodayUtc();
  std::vector<int64_t> sizes_mib;
  for (int64_t mib = min_mib; mib < max_mib; mib *= 4) sizes_mib.push_back(mib);
  sizes_mib.push_back(max_mib);
  report.config = {{"modes", modes_text},
                   {"sizes_mib", sizes_mib},
                   {"max_iters", max_iters},
                   {"hand_off", "Publish + gRPC Decode call carrying the ref + Fetch + Release"}};

  SinkService sink;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.RegisterService(&sink);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return absl::InternalError("gRPC server did not start");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  auto stub = v1::Decoder::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));

  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-12s %9s %6s %9s %10s %10s  %s\n", "mode", "MiB", "iters", "GB/s", "p50 ms",
              "p99 ms", "path");
  for (const std::string& mode : std::vector<std::string>(absl::StrSplit(modes_text, ','))) {
    ASSIGN_OR_RETURN(Channels channels, MakeChannels(mode));
    sink.set_channel(channels.consumer.get());
    for (int64_t mib : sizes_mib) {
      const int64_t bytes = mib << 20;
      const at::Tensor tensor = at::randint(0, 255, {bytes}, at::kByte);
      // At least 3 timed hand-offs, fewer of the large ones (a 2-core VM moves 512 MiB slowly).
      const int64_t iters = std::max<int64_t>(3, std::min<int64_t>(max_iters, (1024 >> 2) / mib));
      std::vector<double> ms;
      for (int64_t i = -1; i < iters; ++i) {  // i == -1: warm-up (connections, registration)
        const absl::Time start = absl::Now();
        v1::DecodeRequest request;
        ASSIGN_OR_RETURN(*request.mutable_latents(), channels.producer->Publish(tensor));
        v1::DecodeResponse response;
        grpc::ClientContext context;
        const grpc::Status status = stub->Decode(&context, request, &response);
        if (!status.ok()) {
          return absl::InternalError(
              absl::StrCat(mode, " ", mib, " MiB: ", status.error_message()));
        }
        if (i >= 0) ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
      }
      // Which path the UCX pulls took: mapped shared memory (memcpy) or ucp_get_nbx.
      std::string path = "inline";
      if (const auto* ucx = dynamic_cast<const UcxChannel*>(channels.consumer.get())) {
        const UcxChannel::Stats stats = ucx->stats();
        path = stats.ucx_gets == 0 ? "direct" : stats.direct_copies == 0 ? "ucp_get" : "mixed";
      }
      const double p50 = Percentile(ms, 0.5);
      const double p99 = Percentile(ms, 0.99);
      const double gbps = static_cast<double>(bytes) / 1e9 / (p50 / 1e3);
      std::printf("%-12s %9lld %6lld %9.2f %10.2f %10.2f  %s\n", mode.c_str(),
                  static_cast<long long>(mib), static_cast<long long>(iters), gbps, p50, p99,
                  path.c_str());
      std::fflush(stdout);
      rows.push_back({{"mode", mode},
                      {"mib", mib},
                      {"iters", iters},
                      {"gb_per_s", gbps},
                      {"p50_ms", p50},
                      {"p99_ms", p99},
                      {"path", path},
                      {"all_ms", ms}});
      report.steps.emplace_back(mode + "/" + std::to_string(mib) + "MiB", p50);
      report.total_duration_ms += p50;
    }
  }
  server->Shutdown();
  report.metrics["transfers"] = rows;
  if (!out.empty()) RETURN_IF_ERROR(WriteJsonFile(out, report.ToJson()));
  return absl::OkStatus();
}

}  // namespace
}  // namespace dgrid::bench

int main(int argc, char** argv) {
  using dgrid::Setting;
  dgrid::Config config({
      {"modes", Setting::kString, "ucx-tcp,ucx-shm,grpc-inline", "ucx-tcp, ucx-shm, grpc-inline"},
      {"min_mib", Setting::kInt, "1", "smallest tensor (MiB)", 1, 4096},
      {"max_mib", Setting::kInt, "512", "largest tensor (MiB)", 1, 4096},
      {"iters", Setting::kInt, "20", "timed hand-offs per size at most", 3, 10000},
      {"out", Setting::kString, "", "JSON report path (none written if empty)"},
      {"card", Setting::kString, "", "machine / card for the report"},
      {"commit", Setting::kString, "", "git commit for the report"},
      {"date", Setting::kString, "", "date for the report (default: today, UTC)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-transfer", config, argc, argv, dgrid::bench::Run);
}
