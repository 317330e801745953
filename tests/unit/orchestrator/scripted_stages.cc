#include "tests/unit/orchestrator/scripted_stages.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "dgrid/v1/stages.grpc.pb.h"

namespace dgrid::testing {

namespace {

// A float32 tensor of zeros, inline.
dgrid::v1::TensorRef InlineZeros(std::vector<int64_t> shape) {
  dgrid::v1::TensorRef ref;
  ref.set_dtype(dgrid::v1::DTYPE_FLOAT32);
  int64_t n = 1;
  for (int64_t d : shape) {
    ref.add_shape(d);
    n *= d;
  }
  ref.set_byte_size(n * 4);
  ref.set_inline_data(std::string(n * 4, '\0'));
  return ref;
}

// Counts a running call for the duration of a scope.
class Running {
 public:
  explicit Running(ScriptedStage* s) : s_(s) {
    s_->calls++;
    const int now = ++s_->running;
    int seen = s_->max_concurrent.load();
    while (now > seen && !s_->max_concurrent.compare_exchange_weak(seen, now)) {
    }
  }
  ~Running() { --s_->running; }

 private:
  ScriptedStage* s_;
};

bool TakeOne(std::atomic<int>& counter) {
  int left = counter.load();
  while (left > 0) {
    if (counter.compare_exchange_weak(left, left - 1)) return true;
  }
  return false;
}

// The scripted failure of the next call, if any.
std::optional<grpc::Status> TakeFailure(ScriptedStage* s) {
  if (TakeOne(s->fail_unavailable)) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted failure");
  }
  if (TakeOne(s->fail_queue_full)) return ToGrpcStatus(QueueFull("scripted queue is full"));
  if (TakeOne(s->fail_input_lost)) {
    return ToGrpcStatus(InputLost("input: lease 1 was released or reclaimed by the producer"));
  }
  if (TakeOne(s->fail_resource_exhausted)) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "scripted out of memory");
  }
  return std::nullopt;
}

// Sleeps `ms`, waking early when the call is cancelled; returns false when it was.
bool SleepUnlessCancelled(grpc::ServerContext* context, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (context->IsCancelled()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 2)));
  }
  return !context->IsCancelled();
}

}  // namespace

