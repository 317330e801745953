// The pieces of HTTP streaming and disconnect detection that need no cluster: the streaming fields'
// parsing, the event queue an HTTP thread waits on, and hang-up detection on a real loopback TCP
// connection (orchestrator/api/http_streaming.h).
#include "orchestrator/api/http_streaming.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <thread>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "dgrid/v1/generation.grpc.pb.h"
#include "dgrid/v1/registry.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/http_request_parsing.h"
#include "orchestrator/api/orchestrator_server.h"

namespace dgrid::orchestrator {
namespace {

TEST(ImageStreamFieldsTest, ReadsStreamAndPartialImages) {
  bool stream = true;
  int partial = 7;
  ASSERT_TRUE(ParseImageStreamFields(R"({"prompt": "x"})", &stream, &partial).ok());
  EXPECT_FALSE(stream);
  EXPECT_EQ(partial, 0);
  ASSERT_TRUE(
      ParseImageStreamFields(R"({"stream": true, "partial_images": 3})", &stream, &partial).ok());
  EXPECT_TRUE(stream);
  EXPECT_EQ(partial, 3);
}

TEST(ImageStreamFieldsTest, RefusesBadValuesNamingTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"partial_images": 4})", "partial_images"},
      {R"({"partial_images": -1})", "partial_images"},
      {R"({"partial_images": "1"})", "partial_images"},
      {R"({"partial_images": 1.5})", "partial_images"},
      {R"({"stream": "true"})", "stream"},
      {R"({"stream": 1})", "stream"},
      {R"([1])", "body"},
  };
  for (const auto& [body, field] : cases) {
    bool stream = false;
    int partial = 0;
    const absl::Status s = ParseImageStreamFields(body, &stream, &partial);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << body;
    EXPECT_EQ(s.message().substr(0, s.message().find(':')), field) << body << ": " << s;
  }
}

TEST(FormFieldsTest, StreamAndCountsFromAForm) {
  EXPECT_EQ(FormFieldsAsJson({{"stream", "true"}, {"partial_images", "2"}, {"n", "1"}}),
            R"({"n":1,"partial_images":2,"stream":true})");
  EXPECT_EQ(FormFieldsAsJson({{"stream", "yes"}}), R"({"stream":"yes"})");
}

// A loopback TCP connection: the server side's fd and the client side's.
struct Connection {
  int server = -1;
  int client = -1;
  httplib::Request request;  // as cpp-httplib would fill in the addresses
  ~Connection() {
    if (server >= 0) close(server);
    if (client >= 0) close(client);
  }
};

void Connect(Connection* c) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length), 0);
  c->client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(c->client, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  c->server = accept(listener, nullptr, nullptr);
  close(listener);
  ASSERT_GE(c->server, 0);
  sockaddr_in local = {}, peer = {};
  length = sizeof(local);
  ASSERT_EQ(getsockname(c->server, reinterpret_cast<sockaddr*>(&local), &length), 0);
  length = sizeof(peer);
  ASSERT_EQ(getpeername(c->server, reinterpret_cast<sockaddr*>(&peer), &length), 0);
  c->request.local_addr = "127.0.0.1";
  c->request.local_port = ntohs(local.sin_port);
  c->request.remote_addr = "127.0.0.1";
  c->request.remote_port = ntohs(peer.sin_port);
}

