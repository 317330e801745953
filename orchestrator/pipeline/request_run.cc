#include "orchestrator/pipeline/request_run.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status.h"
#include "dgrid/v1/stages.grpc.pb.h"

namespace dgrid::orchestrator {

namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// How many times a request's stage inputs (embeddings, latents) are made again after they were
// lost on the way to the next stage.
constexpr int kMaxRegenerations = 2;

}  // namespace

RequestRun::RequestRun(Pipeline* pipeline, dgrid::v1::GenerateRequest request,
                       dgrid::v1::Accepted accepted, bool cfg, absl::Time arrival,
                       absl::Time deadline, std::shared_ptr<RequestObserver> observer)
    : pipeline_(pipeline),
      request_(std::move(request)),
      accepted_(std::move(accepted)),
      cfg_(cfg),
      arrival_(arrival),
      deadline_(deadline),
      observer_(std::move(observer)) {}

void RequestRun::Cancel() {
  absl::MutexLock lock(&mutex_);
  if (!cancelled_) DG_LOG_INFO(id(), "cancel requested");
  cancelled_ = true;
  for (grpc::ClientContext* call : calls_) call->TryCancel();
}

bool RequestRun::cancelled() const {
  absl::MutexLock lock(&mutex_);
  return cancelled_;
}

bool RequestRun::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mutex_);
  if (cancelled_) return false;
  calls_.push_back(context);
  return true;
}

void RequestRun::Detach() {
  absl::MutexLock lock(&mutex_);
  calls_.pop_back();
}

dgrid::v1::GenerateEvent RequestRun::NewEvent() const {
  dgrid::v1::GenerateEvent event;
  event.set_request_id(id());
  event.set_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  return event;
}

void RequestRun::Emit(dgrid::v1::GenerateEvent event) { observer_->OnEvent(event); }

void RequestRun::Run(bool admitted, Pipeline::QueueKey key) {
  DG_LOG_INFO(id(), "accepted model=%s %dx%d steps=%d seed=%d", accepted_.model(),
              accepted_.width(), accepted_.height(), accepted_.num_inference_steps(),
              accepted_.seed());
  dgrid::v1::GenerateEvent accepted = NewEvent();
  *accepted.mutable_accepted() = accepted_;
  Emit(std::move(accepted));

  absl::Status status;
  if (!admitted) {
    status = pipeline_->WaitForAdmission(this, key, [this](int position) {
      DG_LOG_DEBUG(id(), "queued at position %d", position);
      dgrid::v1::GenerateEvent queued = NewEvent();
      queued.mutable_queued()->set_position(position);
      queued.mutable_queued()->set_stage("encoder");
      Emit(std::move(queued));
    });
    admitted = status.ok();
  }
  timings_.set_queue_ms(Ms(absl::Now() - arrival_));
  if (status.ok()) status = RunStages();
  timings_.set_total_ms(Ms(absl::Now() - arrival_));
  if (status.ok()) {
    DG_LOG_INFO(id(), "done in %.1f ms (queue %.1f, encode %.1f, denoise %.1f, decode %.1f)%s",
                timings_.total_ms(), timings_.queue_ms(), timings_.encode_ms(),
                timings_.denoise_ms(), timings_.decode_ms(),
                request_.has_cache() && !request_.cache().method().empty() &&
                        request_.cache().method() != "none"
                    ? absl::StrCat(", step cache ", request_.cache().method(), " skipped ",
                                   skipped_steps_, " of ", request_.num_inference_steps(), " steps")
                    : std::string());
  } else {
    DG_LOG_INFO(id(), "failed after %.1f ms: %s", timings_.total_ms(), status.ToString());
  }
  // Leave the pipeline's books first so that a client that sees the end can reuse the id at once.
  pipeline_->Finish(this, admitted, key);
  observer_->OnDone(status);
}

