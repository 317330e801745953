// One rank of a multi-process communicator test (driven by communicator_test.cc, which starts N of
// these). Exit code 0: the scenario's checks passed on this rank; 1: a check failed (the reason is
// on stderr); 2: bad arguments.
//
//   parallel_comm_worker <scenario> <backend> <rank> <size> <leader host:port> <timeout ms>
//
// Scenarios:
//   collectives  every operation with values each rank can predict, Split included.
//   timeout      rank 1 skips a collective: the others get DEADLINE_EXCEEDED in time, then fail
//   fast. killed       after one good collective the last rank SIGKILLs itself; the others must
//   fail
//                with UNAVAILABLE or DEADLINE_EXCEEDED within the timeout, never hang.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "parallel/communicator.h"

namespace dgrid {
namespace {

bool g_failed = false;

#define CHECK_OK_OR_FAIL(expr)                                                             \
  do {                                                                                     \
    absl::Status _s = (expr);                                                              \
    if (!_s.ok()) {                                                                        \
      std::fprintf(stderr, "rank check failed: %s -> %s\n", #expr, _s.ToString().c_str()); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

void Expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "check failed: %s\n", what.c_str());
    g_failed = true;
  }
}

at::Device DeviceFor(const Communicator& comm, int device_index) {
  return comm.backend() == "nccl" ? at::Device(at::kCUDA, device_index) : at::Device(at::kCPU);
}

int Collectives(Communicator& comm, at::Device device) {
  const int r = comm.rank();
  const int n = comm.size();
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);

