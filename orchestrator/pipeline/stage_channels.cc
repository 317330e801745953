#include "orchestrator/pipeline/stage_channels.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "common/grpc_status.h"

namespace dgrid::orchestrator {

std::shared_ptr<grpc::Channel> StageChannels::Get(absl::string_view address) {
  absl::MutexLock lock(&mutex_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  grpc::ChannelArguments args;
  // Embeddings and images exceed gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  auto channel = grpc::CreateCustomChannel(
      std::string(address),
      credentials_ != nullptr ? credentials_ : grpc::InsecureChannelCredentials(), args);
  channels_.emplace(std::string(address), channel);
  return channel;
}

void StageChannels::SetCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  absl::MutexLock lock(&mutex_);
  credentials_ = std::move(credentials);
}

}  // namespace dgrid::orchestrator
