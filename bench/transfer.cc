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
// (bytes / 1e9 / s), p50 and p99 of the hand-off latency, and which path the UCX pulls took
// (direct: memcpy from the producer's mapped shared memory; ucp_get); as a table and as JSON
// (bench/report.h).
//
// --device=cuda puts the producer's tensor in GPU memory and moves what the consumer fetched to
// the GPU before it answers (what a GPU stage does with it); with a UCX build without CUDA
// transports (Debian's) the producer stages through registered pinned host memory.
//
// --request_shapes instead hands off what one 1024x1024 FLUX.1 request moves between stages, in
// bfloat16 (the stored dtype of FLUX.1 weights, which the stages keep): prompt_embeds [1, 512,
// 4096] and pooled_prompt_embeds [1, 768] (encoder -> denoiser), latents [1, 16, 128, 128]
// (denoiser -> decoder), one call each, with the stages' default 64 KiB inline threshold; reported
// per tensor and per request (the sum of the three in one iteration).
#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
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
#include "common/torch_status.h"
#include "dgrid/v1/stages.grpc.pb.h"
#include "transport/inline/inline_channel.h"
#include "transport/ucx/ucx_channel.h"

namespace dgrid::bench {
namespace {

constexpr int kMaxMessageBytes = 1 << 30;  // 512 MiB tensors do not fit gRPC's usual limit
// The stages' default --inline-threshold-bytes.
constexpr uint64_t kStageInlineThresholdBytes = uint64_t{64} << 10;

// The consumer side: fetches the tensor of every Decode call through `channel` and releases it.
class SinkService final : public v1::Decoder::CallbackService {
 public:
  void set_channel(TensorChannel* channel) { channel_ = channel; }
  // Where the consumer uses the tensor (cpu: as fetched; cuda: copied there before answering).
  void set_device(const at::Device& device) { device_ = device; }
  grpc::ServerUnaryReactor* Decode(grpc::CallbackServerContext* context,
                                   const v1::DecodeRequest* request,
                                   v1::DecodeResponse* /*response*/) override {
    auto* reactor = context->DefaultReactor();
    absl::StatusOr<at::Tensor> tensor = channel_->Fetch(request->latents(), "latents");
    if (tensor.ok()) {
      channel_->Release(request->latents());
      if (!device_.is_cpu() && tensor->device() != device_) {
        tensor = TorchCall("copy to the consumer's device", [&] {
          at::Tensor on_device = tensor->to(device_);
          at::accelerator::synchronizeDevice(device_.index());
          return on_device;
        });
      }
    }
    reactor->Finish(ToGrpcStatus(tensor.status()));
    return reactor;
  }

