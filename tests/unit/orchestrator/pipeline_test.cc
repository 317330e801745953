// The orchestrator's request state machine end to end over gRPC, against scripted stage servers
// (scripted_stages.h, a test seam) on loopback.
#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/grpc_status.h"
#include "dgrid/v1/generation.grpc.pb.h"
#include "dgrid/v1/registry.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/orchestrator_server.h"
#include "orchestrator/api/video_jobs.h"
#include "tests/unit/orchestrator/scripted_stages.h"

namespace dgrid::orchestrator {
namespace {

using dgrid::testing::ScriptedStage;
using dgrid::v1::GenerateEvent;
using dgrid::v1::GenerateRequest;

struct Outcome {
  std::vector<GenerateEvent> events;
  grpc::Status status;
  int steps() const {
    int n = 0;
    for (const auto& e : events) n += e.has_step();
    return n;
  }
};

// Events must come as accepted, queued*, encoded, step 1..N, decoded, result; a failed request
// stops somewhere along that order.
void ExpectOrdered(const Outcome& o) {
  ASSERT_FALSE(o.events.empty());
  EXPECT_TRUE(o.events.front().has_accepted());
  int rank = 0, last_step = 0;
  for (const GenerateEvent& e : o.events) {
    int r = e.has_accepted()  ? 0
            : e.has_queued()  ? 1
            : e.has_encoded() ? 2
            : e.has_step()    ? 3
            : e.has_decoded() ? 4
                              : 5;
    EXPECT_GE(r, rank) << e.DebugString();
    rank = r;
    if (e.has_step()) {
      EXPECT_EQ(e.step().step(), last_step + 1);
      last_step = e.step().step();
    }
  }
  if (o.status.ok()) {
    EXPECT_TRUE(o.events.back().has_result());
  } else {
    EXPECT_FALSE(o.events.back().has_result());
  }
}

class PipelineTest : public ::testing::Test {
 protected:
  void Start(int max_inflight = 16, int max_queued = 32, int http_port = -1) {
    OrchestratorOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.http_port = http_port;
    options.heartbeat_interval = absl::Seconds(30);
    options.pipeline.max_inflight = max_inflight;
    options.pipeline.max_queued = max_queued;
    server_ = std::make_unique<OrchestratorServer>(options);
    ASSERT_TRUE(server_->Start().ok());
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
    channel_ = grpc::CreateCustomChannel(server_->grpc_address(),
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = dgrid::v1::Generation::NewStub(channel_);
  }

  // Starts a scripted worker and registers it through the Registry service.
  ScriptedStage* Add(std::string id, dgrid::v1::StageKind stage, int max_inflight = 4) {
    stages_.push_back(std::make_unique<ScriptedStage>(id, stage, std::vector<std::string>{"tiny"}));
    auto registry = dgrid::v1::Registry::NewStub(channel_);
    grpc::ClientContext context;
    dgrid::v1::RegisterRequest request;
    *request.mutable_worker() = stages_.back()->worker_info(max_inflight);
    dgrid::v1::RegisterResponse response;
    EXPECT_TRUE(registry->Register(&context, request, &response).ok());
    EXPECT_EQ(response.heartbeat_interval_ms(), 30000);
    return stages_.back().get();
  }

  void AddOneOfEach() {
    encoder_ = Add("e1", dgrid::v1::STAGE_KIND_ENCODER);
    denoiser_ = Add("d1", dgrid::v1::STAGE_KIND_DENOISER);
    decoder_ = Add("c1", dgrid::v1::STAGE_KIND_DECODER);
  }

  static GenerateRequest Request(int steps = 3) {
    GenerateRequest r;
    r.set_prompt("a tiny cat");
    r.set_num_inference_steps(steps);
    r.set_output_format(dgrid::v1::OUTPUT_FORMAT_RAW_RGB8);
    return r;
  }

  // Runs Generate to the end. `on_event` may act on the stream (cancel, ...) after each event.
  Outcome Generate(
      const GenerateRequest& request, absl::Duration deadline = absl::Seconds(20),
      const std::function<void(const GenerateEvent&, grpc::ClientContext*)>& on_event = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    auto reader = stub_->Generate(&context, request);
    Outcome o;
    GenerateEvent event;
    while (reader->Read(&event)) {
      o.events.push_back(event);
      if (on_event) on_event(event, &context);
    }
    o.status = reader->Finish();
    return o;
  }

  // Waits until `predicate` holds (returning as soon as it does; the bound is for a busy machine).
  static bool Eventually(const std::function<bool()>& predicate) {
    const absl::Time end = absl::Now() + absl::Seconds(30);
    while (absl::Now() < end) {
      if (predicate()) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return predicate();
  }

  // Declared before server_: the orchestrator goes first, then the workers.
  std::vector<std::unique_ptr<ScriptedStage>> stages_;
  ScriptedStage* encoder_ = nullptr;
  ScriptedStage* denoiser_ = nullptr;
  ScriptedStage* decoder_ = nullptr;
  std::unique_ptr<OrchestratorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dgrid::v1::Generation::Stub> stub_;
};

TEST_F(PipelineTest, SuccessReportsAllEventsInOrder) {
  Start();
  AddOneOfEach();
  GenerateRequest request = Request(5);
  request.set_request_id("ok-1");
  Outcome o = Generate(request);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ExpectOrdered(o);
  // accepted, encoded, 5 steps, decoded, result.
  ASSERT_EQ(o.events.size(), 9u);
  const dgrid::v1::Accepted& accepted = o.events[0].accepted();
  EXPECT_EQ(accepted.model(), "tiny");
  EXPECT_EQ(accepted.width(), 64);  // the model's defaults
  EXPECT_EQ(accepted.height(), 64);
  EXPECT_EQ(accepted.num_inference_steps(), 5);
  EXPECT_TRUE(o.events[1].has_encoded());
  for (int i = 0; i < 5; ++i) {
    const dgrid::v1::DenoiseStep& step = o.events[2 + i].step();
    EXPECT_EQ(step.total(), 5);
    EXPECT_GE(step.eta_ms(), 0.0);
  }
  EXPECT_EQ(o.events[6].step().eta_ms(), 0.0);  // nothing left after the last step
  EXPECT_TRUE(o.events[7].has_decoded());
  const dgrid::v1::GenerateResult& result = o.events[8].result();
  EXPECT_EQ(result.seed(), accepted.seed());
  EXPECT_EQ(result.image().width(), 64);
  EXPECT_EQ(result.image().data().size(), 64u * 64 * 3);
  EXPECT_GT(result.timings().total_ms(), 0.0);
  for (const auto& e : o.events) EXPECT_EQ(e.request_id(), "ok-1");

  // ListModels sees the complete set.
  grpc::ClientContext context;
  dgrid::v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).max_width(), 256);
}

TEST_F(PipelineTest, RejectsInvalidRequestNamingField) {
  Start();
  AddOneOfEach();
  GenerateRequest request = Request();
  request.set_width(100);
  Outcome o = Generate(request);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(o.status.error_message().rfind("width:", 0), 0u);
  EXPECT_TRUE(o.events.empty());
}

TEST_F(PipelineTest, DecoderUnavailableIsRetriedOnSecondReplica) {
  Start();
  encoder_ = Add("e1", dgrid::v1::STAGE_KIND_ENCODER);
  denoiser_ = Add("d1", dgrid::v1::STAGE_KIND_DENOISER);
  ScriptedStage* first = Add("c1", dgrid::v1::STAGE_KIND_DECODER);
  ScriptedStage* second = Add("c2", dgrid::v1::STAGE_KIND_DECODER);
  first->fail_unavailable = 1;
  Outcome o = Generate(Request());
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ExpectOrdered(o);
  EXPECT_EQ(first->calls, 1);   // chosen first (tie broken by name), failed
  EXPECT_EQ(second->calls, 1);  // the retry
  // The failed replica is out of rotation until its next good heartbeat.
  EXPECT_FALSE(server_->registry()->InRotation("c1"));
  dgrid::v1::HeartbeatRequest beat;
  beat.set_worker_id("c1");
  beat.set_serving(true);
  EXPECT_TRUE(server_->registry()->HeartbeatWorker(beat));
  EXPECT_TRUE(server_->registry()->InRotation("c1"));
}

TEST_F(PipelineTest, EncoderFailingTwiceEndsUnavailable) {
  Start();
  AddOneOfEach();
  Add("e2", dgrid::v1::STAGE_KIND_ENCODER)->fail_unavailable = 1;
  encoder_->fail_unavailable = 1;
  Outcome o = Generate(Request());
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ExpectOrdered(o);
}

TEST_F(PipelineTest, DenoiserRetriedOnlyBeforeFirstStep) {
  Start();
  AddOneOfEach();
  ScriptedStage* d2 = Add("d2", dgrid::v1::STAGE_KIND_DENOISER);
  denoiser_->fail_unavailable = 1;
  Outcome o = Generate(Request());
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(d2->calls, 1);
  EXPECT_EQ(o.steps(), 3);

  // d1 is out of rotation now; d2 fails after its first step: no retry, the request fails.
  d2->fail_after_first_step = true;
  o = Generate(Request());
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
  EXPECT_EQ(o.steps(), 1);
  EXPECT_EQ(d2->calls, 2);
  ExpectOrdered(o);
}

TEST_F(PipelineTest, AFullStageQueueIsBackPressureNotAFailure) {
  // Every stage refuses its first calls because its queue is full: the orchestrator holds the
  // request and places it again, on the same (only) replica, and the request succeeds. The
  // refusals are not tries: three of them do not use up the one retry.
  Start();
  AddOneOfEach();
  encoder_->fail_queue_full = 3;
  denoiser_->fail_queue_full = 3;
  decoder_->fail_queue_full = 3;
  Outcome o = Generate(Request());
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ExpectOrdered(o);
  EXPECT_EQ(o.steps(), 3);
  EXPECT_EQ(encoder_->calls, 4);
  EXPECT_EQ(denoiser_->calls, 4);
  EXPECT_EQ(decoder_->calls, 4);
  // A full queue is not a failure of the worker: it stays in rotation.
  EXPECT_TRUE(server_->registry()->InRotation("d1"));
}

TEST_F(PipelineTest, LostLatentsAreDenoisedAgain) {
  // The decoder could not pull the latents (their denoiser died, their lease ended): the
  // orchestrator denoises the request again and decodes the new latents. The client hears each
  // step once, and the decoder stays in rotation (it did nothing wrong).
  Start();
  AddOneOfEach();
  decoder_->fail_input_lost = 1;
  Outcome o = Generate(Request());
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ExpectOrdered(o);
  EXPECT_EQ(o.steps(), 3);
  EXPECT_EQ(denoiser_->calls, 2);
  EXPECT_EQ(decoder_->calls, 2);
  EXPECT_TRUE(server_->registry()->InRotation("c1"));
}

TEST_F(PipelineTest, LostEmbeddingsAreEncodedAgain) {
  // The denoiser could not pull the embeddings (their encoder died): the orchestrator encodes the
  // prompt again and denoises with the new embeddings.
  Start();
  AddOneOfEach();
  denoiser_->fail_input_lost = 1;
  Outcome o = Generate(Request());
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ExpectOrdered(o);
  EXPECT_EQ(o.steps(), 3);
  EXPECT_EQ(encoder_->calls, 2);
  EXPECT_EQ(denoiser_->calls, 2);
  EXPECT_EQ(decoder_->calls, 1);
  EXPECT_TRUE(server_->registry()->InRotation("d1"));
}

TEST_F(PipelineTest, LatentsLostEveryTimeEndInAnExplicitError) {
  Start();
  AddOneOfEach();
  decoder_->fail_input_lost = 1 << 30;
  Outcome o = Generate(Request());
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::ABORTED) << o.status.error_message();
  EXPECT_NE(o.status.error_message().find("decoder (request"), std::string::npos)
      << o.status.error_message();
  EXPECT_EQ(denoiser_->calls, 3);  // the first denoise and two more
  EXPECT_EQ(decoder_->calls, 3);
  ExpectOrdered(o);
}

TEST_F(PipelineTest, AFullQueueUntilTheDeadlineEndsInDeadlineExceeded) {
  Start();
  AddOneOfEach();
  denoiser_->fail_queue_full = 1 << 30;  // never has room
  Outcome o = Generate(Request(), absl::Seconds(2));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << o.status.error_message();
  EXPECT_GT(denoiser_->calls, 1);  // it was offered again while time was left
}

TEST_F(PipelineTest, OtherResourceExhaustedIsTheRequestsOwnFailure) {
  // RESOURCE_EXHAUSTED without the full-queue mark (e.g. out of memory) is not held and retried.
  Start();
  AddOneOfEach();
  denoiser_->fail_resource_exhausted = 1;
  Outcome o = Generate(Request());
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(o.status.error_message().find("scripted out of memory"), std::string::npos)
      << o.status.error_message();
  EXPECT_EQ(denoiser_->calls, 1);
  ExpectOrdered(o);
}

TEST_F(PipelineTest, CancelMidDenoiseCancelsTheStageCall) {
  Start();
  AddOneOfEach();
  denoiser_->hold_calls = 1;  // held after step 2: it ends only by being cancelled
  denoiser_->hold_after_step = 2;
  GenerateRequest request = Request(500);
  request.set_request_id("to-cancel");
  Outcome o = Generate(request, absl::Seconds(60), [&](const GenerateEvent& e, auto*) {
    if (e.has_step() && e.step().step() == 2) {
      grpc::ClientContext context;
      dgrid::v1::CancelRequest cancel;
      cancel.set_request_id("to-cancel");
      dgrid::v1::CancelResponse response;
      EXPECT_TRUE(stub_->Cancel(&context, cancel, &response).ok());
    }
  });
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED) << o.status.error_message();
  EXPECT_EQ(o.steps(), 2);
  ExpectOrdered(o);
  EXPECT_TRUE(Eventually([&] { return denoiser_->cancelled_calls == 1; }));
  // Finished: a second cancel finds nothing.
  grpc::ClientContext context;
  dgrid::v1::CancelRequest cancel;
  cancel.set_request_id("to-cancel");
  dgrid::v1::CancelResponse response;
  EXPECT_EQ(stub_->Cancel(&context, cancel, &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(PipelineTest, ClientDisconnectCancelsTheStageCall) {
  Start();
  AddOneOfEach();
  denoiser_->hold_calls = 1;
  Outcome o = Generate(Request(200), absl::Seconds(60), [](const GenerateEvent& e, auto* context) {
    if (e.has_step()) context->TryCancel();
  });
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return denoiser_->cancelled_calls == 1; }));
  EXPECT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 0; }));
  EXPECT_EQ(server_->registry()->Inflight("d1"), 0);
}