TEST(ClientConnectionTest, FindsTheRequestsSocketAndSeesTheHangUp) {
  Connection c;
  ASSERT_NO_FATAL_FAILURE(Connect(&c));
  const ClientConnection connection = ClientConnection::Of(c.request);
  ASSERT_TRUE(connection.watched());
  EXPECT_EQ(connection.fd(), c.server);  // not the client's end, whose addresses are swapped
  EXPECT_FALSE(connection.HungUp());
  // Bytes from the client (a pipelined request) are no hang-up.
  ASSERT_EQ(write(c.client, "GET / HTTP/1.1\r\n", 16), 16);
  EXPECT_FALSE(connection.HungUp());
  close(c.client);
  c.client = -1;
  // The FIN has arrived once poll says so; poll with a bound rather than sleeping.
  pollfd p = {c.server, POLLRDHUP, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  EXPECT_TRUE(connection.HungUp());
}

TEST(ClientConnectionTest, UnknownAddressesAreUnwatched) {
  httplib::Request request;
  request.local_addr = "127.0.0.1";
  request.local_port = 1;
  request.remote_addr = "127.0.0.1";
  request.remote_port = 2;
  EXPECT_FALSE(ClientConnection::Of(request).watched());
  EXPECT_FALSE(ClientConnection().HungUp());
}

TEST(QueuedObserverTest, EventsThenDoneInOrder) {
  QueuedObserver observer;
  dgrid::v1::GenerateEvent event;
  event.mutable_step()->set_step(1);
  observer.OnEvent(event);
  event.mutable_step()->set_step(2);
  observer.OnEvent(event);
  observer.OnDone(absl::CancelledError("x"));
  dgrid::v1::GenerateEvent out;
  absl::Status status;
  ASSERT_EQ(observer.Wait(ClientConnection(), &out, &status), QueuedObserver::Next::kEvent);
  EXPECT_EQ(out.step().step(), 1);
  ASSERT_EQ(observer.Wait(ClientConnection(), &out, &status), QueuedObserver::Next::kEvent);
  EXPECT_EQ(out.step().step(), 2);
  ASSERT_EQ(observer.Wait(ClientConnection(), &out, &status), QueuedObserver::Next::kDone);
  EXPECT_TRUE(absl::IsCancelled(status));
}

TEST(QueuedObserverTest, WakesForAnEventFromAnotherThread) {
  QueuedObserver observer;
  std::thread pipeline([&] {
    dgrid::v1::GenerateEvent result;
    result.mutable_result()->set_seed(9);
    observer.OnEvent(result);
    observer.OnDone(absl::OkStatus());
  });
  dgrid::v1::GenerateResult result;
  bool hung_up = true;
  EXPECT_TRUE(observer.WaitForResult(ClientConnection(), &result, &hung_up).ok());
  EXPECT_FALSE(hung_up);
  EXPECT_EQ(result.seed(), 9u);
  pipeline.join();
}

TEST(QueuedObserverTest, AClientThatHangsUpEndsTheWait) {
  Connection c;
  ASSERT_NO_FATAL_FAILURE(Connect(&c));
  const ClientConnection connection = ClientConnection::Of(c.request);
  ASSERT_TRUE(connection.watched());
  QueuedObserver observer;  // the request runs on, sending nothing
  std::thread client([&] {
    close(c.client);
    c.client = -1;
  });
  dgrid::v1::GenerateResult result;
  bool hung_up = false;
  const absl::Status s = observer.WaitForResult(connection, &result, &hung_up);
  client.join();
  EXPECT_TRUE(hung_up);
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
}

// Previews and streaming are an image model's: a video model refuses both, before any stage is
// called (the workers registered here are never reached).
TEST(PreviewRefusalTest, VideoModelsRefusePreviewsAndStreaming) {
  OrchestratorOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.http_port = 0;
  options.heartbeat_interval = absl::Seconds(30);
  OrchestratorServer server(options);
  ASSERT_TRUE(server.Start().ok());
  auto channel = grpc::CreateChannel(server.grpc_address(), grpc::InsecureChannelCredentials());
  auto registry = dgrid::v1::Registry::NewStub(channel);
  int port = 1;
  for (dgrid::v1::StageKind stage : {dgrid::v1::STAGE_KIND_ENCODER, dgrid::v1::STAGE_KIND_DENOISER,
                                     dgrid::v1::STAGE_KIND_DECODER}) {
    dgrid::v1::RegisterRequest request;
    dgrid::v1::WorkerInfo* info = request.mutable_worker();
    info->set_worker_id(absl::StrCat("w", port));
    info->set_stage(stage);
    info->set_address(absl::StrCat("127.0.0.1:", port++));
    info->set_max_inflight(1);
    info->add_models("clip");
    if (stage == dgrid::v1::STAGE_KIND_DENOISER) {
      dgrid::v1::ModelInfo* m = info->add_model_infos();
      m->set_name("clip");
      m->set_pipeline("WanPipeline");
      m->set_family("wan");
      m->set_default_width(64);
      m->set_default_height(64);
      m->set_default_steps(4);
      m->set_max_width(256);
      m->set_max_height(256);
      m->set_max_num_frames(81);
      m->set_default_num_frames(81);
      m->set_frame_step(4);
      m->set_default_fps(16);
    }
    grpc::ClientContext context;
    dgrid::v1::RegisterResponse response;
    ASSERT_TRUE(registry->Register(&context, request, &response).ok());
  }
  httplib::Client http("127.0.0.1", server.http_port());
  auto res = http.Post("/v1/images/generations",
                       R"({"prompt":"a","model":"clip","stream":true,"partial_images":1})",
                       "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_EQ(nlohmann::json::parse(res->body)["error"]["param"], "stream") << res->body;

  auto stub = dgrid::v1::Generation::NewStub(channel);
  dgrid::v1::GenerateRequest request;
  request.set_prompt("a");
  request.set_model("clip");
  request.set_preview_images(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto reader = stub->Generate(&context, request);
  dgrid::v1::GenerateEvent event;
  EXPECT_FALSE(reader->Read(&event));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("preview_images:", 0), 0u) << status.error_message();
  server.Shutdown();
}

}  // namespace
}  // namespace dgrid::orchestrator
