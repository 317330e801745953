// Every collective is "deposit, barrier, read everyone's deposit, barrier": the second barrier
// keeps a fast rank from overwriting its slot before the slow ones have read it.
#include "tests/unit/parallel/sp_thread_communicator.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid::testing {
namespace {

struct SharedGroup {
  explicit SharedGroup(int n) : size(n), slots(n) {}

  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  int64_t generation = 0;
  std::vector<at::Tensor> slots;
  // (src, dst) -> tensors sent and not yet received.
  std::map<std::pair<int, int>, std::deque<at::Tensor>> mail;
  // (split call index, members) -> the subgroup, created by its first member to arrive.
  std::map<std::pair<int64_t, std::vector<int>>, std::shared_ptr<SharedGroup>> children;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<SharedGroup> group, int rank, absl::Duration timeout)
      : group_(std::move(group)), rank_(rank), timeout_(timeout) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  absl::string_view backend() const override { return "thread-test-seam"; }
  bool healthy() const override { return healthy_; }
  int64_t calls() const { return calls_; }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks) override {
    const int64_t call = splits_++;
    int new_rank = -1;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < 0 || ranks[i] >= size()) return InvalidArgument("Split: bad rank ", ranks[i]);
      if (ranks[i] == rank_) new_rank = static_cast<int>(i);
    }
    RETURN_IF_ERROR(Barrier());
    if (new_rank < 0) return std::unique_ptr<Communicator>();
    std::shared_ptr<SharedGroup> child;
    {
      std::lock_guard<std::mutex> lock(group_->mu);
      std::shared_ptr<SharedGroup>& slot = group_->children[{call, ranks}];
      if (slot == nullptr) slot = std::make_shared<SharedGroup>(static_cast<int>(ranks.size()));
      child = slot;
    }
    return std::unique_ptr<Communicator>(new ThreadCommunicator(child, new_rank, timeout_));
  }

  absl::Status AllToAll(const at::Tensor& in, at::Tensor& out) override {
    ++calls_;
    ASSIGN_OR_RETURN(std::vector<at::Tensor> all, Exchange(in));
    const int64_t n = in.size(0) / size();
    for (int j = 0; j < size(); ++j) {
      out.narrow(0, j * n, n).copy_(all[j].narrow(0, rank_ * n, n));
    }
    return Barrier();
  }
  absl::Status AllGather(const at::Tensor& in, at::Tensor& out) override {
    ++calls_;
    ASSIGN_OR_RETURN(std::vector<at::Tensor> all, Exchange(in));
    const int64_t n = in.size(0);
    for (int j = 0; j < size(); ++j) out.narrow(0, j * n, n).copy_(all[j]);
    return Barrier();
  }
  absl::Status AllReduceSum(at::Tensor& tensor) override {
    ++calls_;
    ASSIGN_OR_RETURN(std::vector<at::Tensor> all, Exchange(tensor.clone()));
    at::Tensor sum = all[0].clone();
    for (int j = 1; j < size(); ++j) sum.add_(all[j]);
    RETURN_IF_ERROR(Barrier());
    tensor.copy_(sum);
    return absl::OkStatus();
  }
  absl::Status Broadcast(at::Tensor& tensor, int root) override {
    ++calls_;
    ASSIGN_OR_RETURN(std::vector<at::Tensor> all, Exchange(tensor));
    at::Tensor from_root = all[root].clone();
    RETURN_IF_ERROR(Barrier());
    tensor.copy_(from_root);
    return absl::OkStatus();
  }
  absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    ++calls_;
    if (!healthy_) return absl::UnavailableError("thread communicator is broken");
    std::unique_lock<std::mutex> lock(group_->mu);
    group_->mail[{rank_, dst}].push_back(send.clone());
    group_->cv.notify_all();
    std::deque<at::Tensor>& box = group_->mail[{src, rank_}];
    if (!group_->cv.wait_for(lock, absl::ToChronoNanoseconds(timeout_),
                             [&] { return !box.empty(); })) {
      return Fail(absl::StrCat("SendRecv from rank ", src));
    }
    const at::Tensor got = box.front();
    box.pop_front();
    lock.unlock();
    recv.copy_(got);
    return absl::OkStatus();
  }
  absl::Status BroadcastBytes(std::string& bytes, int root) override {
    const at::Tensor mine =
        at::from_blob(bytes.data(), {static_cast<int64_t>(bytes.size())}, at::kByte).clone();
    ASSIGN_OR_RETURN(std::vector<at::Tensor> all, Exchange(mine));
    const at::Tensor from_root = all[root].clone();
    RETURN_IF_ERROR(Barrier());
    bytes.assign(static_cast<const char*>(from_root.data_ptr()), from_root.numel());
    return absl::OkStatus();
  }
  absl::Status Barrier() override {
    std::unique_lock<std::mutex> lock(group_->mu);
    return BarrierLocked(lock);
  }

 private:
  absl::Status Fail(absl::string_view what) {
    healthy_ = false;
    return absl::DeadlineExceededError(
        absl::StrCat("thread communicator rank ", rank_, ": ", what, " timed out"));
  }

  absl::Status BarrierLocked(std::unique_lock<std::mutex>& lock) {
    if (!healthy_) return absl::UnavailableError("thread communicator is broken");
    const int64_t generation = group_->generation;
    if (++group_->arrived == group_->size) {
      group_->arrived = 0;
      ++group_->generation;
      group_->cv.notify_all();
      return absl::OkStatus();
    }
    if (!group_->cv.wait_for(lock, absl::ToChronoNanoseconds(timeout_),
                             [&] { return group_->generation != generation; })) {
      return Fail("barrier");
    }
    return absl::OkStatus();
  }

  // Deposits `t`, waits for every rank and returns everyone's deposit (shared, read-only until the
  // caller's next Barrier()).
  absl::StatusOr<std::vector<at::Tensor>> Exchange(const at::Tensor& t) {
    std::unique_lock<std::mutex> lock(group_->mu);
    group_->slots[rank_] = t;
    RETURN_IF_ERROR(BarrierLocked(lock));
    return group_->slots;
  }

  std::shared_ptr<SharedGroup> group_;
  const int rank_;
  const absl::Duration timeout_;
  bool healthy_ = true;
  int64_t splits_ = 0;
  int64_t calls_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> CreateThreadCommunicators(int size,
                                                                     absl::Duration timeout) {
  auto group = std::make_shared<SharedGroup>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r)
    out.push_back(std::make_unique<ThreadCommunicator>(group, r, timeout));
  return out;
}

int64_t ThreadCommunicatorCalls(const Communicator& communicator) {
  return static_cast<const ThreadCommunicator&>(communicator).calls();
}

void RunOnThreadGroup(int size, const std::function<void(int, Communicator&)>& fn,
                      absl::Duration timeout) {
  std::vector<std::unique_ptr<Communicator>> comms = CreateThreadCommunicators(size, timeout);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back([&, r] { fn(r, *comms[r]); });
  for (std::thread& t : threads) t.join();
}

}  // namespace dgrid::testing