class ScriptedStage::Services : public dgrid::v1::Encoder::Service,
                                public dgrid::v1::Denoiser::Service,
                                public dgrid::v1::Decoder::Service {
 public:
  explicit Services(ScriptedStage* stage) : s_(stage) {}

  grpc::Status Encode(grpc::ServerContext* context, const dgrid::v1::EncodeRequest* request,
                      dgrid::v1::EncodeResponse* response) override {
    Running running(s_);
    if (std::optional<grpc::Status> failure = TakeFailure(s_)) return *failure;
    if (!SleepUnlessCancelled(context, s_->delay_ms)) return Cancelled();
    if (request->prompt().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "prompt: empty");
    }
    const int seq = std::max(1, request->max_sequence_length());
    auto& positive = *response->mutable_positive()->mutable_tensors();
    positive["prompt_embeds"] = InlineZeros({1, std::min(seq, 8), 4});
    positive["pooled_prompt_embeds"] = InlineZeros({1, 4});
    if (request->encode_negative()) {
      auto& negative = *response->mutable_negative()->mutable_tensors();
      negative["prompt_embeds"] = InlineZeros({1, std::min(seq, 8), 4});
      negative["pooled_prompt_embeds"] = InlineZeros({1, 4});
    }
    return grpc::Status::OK;
  }

  grpc::Status Denoise(grpc::ServerContext* context, const dgrid::v1::DenoiseRequest* request,
                       grpc::ServerWriter<dgrid::v1::DenoiseEvent>* writer) override {
    Running running(s_);
    {
      absl::MutexLock lock(&s_->mutex_);
      s_->denoise_order_.push_back(request->request_id());
      s_->last_denoise_cache_ = request->cache();
    }
    if (std::optional<grpc::Status> failure = TakeFailure(s_)) return *failure;
    if (!request->has_positive() || !(request->positive().tensors().count("prompt_embeds") > 0)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "positive: missing");
    }
    const bool holds = TakeOne(s_->hold_calls);
    const int total = request->num_inference_steps();
    for (int step = 1; step <= total; ++step) {
      const auto start = std::chrono::steady_clock::now();
      if (!SleepUnlessCancelled(context, s_->step_sleep_ms)) return Cancelled();
      dgrid::v1::DenoiseEvent event;
      event.mutable_step()->set_step(step);
      event.mutable_step()->set_total(total);
      event.mutable_step()->set_step_ms(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
      if (!writer->Write(event)) return Cancelled();
      if (step == 1 && s_->fail_after_first_step) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted failure after step 1");
      }
      if (step == s_->hold_after_step && holds && !Hold(context)) return Cancelled();
    }
    dgrid::v1::DenoiseEvent latents;
    *latents.mutable_latents() = InlineZeros({1, 4, request->height() / 8, request->width() / 8});
    latents.set_skipped_steps(s_->skipped_steps);
    writer->Write(latents);
    return grpc::Status::OK;
  }

  grpc::Status Decode(grpc::ServerContext* context, const dgrid::v1::DecodeRequest* request,
                      dgrid::v1::DecodeResponse* response) override {
    Running running(s_);
    if (std::optional<grpc::Status> failure = TakeFailure(s_)) return *failure;
    if (!SleepUnlessCancelled(context, s_->delay_ms)) return Cancelled();
    const auto& shape = request->latents().shape();
    if (shape.size() != 4) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "latents: rank");
    const int h = static_cast<int>(shape[2]) * 8, w = static_cast<int>(shape[3]) * 8;
    dgrid::v1::Image* image = response->mutable_image();
    image->set_format(dgrid::v1::OUTPUT_FORMAT_RAW_RGB8);
    image->set_width(w);
    image->set_height(h);
    image->set_data(std::string(static_cast<size_t>(w) * h * 3, '\x7f'));
    return grpc::Status::OK;
  }

 private:
  // Holds the call until the test releases it (true) or the call is cancelled (false).
  bool Hold(grpc::ServerContext* context) {
    const int releases = s_->releases_;
    ++s_->held;
    bool live = true;
    while (s_->releases_ == releases && (live = SleepUnlessCancelled(context, 2))) {
    }
    --s_->held;
    return live && !context->IsCancelled();
  }

  grpc::Status Cancelled() {
    s_->cancelled_calls++;
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
  }
  ScriptedStage* s_;
};

ScriptedStage::ScriptedStage(std::string worker_id, dgrid::v1::StageKind stage,
                             std::vector<std::string> models)
    : worker_id_(std::move(worker_id)),
      stage_(stage),
      models_(std::move(models)),
      services_(std::make_unique<Services>(this)) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  builder.RegisterService(static_cast<dgrid::v1::Encoder::Service*>(services_.get()));
  builder.RegisterService(static_cast<dgrid::v1::Denoiser::Service*>(services_.get()));
  builder.RegisterService(static_cast<dgrid::v1::Decoder::Service*>(services_.get()));
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

ScriptedStage::~ScriptedStage() { Kill(); }

void ScriptedStage::Kill() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

std::vector<std::string> ScriptedStage::denoise_order() const {
  absl::MutexLock lock(&mutex_);
  return denoise_order_;
}

dgrid::v1::StepCache ScriptedStage::last_denoise_cache() const {
  absl::MutexLock lock(&mutex_);
  return last_denoise_cache_;
}

dgrid::v1::WorkerInfo ScriptedStage::worker_info(int max_inflight) const {
  dgrid::v1::WorkerInfo info;
  info.set_worker_id(worker_id_);
  info.set_stage(stage_);
  info.set_address(address_);
  info.set_max_inflight(max_inflight);
  for (const std::string& model : models_) {
    info.add_models(model);
    if (stage_ == dgrid::v1::STAGE_KIND_DENOISER) {
      dgrid::v1::ModelInfo* mi = info.add_model_infos();
      mi->set_name(model);
      mi->set_pipeline("FluxPipeline");
      mi->set_default_width(64);
      mi->set_default_height(64);
      mi->set_default_steps(4);
      mi->set_max_width(256);
      mi->set_max_height(256);
      mi->set_guidance_embeds(true);
    }
  }
  return info;
}

}  // namespace dgrid::testing