absl::Status RequestRun::RunStages() {
  dgrid::v1::EncodeResponse embeddings;
  dgrid::v1::TensorRef image_latents;  // image-to-image only
  dgrid::v1::TensorRef latents;
  dgrid::v1::DecodeResponse decoded;
  absl::Time start;
  absl::Status s;
  // A stage's input lost on the way (its producer died, its lease ended before the consumer
  // pulled it) is made again by the stage before: embeddings the denoiser cannot pull are
  // encoded again, latents the decoder cannot pull are denoised again. The same request and seed
  // give the same tensors.
  bool encode = true;
  for (int redone = 0;; ++redone) {
    if (encode) {
      start = absl::Now();
      s = Encode(&embeddings);
      if (s.ok() && !request_.image().empty()) s = EncodeImage(&image_latents);
      if (!s.ok()) return s;
      if (redone == 0) {
        timings_.set_encode_ms(Ms(absl::Now() - start));
        dgrid::v1::GenerateEvent encoded = NewEvent();
        encoded.mutable_encoded()->set_duration_ms(timings_.encode_ms());
        Emit(std::move(encoded));
      }
      encode = false;
    }
    start = absl::Now();
    s = Denoise(embeddings, image_latents, &latents);
    if (IsInputLost(s) && redone < kMaxRegenerations) {
      DG_LOG_WARN(id(), "%s; encoding again", s.ToString());
      encode = true;
      continue;
    }
    if (!s.ok()) return s;
    timings_.set_denoise_ms(Ms(absl::Now() - start));

    start = absl::Now();
    s = Decode(latents, &decoded);
    if (s.ok()) break;
    if (!IsInputLost(s) || redone >= kMaxRegenerations) return s;
    DG_LOG_WARN(id(), "%s; denoising again", s.ToString());
  }
  timings_.set_decode_ms(Ms(absl::Now() - start));
  dgrid::v1::GenerateEvent decoded_event = NewEvent();
  decoded_event.mutable_decoded()->set_duration_ms(timings_.decode_ms());
  Emit(std::move(decoded_event));

  dgrid::v1::GenerateEvent result = NewEvent();
  dgrid::v1::GenerateResult* r = result.mutable_result();
  if (decoded.has_video()) {
    *r->mutable_video() = std::move(*decoded.mutable_video());
  } else {
    *r->mutable_image() = std::move(*decoded.mutable_image());
  }
  r->set_seed(request_.seed());
  r->set_skipped_steps(skipped_steps_);
  timings_.set_total_ms(Ms(absl::Now() - arrival_));
  *r->mutable_timings() = timings_;
  Emit(std::move(result));
  return absl::OkStatus();
}

absl::Status RequestRun::StageError(dgrid::v1::StageKind stage, const Reservation& slot,
                                    const grpc::Status& status) const {
  if (cancelled()) return absl::CancelledError("request cancelled");
  // Which worker it was (its address, its pid) is for the logs and metrics; the client learns the
  // stage and the request id to quote.
  DG_LOG_WARN(id(), "%s %s at %s answered %d: %s", std::string(StageName(stage)), slot.worker_id(),
              slot.address(), static_cast<int>(status.error_code()), status.error_message());
  const std::string where = absl::StrCat(StageName(stage), " (request ", id(), ")");
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || absl::Now() >= deadline_) {
    return absl::DeadlineExceededError(absl::StrCat("deadline exceeded during ", where));
  }
  return Annotate(FromGrpcStatus(status), where);
}

absl::Status RequestRun::BackOff(dgrid::v1::StageKind stage, int round) const {
  const absl::Time until =
      std::min(deadline_, absl::Now() + absl::Milliseconds(std::min(100, 1 << std::min(round, 7))));
  while (absl::Now() < until) {
    if (cancelled()) return absl::CancelledError("request cancelled");
    absl::SleepFor(std::min(absl::Milliseconds(10), until - absl::Now()));
  }
  if (absl::Now() >= deadline_) {
    return absl::DeadlineExceededError(
        absl::StrCat("deadline exceeded while every ", StageName(stage), " queue was full"));
  }
  return absl::OkStatus();
}

