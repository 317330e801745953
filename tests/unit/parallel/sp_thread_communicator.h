// TEST SEAM, not a product backend: a Communicator (parallel/communicator.h) connecting threads of
// one process, so that the sequence-parallel math can be tested without Gloo or NCCL.
//
// CreateThreadCommunicators(n) returns the n ranks of one group; hand one to each thread. Every
// collective is a rendezvous of the group's threads (bounded by `timeout`: a rank that does not
// come makes the others fail with DEADLINE_EXCEEDED, after which the communicator is unhealthy).
// SendRecv is buffered: a send never waits for its receiver. Tensors are copied, any device.
#ifndef DGRID_TESTS_UNIT_PARALLEL_SP_THREAD_COMMUNICATOR_H_
#define DGRID_TESTS_UNIT_PARALLEL_SP_THREAD_COMMUNICATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "parallel/communicator.h"

namespace dgrid::testing {

std::vector<std::unique_ptr<Communicator>> CreateThreadCommunicators(
    int size, absl::Duration timeout = absl::Seconds(30));

// Number of collectives and SendRecv calls this rank's communicator (a thread one) has made.
int64_t ThreadCommunicatorCalls(const Communicator& communicator);

// Runs fn(rank, communicator) on `size` threads, one per rank of a fresh thread group, and joins
// them.
void RunOnThreadGroup(int size, const std::function<void(int, Communicator&)>& fn,
                      absl::Duration timeout = absl::Seconds(30));

// TEST SEAM: a Communicator passing every call on to `inner` (which must outlive it), for tests
// that override a few calls to watch or hold them (the asynchronous *Start calls and their joins).
class ForwardingCommunicator : public Communicator {
 public:
  explicit ForwardingCommunicator(Communicator& inner) : inner_(inner) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  absl::string_view backend() const override { return inner_.backend(); }
  bool healthy() const override { return inner_.healthy(); }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks) override {
    return inner_.Split(ranks);
  }
  absl::Status AllToAll(const at::Tensor& in, at::Tensor& out) override {
    return inner_.AllToAll(in, out);
  }
  absl::Status AllToAllMany(const std::vector<at::Tensor>& ins,
                            std::vector<at::Tensor>& outs) override {
    return inner_.AllToAllMany(ins, outs);
  }
  absl::Status AllToAllManyStart(const std::vector<at::Tensor>& ins,
                                 std::vector<at::Tensor>& outs) override {
    return inner_.AllToAllManyStart(ins, outs);
  }
  absl::Status AllGather(const at::Tensor& in, at::Tensor& out) override {
    return inner_.AllGather(in, out);
  }
  absl::Status AllGatherStart(const at::Tensor& in, at::Tensor& out) override {
    return inner_.AllGatherStart(in, out);
  }
  absl::Status AllReduceSum(at::Tensor& tensor) override { return inner_.AllReduceSum(tensor); }
  absl::Status Broadcast(at::Tensor& tensor, int root) override {
    return inner_.Broadcast(tensor, root);
  }
  absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    return inner_.SendRecv(send, dst, recv, src);
  }
  absl::Status SendRecvStart(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    return inner_.SendRecvStart(send, dst, recv, src);
  }
  absl::Status JoinPending() override { return inner_.JoinPending(); }
  absl::Status JoinPendingExceptNewest(int newest) override {
    return inner_.JoinPendingExceptNewest(newest);
  }
  absl::Status BroadcastBytes(std::string& bytes, int root) override {
    return inner_.BroadcastBytes(bytes, root);
  }
  absl::Status Barrier() override { return inner_.Barrier(); }

 protected:
  Communicator& inner_;
};

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_PARALLEL_SP_THREAD_COMMUNICATOR_H_