TEST_F(PipelineTest, DeadlineExceededMidDenoise) {
  Start();
  AddOneOfEach();
  // A deadline the first step meets on this machine, however fast: twenty times what a whole
  // one-step request takes here, and at least 600 ms.
  const absl::Time start = absl::Now();
  ASSERT_TRUE(Generate(Request(1)).status.ok());
  const absl::Duration deadline = std::max(absl::Milliseconds(600), 20 * (absl::Now() - start));
  // Both requests below are held after their first step: only their deadlines end them.
  denoiser_->hold_calls = 2;
  // GenerateRequest.deadline_ms, shorter than the call's own deadline.
  GenerateRequest request = Request(1000);
  request.set_deadline_ms(absl::ToInt64Milliseconds(deadline));
  Outcome o = Generate(request, absl::Seconds(60) + deadline);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << o.status.error_message();
  EXPECT_EQ(o.steps(), 1);
  ExpectOrdered(o);
  EXPECT_TRUE(Eventually([&] { return denoiser_->cancelled_calls == 1; }));
  // The gRPC deadline of the client's call is passed down as well.
  o = Generate(Request(1000), deadline);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(o.steps(), 1);
  EXPECT_TRUE(Eventually([&] { return denoiser_->cancelled_calls == 2; }));
  EXPECT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 0; }));
}

