#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/service_runtime.h"

namespace dgrid::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(Metrics, CounterExposition) {
  Registry registry;
  Counter* c = registry.GetCounter("dgrid_test_total", "Things done", {{"stage", "encoder"}});
  c->Increment();
  c->Increment(2);
  c->Increment(-5);  // Ignored: counters only go up.
  EXPECT_EQ(registry.GetCounter("dgrid_test_total", "", {{"stage", "encoder"}}), c);
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("# HELP dgrid_test_total Things done\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE dgrid_test_total counter\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_test_total{stage=\"encoder\"} 3\n"));
}

TEST(Metrics, LabelsAreSortedAndEscaped) {
  Registry registry;
  registry.GetGauge("dgrid_g", "g", {{"z", "a\"b\\c\nd"}, {"a", "1"}})->Set(0.5);
  EXPECT_THAT(registry.Exposition(), HasSubstr("dgrid_g{a=\"1\",z=\"a\\\"b\\\\c\\nd\"} 0.5\n"));
}

TEST(Metrics, HistogramBucketsAreCumulativeAndInclusive) {
  Registry registry;
  Histogram* h = registry.GetHistogram("dgrid_h_seconds", "h", {}, {0.1, 1});
  h->Observe(0.1);  // "le" is inclusive: counts in the 0.1 bucket.
  h->Observe(0.5);
  h->Observe(7);
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("# TYPE dgrid_h_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_h_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_h_seconds_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_h_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_h_seconds_sum 7.6\n"));
  EXPECT_THAT(text, HasSubstr("dgrid_h_seconds_count 3\n"));
  const Histogram::Snapshot s = h->Read();
  EXPECT_EQ(s.count, 3u);
  EXPECT_DOUBLE_EQ(s.sum, 7.6);
}

TEST(Metrics, OneFamilyOneType) {
  Registry registry;
  Counter* c = registry.GetCounter("dgrid_x", "x");
  Gauge* g = registry.GetGauge("dgrid_x", "x");  // Wrong type: a detached dummy.
  g->Set(42);
  c->Increment();
  EXPECT_THAT(registry.Exposition(), HasSubstr("dgrid_x 1\n"));
  EXPECT_THAT(registry.Exposition(), Not(HasSubstr("42")));
}

TEST(Metrics, CallbackGaugeReadsAtScrapeAndGoesAway) {
  Registry registry;
  int depth = 3;
  {
    ScopedCallbackGauge gauge(registry, "dgrid_queue_depth", "q", {{"stage", "decoder"}},
                              [&depth] { return depth; });
    depth = 5;
    EXPECT_THAT(registry.Exposition(), HasSubstr("dgrid_queue_depth{stage=\"decoder\"} 5\n"));
  }
  EXPECT_THAT(registry.Exposition(), Not(HasSubstr("stage=\"decoder\"")));
}

// A plain HTTP/1.0 GET, to stay independent of the server's HTTP library.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string out;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, n);
  close(fd);
  return out;
}

TEST(MetricsServer, ServesTheRegistry) {
  Registry registry;
  registry.GetCounter("dgrid_served_total", "s")->Increment(7);
  auto server = MetricsServer::Start("127.0.0.1", 0, &registry);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string reply = HttpGet((*server)->port(), "/metrics");
  EXPECT_THAT(reply, HasSubstr("200 OK"));
  EXPECT_THAT(reply, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(reply, HasSubstr("dgrid_served_total 7\n"));
  EXPECT_THAT(HttpGet((*server)->port(), "/other"), HasSubstr("404"));
  (*server)->Stop();
}

TEST(TlsOptions, FlagsAreCheckedTogether) {
  auto parse = [](std::vector<std::string> args) {
    Config config(TlsSettings());
    args.insert(args.begin(), "prog");
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    EXPECT_TRUE(config.ParseArgs(static_cast<int>(argv.size()), argv.data()).ok());
    return ReadTlsOptions(config);
  };
  EXPECT_FALSE(parse({"--tls-cert=a.pem"}).ok());  // No key.
  EXPECT_FALSE(parse({"--tls-cert=a", "--tls-key=b", "--tls-client-auth=require"}).ok());  // No CA.
  EXPECT_FALSE(parse({"--tls-client-auth=sometimes"}).ok());
  absl::StatusOr<TlsOptions> plain = parse({});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->server_tls());
  absl::StatusOr<TlsOptions> mutual =
      parse({"--tls-cert=a", "--tls-key=b", "--tls-ca=c", "--tls-client-auth=require"});
  ASSERT_TRUE(mutual.ok()) << mutual.status();
  EXPECT_EQ(mutual->client_auth, TlsOptions::ClientAuth::kRequire);
  // Files that do not exist: NOT_FOUND naming the flag, not a crash inside gRPC.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(*mutual);
  EXPECT_EQ(credentials.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(credentials.status().message()), HasSubstr("tls_cert"));
}

}  // namespace
}  // namespace dgrid::metrics
