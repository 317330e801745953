#include "orchestrator/api/generation_service.h"

#include <deque>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace dgrid::orchestrator {

namespace {

// Streams one request's events. gRPC allows one write in flight at a time, so events from the
// pipeline thread are queued here and written from OnWriteDone. The reactor deletes itself in
// OnDone, which gRPC calls only after Finish; Finish is called only after the pipeline's OnDone,
// after which the pipeline never touches the observer again — so the pipeline never sees a dangling
// reactor.
class GenerateReactor : public grpc::ServerWriteReactor<dgrid::v1::GenerateEvent> {
 public:
  explicit GenerateReactor(Pipeline* pipeline) : pipeline_(pipeline) {}

  // Submits the request; on a rejection finishes at once with that status.
  void Start(grpc::CallbackServerContext* context, const dgrid::v1::GenerateRequest& request);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

  // Observer side (pipeline thread).
  void Push(const dgrid::v1::GenerateEvent& event);
  void End(const absl::Status& status);

 private:
  // Starts the next write or the Finish, outside the lock.
  void Pump();

  Pipeline* const pipeline_;
  absl::Mutex mutex_;
  std::deque<dgrid::v1::GenerateEvent> pending_ ABSL_GUARDED_BY(mutex_);
  dgrid::v1::GenerateEvent writing_ ABSL_GUARDED_BY(mutex_);
  bool write_in_flight_ ABSL_GUARDED_BY(mutex_) = false;
  bool broken_ ABSL_GUARDED_BY(mutex_) = false;  // a write failed: the client is gone
  std::optional<grpc::Status> final_ ABSL_GUARDED_BY(mutex_);
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  std::string request_id_ ABSL_GUARDED_BY(mutex_);
};

// Forwards to the reactor. Shared with the pipeline; the reactor outlives every call through it.
class ReactorObserver : public RequestObserver {
 public:
  explicit ReactorObserver(GenerateReactor* reactor) : reactor_(reactor) {}
  void OnEvent(const dgrid::v1::GenerateEvent& event) override { reactor_->Push(event); }
  void OnDone(const absl::Status& status) override { reactor_->End(status); }

 private:
  GenerateReactor* const reactor_;
};

void GenerateReactor::Start(grpc::CallbackServerContext* context,
                            const dgrid::v1::GenerateRequest& request) {
  absl::Time client_deadline = absl::InfiniteFuture();
  const auto grpc_deadline = context->deadline();
  if (grpc_deadline != std::chrono::system_clock::time_point::max()) {
    client_deadline = absl::FromChrono(grpc_deadline);
  }
  absl::StatusOr<std::string> id;
  {
    // Held across Submit so that an early OnCancel sees the request id. Events the pipeline pushes
    // meanwhile wait on this lock; writes started before the reactor is bound are backlogged by
    // gRPC.
    absl::MutexLock lock(&mutex_);
    id = pipeline_->Submit(request, client_deadline, std::make_shared<ReactorObserver>(this));
    if (id.ok()) {
      request_id_ = *id;
      return;
    }
    finished_ = true;
  }
  Finish(ToGrpcStatus(id.status()));
}

void GenerateReactor::Push(const dgrid::v1::GenerateEvent& event) {
  {
    absl::MutexLock lock(&mutex_);
    if (broken_) return;
    pending_.push_back(event);
  }
  Pump();
}

void GenerateReactor::End(const absl::Status& status) {
  {
    absl::MutexLock lock(&mutex_);
    final_ = ToGrpcStatus(status);
  }
  Pump();
}

void GenerateReactor::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mutex_);
    write_in_flight_ = false;
    if (!ok) {
      broken_ = true;
      pending_.clear();
    }
  }
  Pump();
}

void GenerateReactor::Pump() {
  enum { kNothing, kWrite, kFinish } action = kNothing;
  grpc::Status status;
  {
    absl::MutexLock lock(&mutex_);
    if (write_in_flight_ || finished_) return;
    if (!pending_.empty()) {
      writing_ = std::move(pending_.front());
      pending_.pop_front();
      write_in_flight_ = true;
      action = kWrite;
    } else if (final_.has_value()) {
      finished_ = true;
      status = *final_;
      action = kFinish;
    }
  }
  // writing_ is only touched again after OnWriteDone, so it is safe to pass outside the lock.
  if (action == kWrite) StartWrite(&writing_);
  if (action == kFinish) Finish(status);
}

void GenerateReactor::OnCancel() {
  std::string id;
  {
    absl::MutexLock lock(&mutex_);
    if (finished_ || cancelled_) return;
    cancelled_ = true;
    id = request_id_;
  }
  DG_LOG_INFO(id, "client cancelled the call");
  // The pipeline ends the request with CANCELLED, which finishes this reactor. NOT_FOUND means it
  // has just finished on its own.
  if (!id.empty()) pipeline_->Cancel(id).IgnoreError();
}

}  // namespace

grpc::ServerWriteReactor<dgrid::v1::GenerateEvent>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const dgrid::v1::GenerateRequest* request) {
  auto* reactor = new GenerateReactor(pipeline_);
  const grpc::Status auth = Authorize(*context);
  if (!auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  reactor->Start(context, *request);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Cancel(grpc::CallbackServerContext* context,
                                                    const dgrid::v1::CancelRequest* request,
                                                    dgrid::v1::CancelResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const grpc::Status auth = Authorize(*context);
  if (!auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(pipeline_->Cancel(request->request_id())));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* context,
                                                        const dgrid::v1::ListModelsRequest* request,
                                                        dgrid::v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const grpc::Status auth = Authorize(*context);
  if (!auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  for (auto& model : pipeline_->ListModels()) *response->add_models() = std::move(model);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::Status GenerationService::Authorize(const grpc::CallbackServerContext& context) const {
  if (api_keys_ == nullptr) return grpc::Status::OK;
  return ToGrpcStatus(api_keys_->CheckCall(context));
}

}  // namespace dgrid::orchestrator
