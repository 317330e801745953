#include "services/denoiser/server/denoiser_service.h"

#include <algorithm>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/service_runtime.h"
#include "common/status.h"
#include "common/step_cache.h"

namespace dgrid {
namespace {

// Streams events in order with at most one write in flight. The engine's callbacks (worker thread)
// push events; OnWriteDone (gRPC thread) sends the next. Finish happens once the final status has
// been pushed and every event before it was written. Deleted in OnDone, which gRPC calls only after
// Finish; the engine's last callback (done) is what triggers Finish, so no callback can come later.
class DenoiseReactor final : public grpc::ServerWriteReactor<v1::DenoiseEvent> {
 public:
  DenoiseReactor(DenoiserEngine* engine, std::string request_id)
      : engine_(engine), request_id_(std::move(request_id)) {}

  void Push(v1::DenoiseEvent event) {
    std::optional<absl::Status> finish;
    {
      absl::MutexLock lock(&mutex_);
      pending_.push_back(std::move(event));
      finish = NextLocked();
    }
    if (finish) Finish(ToGrpcStatus(*finish));  // may delete this: nothing after it
  }
  void Close(const absl::Status& status) {
    std::optional<absl::Status> finish;
    {
      absl::MutexLock lock(&mutex_);
      final_status_ = status;
      closed_ = true;
      finish = NextLocked();
    }
    if (finish) Finish(ToGrpcStatus(*finish));
  }
  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> finish;
    {
      absl::MutexLock lock(&mutex_);
      writing_ = false;
      if (!ok) {
        // The client is gone; stop the work, the engine's done callback will Close().
        pending_.clear();
        if (engine_ != nullptr) engine_->Cancel(request_id_).IgnoreError();
      }
      finish = NextLocked();
    }
    if (finish) Finish(ToGrpcStatus(*finish));
  }
  void OnCancel() override {
    if (engine_ != nullptr) engine_->Cancel(request_id_).IgnoreError();
  }
  void OnDone() override { delete this; }

 private:
  // Starts the next write, or returns the final status when everything has been written and the
  // stream should finish. Finish itself is called by the caller after the lock is released: gRPC
  // may run OnDone (which deletes this reactor and its mutex) as soon as Finish is called.
  std::optional<absl::Status> NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (writing_ || finished_) return std::nullopt;
    if (!pending_.empty()) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      writing_ = true;
      StartWrite(&current_);
      return std::nullopt;
    }
    if (!closed_) return std::nullopt;
    finished_ = true;
    return final_status_;
  }

  DenoiserEngine* engine_;
  const std::string request_id_;
  absl::Mutex mutex_;
  std::deque<v1::DenoiseEvent> pending_ ABSL_GUARDED_BY(mutex_);
  v1::DenoiseEvent current_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mutex_);
};

// The tensor named `name` of `in` (field "positive" or "negative"): INVALID_ARGUMENT when the
// encoder sent none by that name; InputLost (common/status.h) when it cannot be pulled any more
// (the encoder died, the lease ended, the bytes came corrupt), so that the orchestrator encodes
// the prompt again instead of taking this denoiser for broken.
absl::StatusOr<at::Tensor> FetchNamed(TensorChannel& channel, const v1::TextEmbeddings& in,
                                      absl::string_view field, absl::string_view name) {
  const std::string where = absl::StrCat(field, ".tensors[", name, "]");
  auto it = in.tensors().find(std::string(name));
  if (it == in.tensors().end()) {
    return InvalidArgument(where, ": missing (the encoder sent ", in.tensors().size(), " tensors)");
  }
  absl::StatusOr<at::Tensor> tensor = channel.Fetch(it->second, where);
  if (!tensor.ok() && !absl::IsInvalidArgument(tensor.status())) {
    return InputLost(tensor.status().message());
  }
  return tensor;
}

// The model family's text_embedding_names() from `in` (field "positive" or "negative"); a name
// the family does not take is INVALID_ARGUMENT.
absl::Status FetchEmbeddings(TensorChannel& channel, const families::ModelFamily& family,
                             const v1::TextEmbeddings& in, absl::string_view field,
                             NamedTensors* out) {
  const std::vector<std::string> names = family.text_embedding_names();
  for (const auto& [name, ref] : in.tensors()) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      return InvalidArgument(field, ".tensors[", name, "]: not a tensor this model takes");
    }
  }
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN((*out)[name], FetchNamed(channel, in, field, name));
  }
  return absl::OkStatus();
}

// Leases are given back once the request is over, not right after the fetch: a retry of this
// request on another replica (after UNAVAILABLE) must still find the encoder's buffers, so those
// are left to expire.
void ReleaseEmbeddings(TensorChannel& channel, const v1::DenoiseRequest& request,
                       const absl::Status& status) {
  if (absl::IsUnavailable(status)) return;
  for (const v1::TextEmbeddings* e : {&request.positive(), &request.negative()}) {
    for (const auto& [name, ref] : e->tensors()) channel.Release(ref);
  }
  if (request.has_image_latents()) channel.Release(request.image_latents());
}

}  // namespace

