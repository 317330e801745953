// Shared gRPC channels to stage workers, one per address, created on first use with dgrid's
// message-size limit (kMaxGrpcMessageBytes) in both directions. Thread-safe; channels live as long
// as this object.
#ifndef DGRID_ORCHESTRATOR_PIPELINE_STAGE_CHANNELS_H_
#define DGRID_ORCHESTRATOR_PIPELINE_STAGE_CHANNELS_H_

#include <map>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace dgrid::orchestrator {

class StageChannels {
 public:
  // Returns the channel to `address` ("host:port"), creating it if needed with the credentials of
  // SetCredentials (default: plain text, for loopback development).
  std::shared_ptr<grpc::Channel> Get(absl::string_view address);
  // Credentials of channels created from now on (TLS / mutual TLS to the stages). Call before the
  // first Get.
  void SetCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);

 private:
  absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<grpc::Channel>, std::less<>> channels_
      ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<grpc::ChannelCredentials> credentials_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PIPELINE_STAGE_CHANNELS_H_