absl::Status RequestRun::CallWithRetry(dgrid::v1::StageKind stage, const Attempt& attempt) {
  std::set<std::string> excluded;
  absl::Status last;
  // What the placement policy weighs for a denoiser group (size, CFG, time left); other stages are
  // placed without it.
  PlacementRequest placed;
  if (stage == dgrid::v1::STAGE_KIND_DENOISER) {
    placed.width = request_.width();
    placed.height = request_.height();
    placed.steps = request_.num_inference_steps();
    placed.cfg = cfg_;
    placed.frames = request_.num_frames();
  }
  // One try plus one retry on another replica; rounds of back-pressure are not tries.
  int full_rounds = 0;
  for (int attempt_index = 0; attempt_index < 2; ++attempt_index) {
    if (cancelled()) return absl::CancelledError("request cancelled");
    bool reported_wait = false;
    if (stage == dgrid::v1::STAGE_KIND_DENOISER && deadline_ != absl::InfiniteFuture()) {
      placed.deadline_ms = std::max(1.0, absl::ToDoubleMilliseconds(deadline_ - absl::Now()));
    }
    absl::StatusOr<Reservation> slot = pipeline_->registry_->ReserveWaiting(
        stage, request_.model(), excluded, deadline_, [this] { return cancelled(); },
        [&](int ahead) {
          if (reported_wait) return;
          reported_wait = true;
          DG_LOG_INFO(id(), "every %s is full; waiting behind %d", std::string(StageName(stage)),
                      ahead);
          dgrid::v1::GenerateEvent queued = NewEvent();
          queued.mutable_queued()->set_position(ahead);
          queued.mutable_queued()->set_stage(std::string(StageName(stage)));
          Emit(std::move(queued));
        },
        placed);
    if (!slot.ok()) {
      // After a failed first try, "nobody else serves it" is less useful than the original failure.
      if (attempt_index > 0 && absl::IsUnavailable(slot.status())) {
        return Annotate(last, "no other replica to retry on");
      }
      return slot.status();
    }
    grpc::ClientContext context;
    if (deadline_ != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline_));
    if (!Attach(&context)) return absl::CancelledError("request cancelled");
    DG_LOG_DEBUG(id(), "%s call on %s (%s)", std::string(StageName(stage)), slot->worker_id(),
                 slot->address());
    bool retryable = false;
    last = attempt(*slot, &context, &retryable);
    Detach();
    if (last.ok()) return last;
    if (cancelled()) return absl::CancelledError("request cancelled");
    if (IsQueueFull(last)) {
      // The worker refused before doing anything: its queue was full (a call the registry saw end
      // was still leaving it, or other orchestrators fill it). Hold the request and place it again.
      if (full_rounds == 0) {
        DG_LOG_INFO(id(), "%s: %s; holding the request", std::string(StageName(stage)),
                    std::string(last.message()));
      }
      slot->Release();
      RETURN_IF_ERROR(BackOff(stage, full_rounds++));
      --attempt_index;  // not a try
      continue;
    }
    if (!absl::IsUnavailable(last)) return last;
    pipeline_->registry_->MarkUnavailable(slot->worker_id());
    if (!retryable) return last;
    DG_LOG_WARN(id(), "%s failed (%s); retrying on another replica", std::string(StageName(stage)),
                last.ToString());
    excluded.insert(slot->worker_id());
  }
  return last;
}

absl::Status RequestRun::Encode(dgrid::v1::EncodeResponse* response) {
  dgrid::v1::EncodeRequest call;
  call.set_request_id(id());
  call.set_model(request_.model());
  call.set_prompt(request_.prompt());
  call.set_negative_prompt(request_.negative_prompt());
  call.set_encode_negative(cfg_);
  call.set_max_sequence_length(request_.max_sequence_length());
  return CallWithRetry(dgrid::v1::STAGE_KIND_ENCODER, [&](const Reservation& slot,
                                                          grpc::ClientContext* context,
                                                          bool* retryable) {
    auto stub = dgrid::v1::Encoder::NewStub(pipeline_->channels_->Get(slot.address()));
    response->Clear();
    grpc::Status status = stub->Encode(context, call, response);
    *retryable = true;
    return status.ok() ? absl::OkStatus() : StageError(dgrid::v1::STAGE_KIND_ENCODER, slot, status);
  });
}