grpc::ServerWriteReactor<v1::DenoiseEvent>* DenoiserService::Denoise(
    grpc::CallbackServerContext* context, const v1::DenoiseRequest* request) {
  DenoiserEngine* engine = engine_.load();
  const std::string id = RequestIdOrUnique(request->request_id());
  auto* reactor = new DenoiseReactor(engine, id);
  if (engine == nullptr) {
    reactor->Close(absl::UnavailableError("denoiser is loading its model"));
    return reactor;
  }
  if (!request->model().empty() && request->model() != engine->limits().name) {
    reactor->Close(NotFound("model: '", request->model(), "' is not served here (",
                            engine->limits().name, ")"));
    return reactor;
  }
  DenoiseInput input;
  input.request_id = id;
  input.width = request->width();
  input.height = request->height();
  input.num_frames =
      request->num_frames() == 0 ? engine->limits().default_num_frames : request->num_frames();
  input.num_inference_steps = request->num_inference_steps();
  input.guidance_scale = request->guidance_scale();
  if (request->has_guidance_scale_2()) input.guidance_scale_2 = request->guidance_scale_2();
  input.true_cfg_scale = request->true_cfg_scale() == 0 ? 1.0 : request->true_cfg_scale();
  input.seed = request->seed();
  input.deadline = CallDeadline(*context);
  input.preview_steps.assign(request->preview_steps().begin(), request->preview_steps().end());
  const families::ModelFamily& family = engine->family();
  absl::Status fetched = absl::OkStatus();
  if (request->has_cache()) {
    absl::StatusOr<StepCacheConfig> cache = StepCacheFromProto(request->cache());
    if (cache.ok()) input.cache = *cache;
    fetched = cache.status();
  }
  if (fetched.ok()) {
    fetched = FetchEmbeddings(*channel_, family, request->positive(), "positive", &input.positive);
  }
  if (fetched.ok() && family.RunsCfg(input.guidance_scale, input.true_cfg_scale)) {
    if (!request->has_negative()) {
      fetched = InvalidArgument("negative: classifier-free guidance needs negative embeddings");
    } else {
      fetched =
          FetchEmbeddings(*channel_, family, request->negative(), "negative", &input.negative);
    }
  }
  if (fetched.ok() && request->has_image_latents()) {
    // Image-to-image: the input image as the decoder encoded it. Lost latents are made again.
    absl::StatusOr<at::Tensor> image = channel_->Fetch(request->image_latents(), "image_latents");
    if (image.ok()) {
      input.image_latents = *std::move(image);
      input.strength = request->strength();
    } else {
      fetched = absl::IsInvalidArgument(image.status()) ? image.status()
                                                        : InputLost(image.status().message());
    }
  }
  if (!fetched.ok()) {
    reactor->Close(fetched);
    return reactor;
  }
  TensorChannel* channel = channel_;
  auto elapsed_ms = std::make_shared<double>(0);  // Steps run one after another on one thread.
  auto skipped_steps = std::make_shared<int>(0);  // So do the step cache's reports.
  const absl::Status queued = engine->Enqueue(
      std::move(input),
      [reactor, elapsed_ms](int step, int total, double seconds) {
        *elapsed_ms += seconds * 1e3;
        v1::DenoiseEvent event;
        v1::DenoiseStep* s = event.mutable_step();
        s->set_step(step);
        s->set_total(total);
        s->set_step_ms(seconds * 1e3);
        s->set_eta_ms(*elapsed_ms / step * (total - step));
        reactor->Push(std::move(event));
      },
      [reactor, channel, id, request, skipped_steps](absl::StatusOr<at::Tensor> latents) {
        absl::Status status = latents.status();
        if (status.ok()) {
          absl::StatusOr<v1::TensorRef> ref = channel->Publish(*latents);
          status = ref.status();
          if (ref.ok()) {
            v1::DenoiseEvent event;
            *event.mutable_latents() = *std::move(ref);
            event.set_skipped_steps(*skipped_steps);
            reactor->Push(std::move(event));
          }
        }
        if (!status.ok()) DG_LOG_WARN(id, "denoise ended: %s", status.ToString());
        ReleaseEmbeddings(*channel, *request, status);  // `request` lives until the reactor is done
        reactor->Close(status);
      },
      [reactor, channel, id](int step, const at::Tensor& latents) {
        // A preview that cannot be published is skipped: the request goes on without it.
        absl::StatusOr<v1::TensorRef> ref = channel->Publish(latents);
        if (!ref.ok()) {
          DG_LOG_WARN(id, "preview after step %d skipped: %s", step, ref.status().ToString());
          return;
        }
        v1::DenoiseEvent event;
        event.mutable_preview()->set_step(step);
        *event.mutable_preview()->mutable_latents() = *std::move(ref);
        reactor->Push(std::move(event));
      },
      [skipped_steps](int /*step*/) { ++*skipped_steps; });
  if (!queued.ok()) reactor->Close(queued);
  return reactor;
}

}  // namespace dgrid