TEST_F(PipelineTest, FullQueueAnswersResourceExhaustedAtOnce) {
  Start(/*max_inflight=*/1, /*max_queued=*/1);
  AddOneOfEach();
  denoiser_->hold_calls = 1;  // the first request, held after its first step until cancelled
  GenerateRequest first = Request(1000);
  first.set_request_id("first");
  Outcome first_outcome;
  std::atomic<bool> first_denoising{false}, first_done{false};
  std::thread a([&] {
    first_outcome = Generate(first, absl::Seconds(60), [&](const GenerateEvent& e, auto*) {
      if (e.has_step()) first_denoising = true;
    });
    first_done = true;
  });
  ASSERT_TRUE(Eventually([&] { return first_denoising.load(); }));
  Outcome second_outcome;
  std::atomic<bool> second_queued{false};
  std::thread b([&] {
    second_outcome = Generate(Request(2), absl::Seconds(20), [&](const GenerateEvent& e, auto*) {
      if (e.has_queued()) second_queued = true;
    });
  });
  ASSERT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 2; }));
  Outcome third = Generate(Request(2));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_FALSE(first_done);  // answered at once, not after waiting for a slot
  EXPECT_TRUE(third.events.empty());
  // The second request reports its place in the queue once its thread runs (which may take a
  // while on a busy machine); only then is the slot freed, so the event is there to check.
  ASSERT_TRUE(Eventually([&] { return second_queued.load(); }));
  // Free the slot: the queued request runs to the end.
  grpc::ClientContext context;
  dgrid::v1::CancelRequest cancel;
  cancel.set_request_id("first");
  dgrid::v1::CancelResponse response;
  EXPECT_TRUE(stub_->Cancel(&context, cancel, &response).ok());
  a.join();
  b.join();
  EXPECT_EQ(first_outcome.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(second_outcome.status.ok()) << second_outcome.status.error_message();
  ExpectOrdered(second_outcome);
  ASSERT_GE(second_outcome.events.size(), 2u);
  ASSERT_TRUE(second_outcome.events[1].has_queued());
  EXPECT_EQ(second_outcome.events[1].queued().position(), 0);
}

