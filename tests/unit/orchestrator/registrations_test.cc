// A stage registering with several orchestrators (--orchestrator a,b or a name resolving to many):
// the list is parsed and resolved, and every orchestrator of it gets the worker.
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/service_runtime.h"
#include "orchestrator/api/orchestrator_server.h"
#include "tests/unit/orchestrator/scripted_stages.h"

namespace dgrid::orchestrator {
namespace {

TEST(ResolveOrchestratorsTest, ListsLiteralsAndResolvesNames) {
  absl::StatusOr<std::vector<OrchestratorTarget>> t =
      ResolveOrchestrators("127.0.0.1:50050, [::1]:50051,127.0.0.1:50050", "--orchestrator");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);  // the repeated entry once
  EXPECT_EQ((*t)[0].address, "127.0.0.1:50050");
  EXPECT_EQ((*t)[0].tls_name, "");
  EXPECT_EQ((*t)[1].address, "[::1]:50051");

  // A name stands for its addresses (IPv4 when it has any) and is kept for TLS name checks.
  t = ResolveOrchestrators("localhost:7000", "--orchestrator");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_FALSE(t->empty());
  for (const OrchestratorTarget& target : *t) {
    EXPECT_EQ(target.tls_name, "localhost");
    EXPECT_TRUE(absl::EndsWith(target.address, ":7000")) << target.address;
  }
  EXPECT_EQ((*t)[0].address, "127.0.0.1:7000");

  // A name that does not resolve is kept as given (gRPC resolves it when it can).
  t = ResolveOrchestrators("no-such-host.invalid:50050", "--orchestrator");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 1u);
  EXPECT_EQ((*t)[0].address, "no-such-host.invalid:50050");
}

TEST(ResolveOrchestratorsTest, RefusesWhatIsNotHostPort) {
  for (const char* bad : {"", " , ", "orchestrator", "host:", ":50050", "host:0", "host:70000",
                          "host:port", "a:b:c", "[::1]"}) {
    absl::StatusOr<std::vector<OrchestratorTarget>> t = ResolveOrchestrators(bad, "--orchestrator");
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(t.status().message().rfind("--orchestrator: ", 0), 0u) << t.status();
  }
}

bool Eventually(const std::function<bool()>& predicate) {
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return predicate();
}

std::unique_ptr<OrchestratorServer> StartOrchestrator() {
  OrchestratorOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.http_port = -1;
  options.heartbeat_interval = absl::Milliseconds(100);
  auto server = std::make_unique<OrchestratorServer>(options);
  EXPECT_TRUE(server->Start().ok());
  return server;
}

// One worker, two orchestrators: both place on it; one going away leaves the other's registration
// alone, and Stop deregisters from the one still there.
TEST(OrchestratorRegistrationsTest, RegistersWithEveryOrchestrator) {
  std::unique_ptr<OrchestratorServer> a = StartOrchestrator();
  std::unique_ptr<OrchestratorServer> b = StartOrchestrator();
  dgrid::testing::ScriptedStage stage("d1", dgrid::v1::STAGE_KIND_DENOISER, {"tiny"});
  OrchestratorRegistrations registrations(
      absl::StrCat(a->grpc_address(), ",", b->grpc_address()), stage.worker_info(), nullptr,
      grpc::InsecureChannelCredentials(), absl::Milliseconds(100));
  ASSERT_TRUE(registrations.Start().ok());
  EXPECT_EQ(registrations.addresses(),
            (std::vector<std::string>{a->grpc_address(), b->grpc_address()}));
  // Both orchestrators know the worker once they have handled its Register; the worker counts a
  // registration once the answer is back, which may come a moment later: wait for both.
  ASSERT_TRUE(Eventually([&] {
    return a->registry()->InRotation("d1") && b->registry()->InRotation("d1") &&
           registrations.registered() == 2;
  }));

  a->Shutdown();
  ASSERT_TRUE(Eventually([&] { return registrations.registered() == 1; }));
  // Still registered with b (KnowsModel, not InRotation: a heartbeat late on a loaded machine
  // takes a worker out of rotation for a moment, and that is not what is checked here).
  EXPECT_TRUE(b->registry()->KnowsModel("tiny"));

  registrations.Stop();
  EXPECT_FALSE(b->registry()->KnowsModel("tiny"));
  EXPECT_TRUE(registrations.addresses().empty());
}

TEST(OrchestratorRegistrationsTest, MalformedListStartsNothing) {
  dgrid::testing::ScriptedStage stage("d1", dgrid::v1::STAGE_KIND_DENOISER, {"tiny"});
  OrchestratorRegistrations registrations("127.0.0.1:1,oops", stage.worker_info(), nullptr,
                                          grpc::InsecureChannelCredentials(), absl::Seconds(1));
  EXPECT_EQ(registrations.Start().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(registrations.addresses().empty());
}

}  // namespace
}  // namespace dgrid::orchestrator
