// Communicator backends across real processes: each case starts N parallel_comm_worker processes
// (comm_worker.cc) on loopback and checks how each ended. Gloo runs everywhere; the NCCL cases
// need as many CUDA devices as ranks and are skipped otherwise.
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "parallel/communicator.h"
#include "parallel/tcp_store.h"

extern char** environ;

namespace dgrid {
namespace {

// A crash of this binary prints its stack (the GPU host, where it crashed before, has no
// debugger).
const bool kCrashesPrintTheirStack = [] {
  absl::InitializeSymbolizer("/proc/self/exe");
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
  return true;
}();

// A port that was free a moment ago.
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

struct Outcome {
  bool exited = false;
  int exit_code = -1;
  int signal = 0;
};

// Runs `size` workers of `scenario` and waits for all of them, killing the lot after `wall`.
std::vector<Outcome> RunGroup(const std::string& scenario, const std::string& backend, int size,
                              int timeout_ms, absl::Duration wall) {
  const char* worker = std::getenv("DGRID_COMM_WORKER");
  EXPECT_NE(worker, nullptr) << "DGRID_COMM_WORKER (the worker binary) is not set";
  if (worker == nullptr) return {};
  std::string address = absl::StrCat("127.0.0.1:", FreePort());
  std::vector<pid_t> pids(size, -1);
  for (int rank = 0; rank < size; ++rank) {
    std::vector<std::string> args = {worker,
                                     scenario,
                                     backend,
                                     std::to_string(rank),
                                     std::to_string(size),
                                     address,
                                     std::to_string(timeout_ms)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(::posix_spawn(&pids[rank], worker, nullptr, nullptr, argv.data(), environ), 0);
  }
  std::vector<Outcome> outcomes(size);
  absl::Time deadline = absl::Now() + wall;
  int left = size;
  while (left > 0) {
    for (int rank = 0; rank < size; ++rank) {
      if (pids[rank] <= 0) continue;
      int status = 0;
      pid_t done = ::waitpid(pids[rank], &status, WNOHANG);
      if (done != pids[rank]) continue;
      outcomes[rank].exited = WIFEXITED(status);
      outcomes[rank].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      outcomes[rank].signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      pids[rank] = -1;
      --left;
    }
    if (left > 0 && absl::Now() > deadline) {
      ADD_FAILURE() << scenario << " with " << size << " ranks still running after "
                    << absl::FormatDuration(wall) << " (a hang)";
      for (pid_t pid : pids) {
        if (pid > 0) ::kill(pid, SIGKILL);
      }
      for (pid_t pid : pids) {
        if (pid > 0) ::waitpid(pid, nullptr, 0);
      }
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return outcomes;
}

void ExpectAllPassed(const std::vector<Outcome>& outcomes) {
  for (size_t rank = 0; rank < outcomes.size(); ++rank) {
    EXPECT_TRUE(outcomes[rank].exited && outcomes[rank].exit_code == 0)
        << "rank " << rank << ": exit " << outcomes[rank].exit_code << ", signal "
        << outcomes[rank].signal;
  }
}

int CudaDevices() { return at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0; }

class GlooGroupTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooGroupTest, Collectives) {
  ExpectAllPassed(RunGroup("collectives", "gloo", GetParam(), 20000, absl::Seconds(60)));
}

TEST_P(GlooGroupTest, MissingPeerTimesOut) {
  ExpectAllPassed(RunGroup("timeout", "gloo", GetParam(), 1500, absl::Seconds(30)));
}

TEST_P(GlooGroupTest, KilledPeerFailsTheOthers) {
  const int size = GetParam();
  auto outcomes = RunGroup("killed", "gloo", size, 3000, absl::Seconds(30));
  ASSERT_EQ(static_cast<int>(outcomes.size()), size);
  EXPECT_EQ(outcomes[size - 1].signal, SIGKILL);
  outcomes.pop_back();
  ExpectAllPassed(outcomes);
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooGroupTest, ::testing::Values(2, 4));

class NcclGroupTest : public ::testing::TestWithParam<int> {};

TEST_P(NcclGroupTest, Collectives) {
  if (CudaDevices() < GetParam()) GTEST_SKIP() << "needs " << GetParam() << " CUDA devices";
  ExpectAllPassed(RunGroup("collectives", "nccl", GetParam(), 60000, absl::Seconds(180)));
}

TEST_P(NcclGroupTest, KilledPeerFailsTheOthers) {
  const int size = GetParam();
  if (CudaDevices() < size) GTEST_SKIP() << "needs " << size << " CUDA devices";
  auto outcomes = RunGroup("killed", "nccl", size, 10000, absl::Seconds(120));
  ASSERT_EQ(static_cast<int>(outcomes.size()), size);
  EXPECT_EQ(outcomes[size - 1].signal, SIGKILL);
  outcomes.pop_back();
  ExpectAllPassed(outcomes);
}

INSTANTIATE_TEST_SUITE_P(Ranks, NcclGroupTest, ::testing::Values(2, 4));

// In-process cases -------------------------------------------------------------------------------

TEST(GlooCommunicatorTest, GroupOfOneWorksLocally) {
  CommunicatorOptions options;
  options.leader_address = absl::StrCat("127.0.0.1:", FreePort());
  options.timeout = absl::Seconds(5);
  auto comm = CreateGlooCommunicator(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->backend(), "gloo");
  at::Tensor in = at::arange(6, at::kFloat).view({3, 2});
  at::Tensor out = at::empty_like(in);
  ASSERT_TRUE((*comm)->AllToAll(in, out).ok());
  EXPECT_TRUE(at::equal(in, out));
  std::string bytes = "x";
  EXPECT_TRUE((*comm)->BroadcastBytes(bytes, 0).ok());
  EXPECT_EQ((*comm)->Broadcast(in, 1).code(), absl::StatusCode::kInvalidArgument);
  at::Tensor strided = at::zeros({4, 4}).t();
  at::Tensor dst = at::zeros({4, 4});
  EXPECT_EQ((*comm)->AllToAll(strided, dst).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*comm)->Split({0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*comm)->healthy());
}

TEST(GlooCommunicatorTest, RendezvousWithoutPeersTimesOut) {
  CommunicatorOptions options;
  options.leader_address = absl::StrCat("127.0.0.1:", FreePort());
  options.size = 2;
  options.timeout = absl::Milliseconds(500);
  absl::Time start = absl::Now();
  auto comm = CreateGlooCommunicator(options);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
}

TEST(GlooCommunicatorTest, WorkerWithoutLeaderTimesOut) {
  CommunicatorOptions options;
  options.leader_address = absl::StrCat("127.0.0.1:", FreePort());
  options.rank = 1;
  options.size = 2;
  options.timeout = absl::Milliseconds(300);
  auto comm = CreateGlooCommunicator(options);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
}

TEST(TcpStoreTest, SetGetAndWait) {
  auto server = TcpStoreServer::Start(0);
  ASSERT_TRUE(server.ok()) << server.status();
  std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  auto a = TcpStore::Connect(address, absl::Seconds(2));
  auto b = TcpStore::Connect(address, absl::Seconds(2));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->local_host(), "127.0.0.1");
  EXPECT_EQ((*b)->Get("k", absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_TRUE((*a)->Set("k", std::string("v\0w", 3)).ok());
  });
  auto value = (*b)->Get("k", absl::Seconds(5));
  setter.join();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, std::string("v\0w", 3));
  server->reset();
  EXPECT_EQ((*b)->Get("k", absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
}

TEST(TcpStoreTest, SplitHostPort) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("[::1]:80", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 80);
  EXPECT_EQ(SplitHostPort("leader", &host, &port).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitHostPort("leader:x", &host, &port).code(), absl::StatusCode::kInvalidArgument);
}

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(LeaderWorkerSetTest, FillsFromEnvironment) {
  ScopedEnv leader("LWS_LEADER_ADDRESS", "group-0.dgrid");
  ScopedEnv size("LWS_GROUP_SIZE", "4");
  ScopedEnv index("LWS_WORKER_INDEX", "3");
  ScopedEnv port("DGRID_RENDEZVOUS_PORT", nullptr);
  CommunicatorOptions options;
  ASSERT_TRUE(ApplyLeaderWorkerSetEnvironment(options).ok());
  EXPECT_EQ(options.leader_address, "group-0.dgrid:29500");
  EXPECT_EQ(options.size, 4);
  EXPECT_EQ(options.rank, 3);
  ScopedEnv port2("DGRID_RENDEZVOUS_PORT", "1234");
  ASSERT_TRUE(ApplyLeaderWorkerSetEnvironment(options).ok());
  EXPECT_EQ(options.leader_address, "group-0.dgrid:1234");
}

TEST(LeaderWorkerSetTest, LeavesOptionsAloneWithoutEnvironment) {
  ScopedEnv leader("LWS_LEADER_ADDRESS", nullptr);
  ScopedEnv size("LWS_GROUP_SIZE", nullptr);
  ScopedEnv index("LWS_WORKER_INDEX", nullptr);
  CommunicatorOptions options;
  options.leader_address = "h:1";
  options.rank = 1;
  options.size = 2;
  ASSERT_TRUE(ApplyLeaderWorkerSetEnvironment(options).ok());
  EXPECT_EQ(options.leader_address, "h:1");
  EXPECT_EQ(options.rank, 1);
  EXPECT_EQ(options.size, 2);
}

TEST(LeaderWorkerSetTest, RejectsBadValues) {
  ScopedEnv size("LWS_GROUP_SIZE", "2");
  ScopedEnv index("LWS_WORKER_INDEX", "2");
  CommunicatorOptions options;
  EXPECT_EQ(ApplyLeaderWorkerSetEnvironment(options).code(), absl::StatusCode::kInvalidArgument);
  ScopedEnv bad("LWS_WORKER_INDEX", "two");
  EXPECT_EQ(ApplyLeaderWorkerSetEnvironment(options).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(options.size, 1);  // Unchanged on error.
}

}  // namespace
}  // namespace dgrid