TEST_F(PipelineTest, ManyConcurrentClientsAreAllAccountedFor) {
  Start(/*max_inflight=*/8, /*max_queued=*/8);
  AddOneOfEach();
  Add("e2", dgrid::v1::STAGE_KIND_ENCODER);
  Add("d2", dgrid::v1::STAGE_KIND_DENOISER);
  Add("c2", dgrid::v1::STAGE_KIND_DECODER);
  denoiser_->step_sleep_ms = 2;
  constexpr int kClients = 32, kRequests = 200;
  std::atomic<int> next{0}, ok{0}, exhausted{0}, other{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      for (int i = next++; i < kRequests; i = next++) {
        GenerateRequest r = Request(2);
        r.set_request_id(absl::StrCat("req-", i));
        Outcome o = Generate(r);
        if (o.status.ok()) {
          ExpectOrdered(o);
          if (!o.events.empty() && o.events.back().has_result())
            ok++;
          else
            other++;
        } else if (o.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          exhausted++;
        } else {
          ADD_FAILURE() << o.status.error_message();
          other++;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok + exhausted + other, kRequests);
  EXPECT_EQ(other, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(server_->pipeline()->ActiveCount(), 0);
  for (const char* id : {"e1", "e2", "d1", "d2", "c1", "c2"}) {
    EXPECT_EQ(server_->registry()->Inflight(id), 0) << id;
  }
  for (const auto& stage : stages_) EXPECT_LE(stage->max_concurrent, 4);  // max_inflight held
}

TEST_F(PipelineTest, NoServingStageIsUnavailable) {
  Start();
  AddOneOfEach();
  stages_[2]->Kill();  // the decoder dies
  Outcome o = Generate(Request());
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ExpectOrdered(o);
  EXPECT_EQ(o.events.back().has_step() || o.events.back().has_encoded(), true);
}

TEST_F(PipelineTest, DenoiserDyingMidRunEndsWithExplicitError) {
  Start();
  AddOneOfEach();
  denoiser_->hold_calls = 1;  // held after its first step until the denoiser dies
  std::atomic<bool> stepping{false};
  Outcome o;
  std::thread client([&] {
    o = Generate(Request(300), absl::Seconds(60),
                 [&](const GenerateEvent& e, auto*) { stepping = stepping || e.has_step(); });
  });
  ASSERT_TRUE(Eventually([&] { return stepping.load(); }));
  denoiser_->Kill();
  client.join();
  EXPECT_FALSE(o.status.ok());
  EXPECT_NE(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ExpectOrdered(o);
  EXPECT_EQ(server_->pipeline()->ActiveCount(), 0);
  // The model is still registered but no denoiser serves it: UNAVAILABLE, not NOT_FOUND.
  server_->registry()->MarkUnavailable("d1");
  GenerateRequest named = Request();
  named.set_model("tiny");
  EXPECT_EQ(Generate(named).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  named.set_model("never-registered");
  EXPECT_EQ(Generate(named).status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(PipelineTest, HigherPriorityIsAdmittedFirst) {
  Start(/*max_inflight=*/1, /*max_queued=*/4);
  AddOneOfEach();
  denoiser_->hold_calls = 1;  // the blocker, held after its first step until cancelled
  GenerateRequest blocker = Request(400);
  blocker.set_request_id("blocker");
  std::atomic<bool> blocking{false};
  std::thread a([&] {
    Generate(blocker, absl::Seconds(60),
             [&](const GenerateEvent& e, auto*) { blocking = blocking || e.has_step(); });
  });
  ASSERT_TRUE(Eventually([&] { return blocking.load(); }));
  auto run = [&](std::string id, dgrid::v1::Priority priority) {
    GenerateRequest r = Request(1);
    r.set_request_id(id);
    r.set_priority(priority);
    Outcome o = Generate(r);
    EXPECT_TRUE(o.status.ok()) << id << ": " << o.status.error_message();
  };
  std::thread low([&] { run("low", dgrid::v1::PRIORITY_LOW); });
  ASSERT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 2; }));
  std::thread high([&] { run("high", dgrid::v1::PRIORITY_HIGH); });
  ASSERT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 3; }));
  ASSERT_TRUE(server_->pipeline()->Cancel("blocker").ok());
  a.join();
  low.join();
  high.join();
  // With one slot, the denoiser sees the requests in admission order.
  EXPECT_EQ(denoiser_->denoise_order(), (std::vector<std::string>{"blocker", "high", "low"}));
}

TEST_F(PipelineTest, RegistryServiceOverGrpc) {
  Start();
  AddOneOfEach();
  auto registry = dgrid::v1::Registry::NewStub(channel_);
  dgrid::v1::HeartbeatRequest beat;
  beat.set_worker_id("ghost");
  beat.set_serving(true);
  dgrid::v1::HeartbeatResponse reply;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(registry->Heartbeat(&context, beat, &reply).ok());
    EXPECT_FALSE(reply.known());
  }
  beat.set_worker_id("c1");
  {
    grpc::ClientContext context;
    ASSERT_TRUE(registry->Heartbeat(&context, beat, &reply).ok());
    EXPECT_TRUE(reply.known());
  }
  dgrid::v1::DeregisterRequest bye;
  bye.set_worker_id("c1");
  dgrid::v1::DeregisterResponse bye_reply;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(registry->Deregister(&context, bye, &bye_reply).ok());
  }
  grpc::ClientContext context;
  dgrid::v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &models).ok());
  EXPECT_EQ(models.models_size(), 0);  // no decoder left
}