absl::Status RequestRun::EncodeImage(dgrid::v1::TensorRef* image_latents) {
  dgrid::v1::EncodeImageRequest call;
  // Its own id on the decoder, as a preview's: the Decode of this request may reach the same
  // decoder while its books still hold this call's id.
  call.set_request_id(absl::StrCat(id(), ".image"));
  call.set_model(request_.model());
  call.set_image(request_.image());
  call.set_width(request_.width());
  call.set_height(request_.height());
  call.set_seed(request_.seed());
  return CallWithRetry(dgrid::v1::STAGE_KIND_DECODER, [&](const Reservation& slot,
                                                          grpc::ClientContext* context,
                                                          bool* retryable) {
    auto stub = dgrid::v1::Decoder::NewStub(pipeline_->channels_->Get(slot.address()));
    dgrid::v1::EncodeImageResponse response;
    grpc::Status status = stub->EncodeImage(context, call, &response);
    *retryable = true;
    if (status.ok()) *image_latents = std::move(*response.mutable_image_latents());
    return status.ok() ? absl::OkStatus() : StageError(dgrid::v1::STAGE_KIND_DECODER, slot, status);
  });
}

absl::Status RequestRun::Denoise(const dgrid::v1::EncodeResponse& embeddings,
                                 const dgrid::v1::TensorRef& image_latents,
                                 dgrid::v1::TensorRef* latents) {
  dgrid::v1::DenoiseRequest call;
  call.set_request_id(id());
  call.set_model(request_.model());
  call.set_width(request_.width());
  call.set_height(request_.height());
  call.set_num_inference_steps(request_.num_inference_steps());
  call.set_guidance_scale(request_.guidance_scale());
  call.set_true_cfg_scale(request_.true_cfg_scale());
  call.set_num_frames(request_.num_frames());
  if (request_.has_guidance_scale_2()) call.set_guidance_scale_2(request_.guidance_scale_2());
  call.set_seed(request_.seed());
  for (int step : PreviewSteps()) call.add_preview_steps(step);
  *call.mutable_positive() = embeddings.positive();
  if (embeddings.has_negative()) *call.mutable_negative() = embeddings.negative();
  if (!request_.image().empty()) {
    *call.mutable_image_latents() = image_latents;
    call.set_strength(request_.strength());
  }
  if (request_.has_cache()) *call.mutable_cache() = request_.cache();
  return CallWithRetry(dgrid::v1::STAGE_KIND_DENOISER, [&](const Reservation& slot,
                                                           grpc::ClientContext* context,
                                                           bool* retryable) {
    auto stub = dgrid::v1::Denoiser::NewStub(pipeline_->channels_->Get(slot.address()));
    // A blocking reader on this request's thread; Cancel() reaches it through context->TryCancel().
    std::unique_ptr<grpc::ClientReader<dgrid::v1::DenoiseEvent>> reader =
        stub->Denoise(context, call);
    dgrid::v1::DenoiseEvent event;
    int steps_seen = 0;
    double step_ms_sum = 0;
    bool have_latents = false;
    // A preview comes before its step event on a GPU (sampler_hooks.h); it is sent after it.
    std::vector<dgrid::v1::DenoisePreview> previews;
    const auto send_previews = [&](int step) {
      while (!previews.empty() && previews.front().step() <= step) {
        EmitPreview(previews.front());
        previews.erase(previews.begin());
      }
    };
    while (reader->Read(&event)) {
      if (event.has_step()) {
        ++steps_seen;
        const dgrid::v1::DenoiseStep& step = event.step();
        step_ms_sum += step.step_ms();
        slot.ObserveStep(step.step(), step.step_ms());  // the placement's view of the group
        dgrid::v1::GenerateEvent out = NewEvent();
        *out.mutable_step() = step;
        if (out.step().total() == 0) out.mutable_step()->set_total(request_.num_inference_steps());
        if (step.eta_ms() <= 0) {
          // ETA = remaining steps x mean step time so far.
          const int remaining = std::max(0, out.step().total() - step.step());
          out.mutable_step()->set_eta_ms(remaining * step_ms_sum / steps_seen);
        }
        DG_LOG_DEBUG(id(), "step %d/%d %.1f ms", step.step(), out.step().total(), step.step_ms());
        // Latents made again (RunStages) replay steps the client has seen; it hears only new ones.
        if (step.step() > steps_reported_) {
          steps_reported_ = step.step();
          Emit(std::move(out));
        }
        send_previews(step.step());
      } else if (event.has_preview()) {
        previews.push_back(std::move(*event.mutable_preview()));
        send_previews(steps_reported_);
      } else if (event.has_latents()) {
        // Handed to the decoder as is: inline bytes or a UCX descriptor, never decoded here.
        *latents = std::move(*event.mutable_latents());
        skipped_steps_ = event.skipped_steps();
        have_latents = true;
      }
    }
    grpc::Status status = reader->Finish();
    // Once a step came back the sampler has spent work (and we have told the client); a retry would
    // replay steps, so only a failure before the first step is retried.
    *retryable = steps_seen == 0;
    if (!status.ok()) return StageError(dgrid::v1::STAGE_KIND_DENOISER, slot, status);
    if (!have_latents) {
      DG_LOG_ERROR(id(), "denoiser %s at %s: stream ended without latents", slot.worker_id(),
                   slot.address());
      return absl::InternalError(
          absl::StrCat("denoiser (request ", id(), "): stream ended without latents"));
    }
    return absl::OkStatus();
  });
}