  // AllToAll: rank r's chunk j (2 rows x 3) holds 1000*r + 10*j + element index.
  {
    const int64_t rows = 2, cols = 3;
    at::Tensor in = at::empty({n * rows, cols}, f32);
    at::Tensor expected = at::empty({n * rows, cols}, f32);
    at::Tensor idx = at::arange(rows * cols, f32).view({rows, cols});
    for (int j = 0; j < n; ++j) {
      in.narrow(0, j * rows, rows).copy_(idx + (1000 * r + 10 * j));
      expected.narrow(0, j * rows, rows).copy_(idx + (1000 * j + 10 * r));
    }
    at::Tensor out = at::zeros_like(in);
    CHECK_OK_OR_FAIL(comm.AllToAll(in, out));
    Expect(at::equal(out, expected), "AllToAll values");
  }
  // A larger AllToAll (several MB, several transport segments), bf16.
  {
    const int64_t rows = 512, cols = 1024;
    auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(device);
    at::Tensor in = at::empty({n * rows, cols}, bf16);
    at::Tensor expected = at::empty({n * rows, cols}, bf16);
    for (int j = 0; j < n; ++j) {
      in.narrow(0, j * rows, rows).fill_(r * 8 + j);
      expected.narrow(0, j * rows, rows).fill_(j * 8 + r);
    }
    at::Tensor out = at::empty_like(in);
    CHECK_OK_OR_FAIL(comm.AllToAll(in, out));
    Expect(at::equal(out, expected), "large bf16 AllToAll values");
  }
  // AllToAllMany: three pairs of different sizes in one exchange (the Ulysses q/k/v step).
  {
    std::vector<at::Tensor> ins, outs, expected;
    for (int i = 0; i < 3; ++i) {
      const int64_t rows = 2 + i;
      at::Tensor in = at::empty({n * rows, 5}, f32);
      at::Tensor want = at::empty({n * rows, 5}, f32);
      for (int j = 0; j < n; ++j) {
        in.narrow(0, j * rows, rows).fill_(100 * i + 10 * r + j);
        want.narrow(0, j * rows, rows).fill_(100 * i + 10 * j + r);
      }
      ins.push_back(in);
      outs.push_back(at::empty_like(in));
      expected.push_back(want);
    }
    CHECK_OK_OR_FAIL(comm.AllToAllMany(ins, outs));
    for (int i = 0; i < 3; ++i) {
      Expect(at::equal(outs[i], expected[i]), absl::StrCat("AllToAllMany pair ", i));
    }
    std::vector<at::Tensor> fewer = {outs[0]};
    Expect(comm.AllToAllMany(ins, fewer).code() == absl::StatusCode::kInvalidArgument,
           "AllToAllMany with mismatched lists");
  }
  // AllGather.
  {
    at::Tensor in = at::full({3, 2}, static_cast<float>(r + 1), f32);
    at::Tensor out = at::empty({3 * n, 2}, f32);
    CHECK_OK_OR_FAIL(comm.AllGather(in, out));
    for (int j = 0; j < n; ++j) {
      Expect(at::equal(out.narrow(0, 3 * j, 3), at::full({3, 2}, static_cast<float>(j + 1), f32)),
             absl::StrCat("AllGather chunk ", j));
    }
  }
  // AllReduceSum in float, bf16 and int64.
  {
    at::Tensor t = at::arange(10, f32) * (r + 1);
    CHECK_OK_OR_FAIL(comm.AllReduceSum(t));
    Expect(at::equal(t, at::arange(10, f32) * static_cast<float>(n * (n + 1) / 2)),
           "AllReduceSum float");
    at::Tensor b = at::full({7}, 1.0, at::TensorOptions().dtype(at::kBFloat16).device(device));
    CHECK_OK_OR_FAIL(comm.AllReduceSum(b));
    Expect(at::equal(b, at::full_like(b, static_cast<double>(n))), "AllReduceSum bf16");
    at::Tensor l = at::full({5}, int64_t{r}, at::TensorOptions().dtype(at::kLong).device(device));
    CHECK_OK_OR_FAIL(comm.AllReduceSum(l));
    Expect(at::equal(l, at::full_like(l, int64_t{n * (n - 1) / 2})), "AllReduceSum int64");
  }
  // Broadcast from the last rank.
  {
    at::Tensor t = r == n - 1 ? at::arange(6, f32) : at::zeros({6}, f32);
    CHECK_OK_OR_FAIL(comm.Broadcast(t, n - 1));
    Expect(at::equal(t, at::arange(6, f32)), "Broadcast");
  }
  // SendRecv around the ring, twice (the sequence numbers of repeated messages must match).
  for (int round = 0; round < 2; ++round) {
    at::Tensor send = at::full({4}, static_cast<float>(100 * round + r), f32);
    at::Tensor recv = at::empty({4}, f32);
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    CHECK_OK_OR_FAIL(comm.SendRecv(send, next, recv, prev));
    Expect(at::equal(recv, at::full({4}, static_cast<float>(100 * round + prev), f32)),
           absl::StrCat("SendRecv round ", round));
  }
  // The overlapped form, as ring attention uses it: a whole lap of the ring with two buffers,
  // work on the held block between start and join (a block of 64k floats, so the transfer is not
  // trivially done before the work is issued).
  {
    const int64_t len = 1 << 16;
    at::Tensor held = at::full({len}, static_cast<float>(r), f32);
    at::Tensor incoming = at::empty({len}, f32);
    at::Tensor sum = at::zeros({len}, f32);
    const int next = (r + 1) % n, prev = (r + n - 1) % n;
    for (int step = 0; step < n; ++step) {
      if (step + 1 < n) CHECK_OK_OR_FAIL(comm.SendRecvStart(held, next, incoming, prev));
      sum.add_(held);
      if (step + 1 < n) {
        CHECK_OK_OR_FAIL(comm.JoinPending());
        std::swap(held, incoming);
      }
    }
    Expect(at::equal(sum, at::full({len}, static_cast<float>(n * (n - 1) / 2), f32)),
           "SendRecvStart/JoinPending lap of the ring");
  }
  // AllToAllManyStart / JoinPending as Ulysses pipelines its head chunks: chunk c + 1's exchange
  // (two pairs of 4k floats per peer) is started before the work on chunk c and joined after it,
  // and chunk c's result goes back in an exchange that is in flight during chunk c + 1's work.
  {
    const int64_t rows = 1 << 12, chunks = 3;
    std::vector<std::vector<at::Tensor>> sends(chunks), recvs(chunks), back(chunks),
        back_recv(chunks);
    const auto start = [&](int64_t c) {
      for (int i = 0; i < 2; ++i) {
        at::Tensor in = at::empty({n * rows}, f32);
        for (int j = 0; j < n; ++j) {
          in.narrow(0, j * rows, rows).fill_(static_cast<float>(1000 * c + 100 * i + 10 * r + j));
        }
        sends[c].push_back(in);
        recvs[c].push_back(at::empty_like(in));
      }
      return comm.AllToAllManyStart(sends[c], recvs[c]);
    };
    CHECK_OK_OR_FAIL(start(0));
    CHECK_OK_OR_FAIL(comm.JoinPending());
    for (int64_t c = 0; c < chunks; ++c) {
      if (c + 1 < chunks) CHECK_OK_OR_FAIL(start(c + 1));
      back[c] = {recvs[c][0] + recvs[c][1]};
      CHECK_OK_OR_FAIL(comm.JoinPending());
      back_recv[c] = {at::empty_like(back[c][0])};
      CHECK_OK_OR_FAIL(comm.AllToAllManyStart(back[c], back_recv[c]));
    }
    CHECK_OK_OR_FAIL(comm.JoinPending());
    for (int64_t c = 0; c < chunks; ++c) {
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < 2; ++i) {
          Expect(
              at::equal(recvs[c][i].narrow(0, j * rows, rows),
                        at::full({rows}, static_cast<float>(1000 * c + 100 * i + 10 * j + r), f32)),
              absl::StrCat("AllToAllManyStart chunk ", c, " pair ", i, " from rank ", j));
        }
        // Rank j summed both pairs of what this rank sent it.
        Expect(
            at::equal(back_recv[c][0].narrow(0, j * rows, rows),
                      at::full({rows}, static_cast<float>(2000 * c + 100 + 20 * r + 2 * j), f32)),
            absl::StrCat("AllToAllManyStart chunk ", c, " result from rank ", j));
      }
    }
  }
  // AllGatherStart as sharded weights' prefetch uses it: three gathers in flight, joined oldest
  // first with the newer ones kept in flight, each checked once joined.
  {
    const int64_t len = 1 << 16;
    std::vector<at::Tensor> shards, gathered;
    for (int k = 0; k < 3; ++k) {
      shards.push_back(at::full({len}, static_cast<float>(10 * k + r), f32));
      gathered.push_back(at::empty({n * len}, f32));
      CHECK_OK_OR_FAIL(comm.AllGatherStart(shards[k], gathered[k]));
    }
    for (int k = 0; k < 3; ++k) {
      CHECK_OK_OR_FAIL(comm.JoinPendingExceptNewest(2 - k));
      bool ok = true;
      for (int j = 0; j < n; ++j) {
        ok = ok && at::equal(gathered[k].narrow(0, j * len, len),
                             at::full({len}, static_cast<float>(10 * k + j), f32));
      }
      Expect(ok, absl::StrCat("AllGatherStart/JoinPendingExceptNewest gather ", k));
    }
  }
  // BroadcastBytes: a control message, then an empty one.
  {
    std::string bytes = r == 0 ? std::string("request: \0 binary ok", 20) : "stale";
    CHECK_OK_OR_FAIL(comm.BroadcastBytes(bytes, 0));
    Expect(bytes == std::string("request: \0 binary ok", 20), "BroadcastBytes");
    std::string empty = r == 0 ? "" : "stale";
    CHECK_OK_OR_FAIL(comm.BroadcastBytes(empty, 0));
    Expect(empty.empty(), "BroadcastBytes empty");
    // Longer than the NCCL backend's one-frame inline part (248 bytes): two broadcasts there.
    std::string expected(1000, '\0');
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<char>(i * 7 + 3);
    for (const size_t length : {size_t{248}, size_t{249}, expected.size()}) {
      std::string long_bytes = r == 0 ? expected.substr(0, length) : "stale";
      CHECK_OK_OR_FAIL(comm.BroadcastBytes(long_bytes, 0));
      Expect(long_bytes == expected.substr(0, length),
             absl::StrCat("BroadcastBytes of ", length, " bytes"));
    }
  }
  CHECK_OK_OR_FAIL(comm.Barrier());
  // Split: first the even ranks, then all ranks in reverse order.
  {
    std::vector<int> evens;
    for (int j = 0; j < n; j += 2) evens.push_back(j);
    auto sub = comm.Split(evens);
    CHECK_OK_OR_FAIL(sub.status());
    Expect((r % 2 == 0) == (*sub != nullptr), "Split membership");
    std::vector<int> reversed;
    for (int j = n - 1; j >= 0; --j) reversed.push_back(j);
    auto rev = comm.Split(reversed);
    CHECK_OK_OR_FAIL(rev.status());
    Expect(*rev != nullptr && (*rev)->rank() == n - 1 - r && (*rev)->size() == n,
           "reversed Split ranks");
    if (*sub != nullptr) {
      Expect((*sub)->rank() == r / 2 && (*sub)->size() == static_cast<int>(evens.size()),
             "even Split rank");
      at::Tensor t = at::full({3}, static_cast<float>(r), f32);
      CHECK_OK_OR_FAIL((*sub)->AllReduceSum(t));
      float sum = 0;
      for (int j : evens) sum += j;
      Expect(at::equal(t, at::full({3}, sum, f32)), "AllReduceSum in the even Split");
    }
    // The reversed communicator's rank 0 is the world's last rank.
    std::string bytes = r == n - 1 ? "from the last" : "";
    CHECK_OK_OR_FAIL((*rev)->BroadcastBytes(bytes, 0));
    Expect(bytes == "from the last", "BroadcastBytes in the reversed Split");
  }
  // Local argument errors leave the communicator healthy.
  {
    at::Tensor in = at::zeros({n * 2 + 1, 2}, f32);
    at::Tensor out = at::zeros({n * 2 + 1, 2}, f32);
    absl::Status s = comm.AllToAll(in, out);
    Expect(s.code() == absl::StatusCode::kInvalidArgument, "AllToAll indivisible rows");
    at::Tensor other = at::zeros({n * 2, 2}, at::TensorOptions().dtype(at::kDouble).device(device));
    at::Tensor same = at::zeros({n * 2, 2}, f32);
    s = comm.AllToAll(same, other);
    Expect(s.code() == absl::StatusCode::kInvalidArgument, "AllToAll dtype mismatch");
    Expect(comm.healthy(), "healthy after local argument errors");
  }
  CHECK_OK_OR_FAIL(comm.Barrier());
  return g_failed ? 1 : 0;
}