TEST_F(PipelineTest, DrainFinishesInflightAndRefusesNew) {
  Start();
  AddOneOfEach();
  denoiser_->hold_calls = 1;  // in flight (held after its first step) until the drain begins
  Outcome running;
  std::thread t([&] { running = Generate(Request(40), absl::Seconds(60)); });
  ASSERT_TRUE(Eventually([&] { return denoiser_->held == 1; }));
  server_->pipeline()->StopAccepting();
  Outcome refused = Generate(Request());
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  denoiser_->ReleaseHeld();
  EXPECT_TRUE(server_->Drain(absl::Seconds(60)));
  t.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message();
}

// One unary call of `method` with `body` as the request bytes, through a generic stub. Returns
// the status and the response bytes.
std::pair<grpc::Status, std::string> RawCall(const std::shared_ptr<grpc::Channel>& channel,
                                             const std::string& method, const std::string& body) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice slice(body);
  grpc::ByteBuffer request(&slice, 1), response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    status = s;
    done.Notify();
  });
  done.WaitForNotification();
  std::string bytes;
  if (status.ok()) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response.Dump(&slices).ok());
    for (const auto& s : slices) bytes += std::string(s.begin(), s.end());
  }
  return {status, bytes};
}

// grpc.health.v1.Health/Check for `service` ("": the whole server), by hand since Debian ships no
// generated health stubs. Returns the serialized HealthCheckResponse.
std::string HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                        const std::string& service = "") {
  // HealthCheckRequest{service: 1}: tag 0x0a, length, bytes (names here are < 128 bytes).
  const std::string body =
      service.empty() ? "" : std::string("\x0a") + static_cast<char>(service.size()) + service;
  auto [status, bytes] = RawCall(channel, "/grpc.health.v1.Health/Check", body);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return bytes;
}