 private:
  TensorChannel* channel_ = nullptr;
  at::Device device_ = at::kCPU;
};

double Percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const size_t index = static_cast<size_t>(q * (values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

// Which path the consumer's UCX pulls took so far: "direct" (memcpy from mapped shared memory),
// "ucp_get", "mixed", or "inline" (no UCX pull).
std::string PullPath(const TensorChannel& consumer) {
  const auto* ucx = dynamic_cast<const UcxChannel*>(&consumer);
  if (ucx == nullptr) return "inline";
  const UcxChannel::Stats stats = ucx->stats();
  if (stats.direct_copies + stats.ucx_gets == 0) return "inline";
  return stats.ucx_gets == 0 ? "direct" : stats.direct_copies == 0 ? "ucp_get" : "mixed";
}

// One hand-off of `tensor` (Publish, a Decode call carrying the ref, Fetch + Release in the
// server); its wall time in ms.
absl::StatusOr<double> HandOff(v1::Decoder::Stub& stub, TensorChannel& producer,
                               const at::Tensor& tensor) {
  const absl::Time start = absl::Now();
  v1::DecodeRequest request;
  ASSIGN_OR_RETURN(*request.mutable_latents(), producer.Publish(tensor));
  v1::DecodeResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub.Decode(&context, request, &response);
  if (!status.ok()) return absl::InternalError(status.error_message());
  return absl::ToDoubleMilliseconds(absl::Now() - start);
}

struct Channels {
  std::unique_ptr<TensorChannel> producer;
  std::unique_ptr<TensorChannel> consumer;
};

absl::StatusOr<Channels> MakeChannels(const std::string& mode, uint64_t inline_threshold_bytes,
                                      bool checksum) {
  Channels channels;
  if (mode == "grpc-inline") {
    channels.producer = std::make_unique<InlineChannel>(kMaxMessageBytes);
    channels.consumer = std::make_unique<InlineChannel>(kMaxMessageBytes);
    return channels;
  }
  if (mode != "ucx-tcp" && mode != "ucx-shm") return InvalidArgument("unknown mode ", mode);
  UcxChannelOptions options;
  // Shared-memory transports have no peer failure handling in UCX, so tcp joins them for the
  // wire-up and active messages; the data is copied from the producer's mapped shared memory.
  options.tls = mode == "ucx-tcp" ? "tcp" : "shm,tcp";
  options.inline_threshold_bytes = inline_threshold_bytes;
  options.checksum = checksum;
  options.fetch_timeout = absl::Seconds(120);
  ASSIGN_OR_RETURN(channels.producer, UcxChannel::Create(options));
  ASSIGN_OR_RETURN(channels.consumer, UcxChannel::Create(options));
  return channels;
}

// Hand-offs of 1-byte tensors from min_mib to max_mib, all through UCX (no inline threshold).
absl::Status Sizes(v1::Decoder::Stub& stub, SinkService& sink, bool checksum,
                   const at::Device& device, const std::vector<std::string>& modes,
                   const std::vector<int64_t>& sizes_mib, int64_t max_iters, PerfReport& report,
                   nlohmann::json& rows) {
  std::printf("%-12s %9s %6s %9s %10s %10s  %s\n", "mode", "MiB", "iters", "GB/s", "p50 ms",
              "p99 ms", "path");
  for (const std::string& mode : modes) {
    ASSIGN_OR_RETURN(Channels channels, MakeChannels(mode, /*inline_threshold_bytes=*/0, checksum));
    sink.set_channel(channels.consumer.get());
    for (int64_t mib : sizes_mib) {
      const int64_t bytes = mib << 20;
      const at::Tensor tensor = at::randint(0, 255, {bytes}, at::kByte).to(device);
      // At least 3 timed hand-offs, fewer of the large ones (a 2-core VM moves 512 MiB slowly).
      const int64_t iters = std::max<int64_t>(3, std::min<int64_t>(max_iters, 1024 / mib));
      std::vector<double> ms;
      for (int64_t i = -1; i < iters; ++i) {  // i == -1: warm-up (connections, registration)
        ASSIGN_OR_RETURN(const double t, HandOff(stub, *channels.producer, tensor));
        if (i >= 0) ms.push_back(t);
      }
      const std::string path = PullPath(*channels.consumer);
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
  return absl::OkStatus();
}

// What one 1024x1024 FLUX.1 request hands off, per tensor and per request.
absl::Status RequestShapes(v1::Decoder::Stub& stub, SinkService& sink, bool checksum,
                           const at::Device& device, const std::vector<std::string>& modes,
                           int64_t iters, PerfReport& report, nlohmann::json& rows) {
  struct Shape {
    const char* name;
    std::vector<int64_t> sizes;
  };
  const std::vector<Shape> shapes = {{"prompt_embeds", {1, 512, 4096}},
                                     {"pooled_prompt_embeds", {1, 768}},
                                     {"latents", {1, 16, 128, 128}}};
  std::vector<at::Tensor> tensors;
  int64_t request_bytes = 0;
  for (const Shape& shape : shapes) {
    tensors.push_back(at::randn(shape.sizes).to(device, at::kBFloat16));
    request_bytes += static_cast<int64_t>(tensors.back().nbytes());
  }
  std::printf("%-12s %-22s %10s %6s %10s %10s  %s\n", "mode", "tensor", "bytes", "iters", "p50 ms",
              "p99 ms", "path");
  for (const std::string& mode : modes) {
    ASSIGN_OR_RETURN(Channels channels, MakeChannels(mode, kStageInlineThresholdBytes, checksum));
    sink.set_channel(channels.consumer.get());
    std::vector<std::vector<double>> ms(shapes.size() + 1);  // per tensor, then per request
    for (int64_t i = -1; i < iters; ++i) {                   // i == -1: warm-up
      double request_ms = 0;
      for (size_t t = 0; t < shapes.size(); ++t) {
        ASSIGN_OR_RETURN(const double one, HandOff(stub, *channels.producer, tensors[t]));
        if (i >= 0) ms[t].push_back(one);
        request_ms += one;
      }
      if (i >= 0) ms.back().push_back(request_ms);
    }
    for (size_t t = 0; t <= shapes.size(); ++t) {
      const bool whole = t == shapes.size();
      const std::string name = whole ? "request (sum)" : shapes[t].name;
      const int64_t bytes = whole ? request_bytes : static_cast<int64_t>(tensors[t].nbytes());
      const double p50 = Percentile(ms[t], 0.5);
      const double p99 = Percentile(ms[t], 0.99);
      const std::string path = whole ? PullPath(*channels.consumer) : "";
      std::printf("%-12s %-22s %10lld %6lld %10.3f %10.3f  %s\n", mode.c_str(), name.c_str(),
                  static_cast<long long>(bytes), static_cast<long long>(iters), p50, p99,
                  path.c_str());
      rows.push_back({{"mode", mode},
                      {"tensor", name},
                      {"bytes", bytes},
                      {"iters", iters},
                      {"p50_ms", p50},
                      {"p99_ms", p99},
                      {"all_ms", ms[t]}});
      if (whole) {
        rows.back()["path"] = path;
        report.steps.emplace_back(mode + "/request", p50);
      }
    }
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Run(const Config& config) {
  ASSIGN_OR_RETURN(std::string modes_text, config.GetString("modes"));
  ASSIGN_OR_RETURN(int64_t min_mib, config.GetInt("min_mib"));
  ASSIGN_OR_RETURN(int64_t max_mib, config.GetInt("max_mib"));
  ASSIGN_OR_RETURN(int64_t max_iters, config.GetInt("iters"));
  ASSIGN_OR_RETURN(std::string out, config.GetString("out"));
  ASSIGN_OR_RETURN(bool request_shapes, config.GetBool("request_shapes"));
  ASSIGN_OR_RETURN(bool checksum, config.GetBool("checksum"));
  ASSIGN_OR_RETURN(std::string device_name, config.GetString("device"));
  ASSIGN_OR_RETURN(at::Device device,
                   TorchCall("--device", [&] { return at::Device(device_name); }));
  if (device.is_cuda() && !at::hasCUDA()) {
    return absl::FailedPreconditionError("--device=cuda: no CUDA device in this process");
  }
  if (device.is_cuda() && !device.has_index()) device = at::Device(at::kCUDA, 0);
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
                   {"request_shapes", request_shapes},
                   {"checksum", checksum},
                   {"device", device.str()},
                   {"sizes_mib", request_shapes ? std::vector<int64_t>{} : sizes_mib},
                   {"max_iters", max_iters},
                   {"hand_off", "Publish + gRPC Decode call carrying the ref + Fetch + Release"}};

  SinkService sink;
  sink.set_device(device);
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
  const std::vector<std::string> modes = absl::StrSplit(modes_text, ',');
  const absl::Status ran =
      request_shapes
          ? RequestShapes(*stub, sink, checksum, device, modes, max_iters, report, rows)
          : Sizes(*stub, sink, checksum, device, modes, sizes_mib, max_iters, report, rows);
  server->Shutdown();
  RETURN_IF_ERROR(ran);
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
      {"request_shapes", Setting::kBool, "false",
       "hand off a 1024x1024 FLUX.1 request's tensors (bf16) instead of the size sweep"},
      {"checksum", Setting::kBool, "true", "UCX modes: CRC-32C set on publish, checked on fetch"},
      {"device", Setting::kString, "cpu",
       "where the producer's tensor lives and the consumer uses it: cpu or cuda[:N]"},
      {"out", Setting::kString, "", "JSON report path (none written if empty)"},
      {"card", Setting::kString, "", "machine / card for the report"},
      {"commit", Setting::kString, "", "git commit for the report"},
      {"date", Setting::kString, "", "date for the report (default: today, UTC)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-transfer", config, argc, argv, dgrid::bench::Run);
}
