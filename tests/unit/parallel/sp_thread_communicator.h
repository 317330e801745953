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

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_PARALLEL_SP_THREAD_COMMUNICATOR_H_