// Bytes that are no protobuf message (a varint that never ends) get INVALID_ARGUMENT naming the
// method, not gRPC's UNIMPLEMENTED; a method that does not exist is still UNIMPLEMENTED.
TEST_F(PipelineTest, UnparsableRequestIsInvalidArgument) {
  Start();
  const std::string garbage("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11);
  for (const char* method : {"/dgrid.v1.Generation/ListModels", "/dgrid.v1.Generation/Cancel",
                             "/dgrid.v1.Registry/Register", "/dgrid.v1.Registry/Heartbeat"}) {
    auto [status, bytes] = RawCall(channel_, method, garbage);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(status.error_message().rfind(absl::StrCat("request: the bytes sent to ", method), 0),
              0u)
        << status.error_message();
  }
  EXPECT_EQ(RawCall(channel_, "/dgrid.v1.Generation/NoSuchMethod", "").first.error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // The same call with a valid (empty) message is answered.
  EXPECT_TRUE(RawCall(channel_, "/dgrid.v1.Generation/ListModels", "").first.ok());
}

// HealthCheckResponse{status: SERVING (1)} and {status: NOT_SERVING (2)}.
const std::string kServing("\x08\x01", 2);
const std::string kNotServing("\x08\x02", 2);

TEST_F(PipelineTest, HealthTurnsNotServingOnDrain) {
  Start();
  for (const char* service :
       {"", OrchestratorServer::kGenerationService, OrchestratorServer::kRegistryService}) {
    EXPECT_EQ(HealthCheck(channel_, service), kServing) << service;
  }
  EXPECT_TRUE(server_->Drain(absl::Seconds(1)));
  for (const char* service :
       {"", OrchestratorServer::kGenerationService, OrchestratorServer::kRegistryService}) {
    EXPECT_EQ(HealthCheck(channel_, service), kNotServing) << service;
  }
}

TEST_F(PipelineTest, OpenAiHttpGenerationsAndModels) {
  Start(16, 32, /*http_port=*/0);
  AddOneOfEach();
  httplib::Client client("127.0.0.1", server_->http_port());
  client.set_read_timeout(20, 0);
  auto models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  nlohmann::json m = nlohmann::json::parse(models->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "tiny");
  EXPECT_EQ(m["data"][0]["object"], "model");

  auto res = client.Post("/v1/images/generations",
                         R"({"prompt":"a cat","n":2,"size":"32x48","seed":7,)"
                         R"("num_inference_steps":2,"response_format":"b64_json"})",
                         "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  nlohmann::json body = nlohmann::json::parse(res->body);
  ASSERT_EQ(body["data"].size(), 2u);
  EXPECT_TRUE(body["created"].is_number_integer());
  EXPECT_EQ(body["data"][0]["seed"], 7);
  EXPECT_EQ(body["data"][1]["seed"], 8);
  EXPECT_FALSE(body["data"][0]["b64_json"].get<std::string>().empty());
  EXPECT_EQ(denoiser_->calls, 2);

  struct Bad {
    std::string body;
    int status;
    std::string param;
  };
  for (const Bad& bad :
       std::vector<Bad>{{R"({"prompt":"a","size":"100x64"})", 400, "width"},
                        {R"({"prompt":"a","size":"big"})", 400, "size"},
                        {R"({"prompt":"a","n":11})", 400, "n"},
                        {R"({"prompt":"a","response_format":"url"})", 400, "response_format"},
                        {R"({"n":1})", 400, "prompt"},
                        {R"({"prompt":"a","model":"nope"})", 404, "model"},
                        {R"({"prompt":"a","guidance_scale":"x"})", 400, "guidance_scale"},
                        {R"(not json)", 400, "body"}}) {
    auto r = client.Post("/v1/images/generations", bad.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, bad.status) << bad.body << " -> " << r->body;
    nlohmann::json err = nlohmann::json::parse(r->body);
    EXPECT_EQ(err["error"]["param"], bad.param) << r->body;
    EXPECT_TRUE(err["error"]["message"].is_string());
    EXPECT_TRUE(err["error"]["type"].is_string());
    EXPECT_TRUE(err["error"]["code"].is_string());
  }
}

// The video job table (POST /v1/videos' jobs) over a pipeline of scripted stages: a job follows its
// request to completed or failed, the table is bounded by running jobs, finished jobs expire,
// listing pages in creation order, and deleting cancels a running job.
TEST_F(PipelineTest, VideoJobsFollowTheirRequests) {
  Start();
  AddOneOfEach();
  // Raw frames from the scripted (image) model: the table does not care what the bytes are.
  GenerateRequest request = Request(2);
  VideoJobs jobs(server_->pipeline(), {.max_jobs = 2, .retention = absl::Hours(1)});
  auto finished = [&](const std::string& id) {
    return Eventually([&] {
      absl::StatusOr<VideoJobView> v = jobs.Get(id);
      return v.ok() && (v->status == "completed" || v->status == "failed");
    });
  };
  absl::StatusOr<VideoJobView> a = jobs.Create(request);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id.rfind("video_", 0), 0u);
  EXPECT_GT(a->created_at, 0);
  ASSERT_TRUE(finished(a->id));
  VideoJobView done = *jobs.Get(a->id);
  EXPECT_EQ(done.status, "completed");
  EXPECT_EQ(done.progress, 100);
  EXPECT_EQ(done.model, "tiny");
  EXPECT_EQ(done.size, "64x64");
  EXPECT_GE(done.completed_at, done.created_at);
  EXPECT_EQ(done.expires_at, done.completed_at + 3600);
  absl::StatusOr<std::string> content = jobs.Content(a->id);
  ASSERT_TRUE(content.ok()) << content.status();
  EXPECT_EQ(content->size(), 64u * 64 * 3);

  absl::StatusOr<VideoJobView> b = jobs.Create(request);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(finished(b->id));
  EXPECT_EQ(jobs.Get(b->id)->status, "completed");

  // Listing: newest first by default, pages with `after`.
  bool more = false;
  absl::StatusOr<std::vector<VideoJobView>> page = jobs.List(false, "", 1, &more);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id, b->id);
  EXPECT_TRUE(more);
  page = jobs.List(false, b->id, 10, &more);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id, a->id);
  EXPECT_FALSE(more);
  page = jobs.List(true, "", 10, &more);
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].id, a->id);
  EXPECT_EQ(jobs.List(true, "video_none", 10, &more).status().code(), absl::StatusCode::kNotFound);
  // Refused requests leave no job.
  GenerateRequest bad = request;
  bad.set_width(100);
  EXPECT_EQ(jobs.Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
  page = jobs.List(true, "", 10, &more);
  EXPECT_EQ(page->size(), 2u);

  // The table holds two: finished jobs make room (oldest first); two running jobs fill it.
  denoiser_->step_sleep_ms = 60000;  // both stay running until they are deleted
  absl::StatusOr<VideoJobView> c = jobs.Create(request);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<VideoJobView> d = jobs.Create(request);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(jobs.Get(a->id).status().code(), absl::StatusCode::kNotFound);  // made room
  EXPECT_EQ(jobs.Get(b->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(jobs.Create(request).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(jobs.Content(c->id).status().code(), absl::StatusCode::kFailedPrecondition);
  // Deleting a running job cancels its request and frees its place.
  ASSERT_TRUE(jobs.Delete(c->id).ok());
  EXPECT_EQ(jobs.Get(c->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(jobs.Delete(c->id).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 1; }));
  ASSERT_TRUE(jobs.Delete(d->id).ok());
  EXPECT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 0; }));
}

