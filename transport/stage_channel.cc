#include "transport/stage_channel.h"

#include "common/logging.h"
#include "common/status.h"
#include "transport/inline/inline_channel.h"
#include "transport/ucx/ucx_channel.h"

namespace dgrid {

StageChannel::StageChannel() : channel_(std::make_unique<InlineChannel>()) {}
StageChannel::~StageChannel() = default;

absl::Status StageChannel::Configure(const TransportFlags& flags) {
  if (flags.inline_threshold_bytes < 0) {
    return InvalidArgument("--inline-threshold-bytes must be >= 0");
  }
  if (flags.transport == "inline") {
    DG_LOG_INFO("", "tensor transport: inline (gRPC messages)");
    channel_ = std::make_unique<InlineChannel>();
    return absl::OkStatus();
  }
  if (flags.transport != "ucx") {
    return InvalidArgument("--transport: expected ucx or inline, got '", flags.transport, "'");
  }
  UcxChannelOptions options;
  options.tls = flags.ucx_tls;
  options.inline_threshold_bytes = static_cast<uint64_t>(flags.inline_threshold_bytes);
  options.checksum = flags.ucx_checksum;
  absl::StatusOr<std::unique_ptr<UcxChannel>> ucx = UcxChannel::Create(options);
  if (!ucx.ok()) {
    DG_LOG_WARN("", "UCX did not start (%s); tensors go inline", ucx.status().ToString());
    channel_ = std::make_unique<InlineChannel>();
    return absl::OkStatus();
  }
  channel_ = *std::move(ucx);
  return absl::OkStatus();
}

}  // namespace dgrid