bool IsPeerFailure(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

int Timeout(Communicator& comm, at::Device device, absl::Duration timeout) {
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor t = at::ones({4}, f32);
  CHECK_OK_OR_FAIL(comm.AllReduceSum(t));
  if (comm.rank() == 1) {
    // Stay connected but never join the next collective.
    absl::SleepFor(timeout * 3);
    return 0;
  }
  absl::Time start = absl::Now();
  absl::Status s = comm.AllReduceSum(t);
  absl::Duration took = absl::Now() - start;
  std::fprintf(stderr, "rank %d: missing peer -> %s after %s\n", comm.rank(), s.ToString().c_str(),
               absl::FormatDuration(took).c_str());
  // The peers of the missing rank time out; the others may see them give up (UNAVAILABLE).
  Expect(IsPeerFailure(s), "a missing peer ends the collective with DEADLINE_EXCEEDED/UNAVAILABLE");
  Expect(took < timeout * 2 + absl::Seconds(2), "the failure comes within the timeout");
  Expect(!comm.healthy(), "unhealthy after the failure");
  start = absl::Now();
  absl::Status again = comm.Barrier();
  Expect(again.code() == s.code(), "the next call fails with the same code");
  Expect(absl::Now() - start < absl::Seconds(1), "the next call fails fast");
  return g_failed ? 1 : 0;
}

int Killed(Communicator& comm, at::Device device, absl::Duration timeout) {
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor t = at::ones({1024}, f32);
  CHECK_OK_OR_FAIL(comm.AllReduceSum(t));
  if (comm.rank() == comm.size() - 1) {
    ::raise(SIGKILL);
  }
  absl::SleepFor(absl::Milliseconds(200));  // Let the kill land before the next collective.
  absl::Time start = absl::Now();
  absl::Status s;
  at::Tensor in = at::ones({comm.size() * 4, 8}, f32);
  at::Tensor out = at::empty_like(in);
  // A few rounds, as a rank may finish one collective before noticing the loss; the barrier
  // waits on the host (NCCL only enqueues the all-to-all and reports the loss later).
  for (int i = 0; i < 3 && s.ok(); ++i) s = comm.AllToAll(in, out);
  if (s.ok()) s = comm.Barrier();
  absl::Duration took = absl::Now() - start;
  std::fprintf(stderr, "rank %d: killed peer -> %s after %s\n", comm.rank(), s.ToString().c_str(),
               absl::FormatDuration(took).c_str());
  Expect(IsPeerFailure(s), "a killed peer ends the collective with UNAVAILABLE/DEADLINE_EXCEEDED");
  Expect(took < timeout + absl::Seconds(2), "the failure comes within the timeout");
  Expect(!comm.healthy(), "unhealthy after the failure");
  return g_failed ? 1 : 0;
}

int Main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s scenario backend rank size host:port timeout_ms\n", argv[0]);
    return 2;
  }
  std::string scenario = argv[1];
  std::string backend = argv[2];
  CommunicatorOptions options;
  options.rank = std::atoi(argv[3]);
  options.size = std::atoi(argv[4]);
  options.leader_address = argv[5];
  options.timeout = absl::Milliseconds(std::atoi(argv[6]));
  options.device_index = options.rank;
  auto comm = backend == "nccl" ? CreateNcclCommunicator(options) : CreateGlooCommunicator(options);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: create: %s\n", options.rank, comm.status().ToString().c_str());
    return 1;
  }
  at::Device device = DeviceFor(**comm, options.device_index);
  if (scenario == "collectives") return Collectives(**comm, device);
  if (scenario == "timeout") return Timeout(**comm, device, options.timeout);
  if (scenario == "killed") return Killed(**comm, device, options.timeout);
  std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
  return 2;
}

}  // namespace
}  // namespace dgrid

int main(int argc, char** argv) { return dgrid::Main(argc, argv); }