// A model whose last decoder is gone is listed as unavailable and refused with UNAVAILABLE naming
// the model (not NOT_FOUND: it is this cluster's model, waiting for a stage to come back).
TEST_F(PipelineTest, ModelMissingAStageIsUnavailableNotUnknown) {
  Start();
  AddOneOfEach();
  ASSERT_TRUE(Generate(Request(1)).status.ok());
  decoder_->Kill();
  // The call that finds the decoder dead fails and takes it out of rotation.
  EXPECT_FALSE(Generate(Request(1)).status.ok());
  grpc::ClientContext context;
  dgrid::v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "tiny");
  EXPECT_TRUE(models.models(0).unavailable());
  Outcome o = Generate(Request(1));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
  EXPECT_EQ(o.status.error_message().rfind("model: 'tiny'", 0), 0u) << o.status.error_message();
  // Health says so too (the whole server and Generation), while the registry still serves.
  EXPECT_TRUE(Eventually([&] { return HealthCheck(channel_) == kNotServing; }));
  EXPECT_EQ(HealthCheck(channel_, OrchestratorServer::kGenerationService), kNotServing);
  EXPECT_EQ(HealthCheck(channel_, OrchestratorServer::kRegistryService), kServing);
  // A decoder registering again makes it available.
  decoder_ = Add("c2", dgrid::v1::STAGE_KIND_DECODER);
  EXPECT_TRUE(Generate(Request(1)).status.ok());
  EXPECT_TRUE(Eventually([&] { return HealthCheck(channel_) == kServing; }));
  EXPECT_EQ(HealthCheck(channel_, OrchestratorServer::kGenerationService), kServing);
}

// n images on HTTP: those the orchestrator's admission limit refuses wait inside the call for the
// call's own earlier images to finish (no 429 for a call that can run); one that fails for good
// leaves the others' images in the reply, and is named in "errors".
TEST_F(PipelineTest, HttpManyImagesQueueInsideTheCallAndFailAlone) {
  Start(/*max_inflight=*/1, /*max_queued=*/0, /*http_port=*/0);
  AddOneOfEach();
  httplib::Client client("127.0.0.1", server_->http_port());
  client.set_read_timeout(30, 0);
  const std::string body = R"({"prompt":"a cat","n":3,"size":"32x32","seed":7,)"
                           R"("num_inference_steps":2,"response_format":"b64_json"})";
  auto res = client.Post("/v1/images/generations", body, "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  nlohmann::json reply = nlohmann::json::parse(res->body);
  ASSERT_EQ(reply["data"].size(), 3u);
  EXPECT_FALSE(reply.contains("errors"));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(reply["data"][i]["seed"], 7 + i);
  EXPECT_EQ(denoiser_->max_concurrent, 1);  // one at a time, as admitted

  // One denoise call fails with an unmarked RESOURCE_EXHAUSTED (say, out of memory): not retried.
  denoiser_->fail_resource_exhausted = 1;
  res = client.Post("/v1/images/generations", body, "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  reply = nlohmann::json::parse(res->body);
  ASSERT_EQ(reply["data"].size(), 2u) << res->body;
  ASSERT_EQ(reply["errors"].size(), 1u) << res->body;
  const nlohmann::json& error = reply["errors"][0];
  EXPECT_EQ(error["code"], "resource_exhausted");
  EXPECT_EQ(error["seed"], 7 + error["index"].get<int>());
  std::set<int> seeds = {error["seed"].get<int>()};
  for (const auto& d : reply["data"]) seeds.insert(d["seed"].get<int>());
  EXPECT_EQ(seeds, (std::set<int>{7, 8, 9}));

  // Every image failing is still an error reply.
  denoiser_->fail_resource_exhausted = 3;
  res = client.Post("/v1/images/generations", body, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429) << res->body;
}

// An orchestrator that has just started (or restarted) knows the model it serves before its
// stages register: UNAVAILABLE (try again), not NOT_FOUND, and health NOT_SERVING until they have.
class ConfiguredModelTest : public PipelineTest {};

TEST_F(ConfiguredModelTest, UnavailableUntilItsStagesRegister) {
  OrchestratorOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.http_port = -1;
  options.heartbeat_interval = absl::Seconds(30);
  options.pipeline.default_model = "tiny";
  options.models = {"other"};
  server_ = std::make_unique<OrchestratorServer>(options);
  ASSERT_TRUE(server_->Start().ok());
  channel_ = grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials());
  stub_ = dgrid::v1::Generation::NewStub(channel_);
  for (const char* model : {"", "tiny", "other"}) {
    GenerateRequest r = Request(1);
    r.set_model(model);
    Outcome o = Generate(r);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << model << ": " << o.status.error_message();
  }
  EXPECT_EQ(HealthCheck(channel_), kNotServing);  // from the start, not after a first check
  AddOneOfEach();
  EXPECT_TRUE(Generate(Request(1)).status.ok());
  // "other" has no stages yet: listed as unavailable, and health stays NOT_SERVING for it.
  grpc::ClientContext context;
  dgrid::v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 2);
  for (const auto& m : models.models()) EXPECT_EQ(m.unavailable(), m.name() == "other");
  EXPECT_EQ(HealthCheck(channel_), kNotServing);
}