absl::Status RequestRun::Decode(const dgrid::v1::TensorRef& latents,
                                dgrid::v1::DecodeResponse* response, dgrid::v1::PreviewMode preview,
                                int preview_step) {
  dgrid::v1::DecodeRequest call;
  // A preview has its own id: a decoder may still hold the previous call's id in its books for a
  // moment after answering it, and refuses a second call by the same id meanwhile.
  call.set_request_id(preview == dgrid::v1::PREVIEW_MODE_UNSPECIFIED
                          ? id()
                          : absl::StrCat(id(), ".preview-", preview_step));
  call.set_model(request_.model());
  *call.mutable_latents() = latents;
  call.set_output_format(request_.output_format());
  call.set_fps(request_.fps());
  call.set_preview(preview);
  return CallWithRetry(dgrid::v1::STAGE_KIND_DECODER, [&](const Reservation& slot,
                                                          grpc::ClientContext* context,
                                                          bool* retryable) {
    auto stub = dgrid::v1::Decoder::NewStub(pipeline_->channels_->Get(slot.address()));
    response->Clear();
    grpc::Status status = stub->Decode(context, call, response);
    *retryable = true;
    return status.ok() ? absl::OkStatus() : StageError(dgrid::v1::STAGE_KIND_DECODER, slot, status);
  });
}

int RequestRun::StepsRun() const {
  const int n = request_.num_inference_steps();
  if (request_.image().empty()) return n;
  // Image-to-image runs N - int(N - N * strength) of the N steps, numbered from 1
  // (GenerateRequest.strength; the denoiser's Img2ImgFirstStep).
  const double steps = n;
  return n - static_cast<int>(std::max(steps - std::min(steps * request_.strength(), steps), 0.0));
}

std::vector<int> RequestRun::PreviewSteps() const {
  std::vector<int> steps;
  const int total = StepsRun();
  const int count = request_.preview_images();
  for (int k = 1; k <= count; ++k) {
    const int step = static_cast<int>(static_cast<int64_t>(total) * k / (count + 1));
    if (step >= 1 && step < total && (steps.empty() || step > steps.back())) steps.push_back(step);
  }
  return steps;
}

void RequestRun::EmitPreview(const dgrid::v1::DenoisePreview& preview) {
  if (preview.step() <= last_preview_step_) return;  // replayed after the latents were redone
  last_preview_step_ = preview.step();
  dgrid::v1::DecodeResponse decoded;
  const absl::Status s =
      Decode(preview.latents(), &decoded, pipeline_->options_.preview_mode, preview.step());
  if (!s.ok()) {
    DG_LOG_WARN(id(), "preview after step %d skipped: %s", preview.step(), s.ToString());
    return;
  }
  dgrid::v1::GenerateEvent event = NewEvent();
  dgrid::v1::Preview* out = event.mutable_preview();
  out->set_index(previews_sent_++);
  out->set_step(preview.step());
  out->set_total(StepsRun());
  *out->mutable_image() = std::move(*decoded.mutable_image());
  Emit(std::move(event));
}

}  // namespace dgrid::orchestrator