TEST_F(PipelineTest, FailedVideoJobSaysWhy) {
  Start();
  AddOneOfEach();
  denoiser_->fail_after_first_step = true;
  VideoJobs jobs(server_->pipeline());
  absl::StatusOr<VideoJobView> a = jobs.Create(Request(2));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(Eventually([&] { return jobs.Get(a->id)->status == "failed"; }));
  VideoJobView failed = *jobs.Get(a->id);
  EXPECT_EQ(failed.error_code, "unavailable");
  EXPECT_NE(failed.error_message.find("scripted failure"), std::string::npos);
  EXPECT_GT(failed.completed_at, 0);
  EXPECT_EQ(jobs.Content(a->id).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(PipelineTest, FinishedVideoJobsExpire) {
  Start();
  AddOneOfEach();
  VideoJobs jobs(server_->pipeline(), {.max_jobs = 4, .retention = absl::ZeroDuration()});
  absl::StatusOr<VideoJobView> a = jobs.Create(Request(1));
  ASSERT_TRUE(a.ok()) << a.status();
  // Kept while it runs, gone as soon as it has finished.
  EXPECT_TRUE(Eventually([&] { return !jobs.Get(a->id).ok(); }));
  EXPECT_EQ(jobs.Get(a->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Eventually([&] { return server_->pipeline()->ActiveCount() == 0; }));
}

// Step caching (#21 item 2): the setting reaches the denoiser stage as sent, over gRPC and HTTP
// (object and string forms), and the stage's skipped-step count comes back in the result.
TEST_F(PipelineTest, StepCacheReachesTheDenoiserAndItsCountComesBack) {
  Start(16, 32, /*http_port=*/0);
  AddOneOfEach();
  denoiser_->skipped_steps = 2;
  GenerateRequest request = Request(6);
  dgrid::v1::StepCache* cache = request.mutable_cache();
  cache->set_method("fbcache");
  cache->set_threshold(0.12f);
  cache->set_warmup_steps(1);
  cache->set_max_skip(3);
  Outcome o = Generate(request);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  ASSERT_TRUE(o.events.back().has_result());
  EXPECT_EQ(o.events.back().result().skipped_steps(), 2);
  dgrid::v1::StepCache sent = denoiser_->last_denoise_cache();
  EXPECT_EQ(sent.method(), "fbcache");
  EXPECT_FLOAT_EQ(sent.threshold(), 0.12f);
  EXPECT_EQ(sent.warmup_steps(), 1);
  EXPECT_EQ(sent.max_skip(), 3);

  // Without a cache setting the stage gets none.
  o = Generate(Request(2));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_FALSE(denoiser_->last_denoise_cache().has_threshold());
  EXPECT_EQ(denoiser_->last_denoise_cache().method(), "");

  // A bad setting never reaches a stage.
  const int calls = denoiser_->calls;
  cache->set_threshold(-1);
  o = Generate(request);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(o.status.error_message().rfind("cache.threshold:", 0), 0u) << o.status.error_message();
  EXPECT_EQ(denoiser_->calls, calls);

  httplib::Client client("127.0.0.1", server_->http_port());
  client.set_read_timeout(20, 0);
  auto res = client.Post("/v1/images/generations",
                         R"({"prompt":"a cat","num_inference_steps":4,)"
                         R"("cache":{"method":"teacache","threshold":0.3,"max_skip":2}})",
                         "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(nlohmann::json::parse(res->body)["data"][0]["skipped_steps"], 2);
  sent = denoiser_->last_denoise_cache();
  EXPECT_EQ(sent.method(), "teacache");
  EXPECT_FLOAT_EQ(sent.threshold(), 0.3f);
  EXPECT_EQ(sent.warmup_steps(), 0);
  EXPECT_EQ(sent.max_skip(), 2);

  res = client.Post("/v1/images/generations",
                    R"({"prompt":"a cat","num_inference_steps":4,"cache":"fbcache:0.05:2"})",
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  sent = denoiser_->last_denoise_cache();
  EXPECT_EQ(sent.method(), "fbcache");
  EXPECT_FLOAT_EQ(sent.threshold(), 0.05f);
  EXPECT_EQ(sent.warmup_steps(), 2);

  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"prompt":"a","cache":{"method":"magic"}})", "cache.method"},
           {R"({"prompt":"a","cache":{"method":"fbcache","threshold":-1}})", "cache.threshold"},
           {R"({"prompt":"a","cache":{"method":"fbcache","threshold":"x"}})", "cache.threshold"},
           {R"({"prompt":"a","cache":{"method":"fbcache","max_skip":-1}})", "cache.max_skip"},
           {R"({"prompt":"a","cache":{"method":"fbcache","warmup_steps":1.5}})",
            "cache.warmup_steps"},
           {R"({"prompt":"a","cache":{"threshold":0.1}})", "cache.method"},
           {R"({"prompt":"a","cache":{"method":"fbcache","speed":3}})", "cache.speed"},
           {R"({"prompt":"a","cache":7})", "cache"}}) {
    auto r = client.Post("/v1/images/generations", body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body << " -> " << r->body;
    EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["param"], param) << r->body;
  }
}

TEST(HttpStatusTest, MapsGrpcCodes) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  nlohmann::json e = nlohmann::json::parse(HttpErrorBody(absl::ResourceExhaustedError("full")));
  EXPECT_EQ(e["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(e["error"]["param"].is_null());
}

}  // namespace
}  // namespace dgrid::orchestrator
