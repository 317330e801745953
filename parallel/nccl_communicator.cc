// NCCL backend of Communicator (compiled with -DDGRID_WITH_CUDA=ON only).
//
// * The unique id goes from rank 0 to the others through the TCP rendezvous store
//   (parallel/tcp_store.h); communicators are created non-blocking (config.blocking = 0) so that
//   creation, and every enqueue, can be bounded: ncclCommGetAsyncError is polled against the
//   timeout, and the communicator is aborted (ncclCommAbort) when it runs out.
// * Each communicator has its own stream. An operation first makes that stream wait for an event
//   recorded on the caller's current stream, and afterwards makes the current stream wait for an
//   event recorded on the own stream: the order on the device is kept without a host sync.
// * Collectives are asynchronous, so a peer that never arrives shows up only on the device. A
//   watchdog thread per communicator polls the completion events of enqueued operations and
//   ncclCommGetAsyncError; an operation pending longer than the timeout or an asynchronous error
//   aborts the communicator, which also frees the kernels a later host sync would wait on.
// * All-to-all is grouped ncclSend/ncclRecv, Split is ncclCommSplit.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "parallel/communicator.h"
#include "parallel/tcp_store.h"
#include "parallel/tensor_checks.h"

namespace dgrid {
namespace {

using parallel_internal::CheckAllGather;
using parallel_internal::CheckAllToAll;
using parallel_internal::CheckRank;
using parallel_internal::CheckSameKind;
using parallel_internal::CheckSplitRanks;
using parallel_internal::CheckTensor;

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

// Status of an NCCL result other than ncclSuccess / ncclInProgress. Remote and system errors mean
// a peer or the network is gone.
absl::Status NcclError(ncclResult_t result, absl::string_view what) {
  std::string text = absl::StrCat("nccl ", what, ": ", ncclGetErrorString(result));
  if (result == ncclRemoteError || result == ncclSystemError) {
    return absl::UnavailableError(text);
  }
  if (result == ncclInvalidArgument || result == ncclInvalidUsage) {
    return absl::InvalidArgumentError(text);
  }
  return absl::InternalError(text);
}

// Polls `comm` until its pending non-blocking work is enqueued (or it fails), up to `deadline`.
// A collective on a non-blocking communicator can come back ncclInProgress; it is usually taken
// within microseconds, and the denoise loop issues one or more collectives per transformer block
// (~60-170 per step), so the first 2 ms are spent polling (yielding the core), not sleeping: a
// 200 us sleep per collective cost tens of milliseconds per step. Longer waits (communicator
// creation, a slow peer) back off to sleeps.
absl::Status AwaitComm(ncclComm_t comm, absl::Time deadline, absl::string_view what) {
  const absl::Time spin_until = absl::Now() + absl::Milliseconds(2);
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) return NcclError(rc, what);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(state, what);
    const absl::Time now = absl::Now();
    if (now > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("nccl ", what, ": timed out"));
    }
    if (now < spin_until) {
      std::this_thread::yield();
    } else {
      absl::SleepFor(absl::Microseconds(100));
    }
  }
}

// A non-blocking communicator config.
ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (fully initialised).
  static absl::StatusOr<std::unique_ptr<Communicator>> Wrap(ncclComm_t comm, int rank, int size,
                                                            int device, absl::Duration timeout) {
    cudaStream_t stream = nullptr;
    cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
      ncclCommAbort(comm);
      return CudaError(err, "nccl: stream");
    }
    return std::unique_ptr<Communicator>(
        new NcclCommunicator(comm, rank, size, device, timeout, stream));
  }

  ~NcclCommunicator() override {
    stop_.Notify();
    if (watchdog_.joinable()) watchdog_.join();
    cudaSetDevice(device_);
    absl::MutexLock lock(&mu_);
    if (!aborted_) {
      // Let finished work drain; a communicator that cannot finalize in time is aborted.
      ncclResult_t rc = ncclCommFinalize(comm_);
      bool clean = (rc == ncclSuccess || rc == ncclInProgress) &&
                   AwaitComm(comm_, absl::Now() + timeout_, "finalize").ok();
      if (clean) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    for (auto& p : pending_) cudaEventDestroy(p.event);
    for (cudaEvent_t e : started_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view backend() const override { return "nccl"; }
  bool healthy() const override { return !broken_.load(); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks) override {
    if (absl::Status s = CheckSplitRanks(ranks, size_); !s.ok()) return s;
    int key = -1;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] == rank_) key = static_cast<int>(i);
    }
    ncclComm_t sub = nullptr;
    absl::Status status = Enqueue("Split", [&] {
      ncclConfig_t config = NonBlockingConfig();
      return ncclCommSplit(comm_, key < 0 ? NCCL_SPLIT_NOCOLOR : 0, std::max(key, 0), &sub,
                           &config);
    });
    if (!status.ok()) return status;
    if (key < 0 || sub == nullptr) return std::unique_ptr<Communicator>();
    status = AwaitComm(sub, absl::Now() + timeout_, "Split");
    if (!status.ok()) {
      ncclCommAbort(sub);
      return status;
    }
    return Wrap(sub, key, static_cast<int>(ranks.size()), device_, timeout_);
  }

  absl::Status AllToAll(const at::Tensor& in, at::Tensor& out) override {
    if (absl::Status s = CheckCuda("AllToAll", in, out); !s.ok()) return s;
    if (absl::Status s = CheckAllToAll(in, out, size_); !s.ok()) return s;
    const size_t chunk = in.nbytes() / size_;
    const auto* src = static_cast<const char*>(in.data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
    return Collective("AllToAll", [&] {
      ncclResult_t rc = ncclGroupStart();
      for (int j = 0; j < size_ && rc == ncclSuccess; ++j) {
        rc = ncclSend(src + j * chunk, chunk, ncclUint8, j, comm_, stream_);
        if (rc == ncclSuccess) rc = ncclRecv(dst + j * chunk, chunk, ncclUint8, j, comm_, stream_);
      }
      ncclResult_t end = ncclGroupEnd();
      return rc == ncclSuccess ? end : rc;
    });
  }

  absl::Status AllToAllMany(const std::vector<at::Tensor>& ins,
                            std::vector<at::Tensor>& outs) override {
    return AllToAllManyImpl(ins, outs, /*join=*/true);
  }

  absl::Status AllToAllManyStart(const std::vector<at::Tensor>& ins,
                                 std::vector<at::Tensor>& outs) override {
    return AllToAllManyImpl(ins, outs, /*join=*/false);
  }

  // Both of the above: `join` makes the current stream wait for the exchange.
  absl::Status AllToAllManyImpl(const std::vector<at::Tensor>& ins, std::vector<at::Tensor>& outs,
                                bool join) {
    if (ins.size() != outs.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("AllToAllMany: ", ins.size(), " inputs but ", outs.size(), " outputs"));
    }
    for (size_t i = 0; i < ins.size(); ++i) {
      if (absl::Status s = CheckCuda("AllToAllMany", ins[i], outs[i]); !s.ok()) return s;
      if (absl::Status s = CheckAllToAll(ins[i], outs[i], size_); !s.ok()) return s;
    }
    // Per peer, the pairs' chunks in order: NCCL matches sends and receives between two ranks
    // in the order they were issued inside the group.
    return Collective("AllToAllMany", join, [&] {
      ncclResult_t rc = ncclGroupStart();
      for (int j = 0; j < size_ && rc == ncclSuccess; ++j) {
        for (size_t i = 0; i < ins.size() && rc == ncclSuccess; ++i) {
          const size_t chunk = ins[i].nbytes() / size_;
          const auto* src = static_cast<const char*>(ins[i].data_ptr());
          auto* dst = static_cast<char*>(outs[i].data_ptr());
          rc = ncclSend(src + j * chunk, chunk, ncclUint8, j, comm_, stream_);
          if (rc == ncclSuccess) {
            rc = ncclRecv(dst + j * chunk, chunk, ncclUint8, j, comm_, stream_);
          }
        }
      }
      ncclResult_t end = ncclGroupEnd();
      return rc == ncclSuccess ? end : rc;
    });
  }

  absl::Status AllGather(const at::Tensor& in, at::Tensor& out) override {
    return AllGatherImpl(in, out, /*join=*/true);
  }

  absl::Status AllGatherStart(const at::Tensor& in, at::Tensor& out) override {
    return AllGatherImpl(in, out, /*join=*/false);
  }

  absl::Status AllReduceSum(at::Tensor& tensor) override {
    if (absl::Status s = CheckCuda("AllReduceSum", tensor, tensor); !s.ok()) return s;
    ncclDataType_t type;
    switch (tensor.scalar_type()) {
      case at::kFloat:
        type = ncclFloat32;
        break;
      case at::kDouble:
        type = ncclFloat64;
        break;
      case at::kHalf:
        type = ncclFloat16;
        break;
      case at::kBFloat16:
        type = ncclBfloat16;
        break;
      case at::kInt:
        type = ncclInt32;
        break;
      case at::kLong:
        type = ncclInt64;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "AllReduceSum: dtype ", c10::toString(tensor.scalar_type()), " not supported"));
    }
    return Collective("AllReduceSum", [&] {
      return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), type, ncclSum,
                           comm_, stream_);
    });
  }

  absl::Status Broadcast(at::Tensor& tensor, int root) override {
    if (absl::Status s = CheckCuda("Broadcast", tensor, tensor); !s.ok()) return s;
    if (absl::Status s = CheckRank("Broadcast", root, size_); !s.ok()) return s;
    return Collective("Broadcast", [&] {
      return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(), ncclUint8, root,
                           comm_, stream_);
    });
  }

  absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    return SendRecvImpl(send, dst, recv, src, /*join=*/true);
  }

  absl::Status SendRecvStart(const at::Tensor& send, int dst, at::Tensor& recv, int src) override {
    return SendRecvImpl(send, dst, recv, src, /*join=*/false);
  }

  absl::Status JoinPending() override {
    if (absl::Status s = Usable(); !s.ok()) return s;
    cudaSetDevice(device_);
    cudaEvent_t done = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(done, stream_);
    if (err == cudaSuccess) {
      err = cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(device_).stream(), done, 0);
    }
    if (done != nullptr) cudaEventDestroy(done);
    if (err == cudaSuccess) ForgetStarted(started_.size());
    return err == cudaSuccess ? absl::OkStatus() : CudaError(err, "JoinPending");
  }

  // The own stream runs operations in the order begun, so waiting for the end event of the newest
  // operation to join joins every older one too.
  absl::Status JoinPendingExceptNewest(int newest) override {
    if (newest <= 0) return JoinPending();
    if (absl::Status s = Usable(); !s.ok()) return s;
    if (started_.size() <= static_cast<size_t>(newest)) return absl::OkStatus();
    const size_t joined = started_.size() - static_cast<size_t>(newest);
    cudaSetDevice(device_);
    const cudaError_t err = cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(device_).stream(),
                                                started_[joined - 1], 0);
    if (err != cudaSuccess) return CudaError(err, "JoinPendingExceptNewest");
    ForgetStarted(joined);
    return absl::OkStatus();
  }

  // Control messages go through device memory (NCCL moves nothing else) and are waited for on
  // the host, bounded by the timeout. One broadcast of a fixed-size frame (length + up to
  // kControlInline bytes) carries the usual message (the leader's per-step control byte); longer
  // ones take a second broadcast of the rest.
  absl::Status BroadcastBytes(std::string& bytes, int root) override {
    if (absl::Status s = CheckRank("BroadcastBytes", root, size_); !s.ok()) return s;
    constexpr int64_t kControlInline = 248;
    constexpr int64_t kFrame = 8 + kControlInline;
    auto options = at::TensorOptions().device(at::kCUDA, device_).dtype(at::kByte);
    at::Tensor frame_host = at::zeros({kFrame}, at::kByte);
    if (rank_ == root) {
      const int64_t n = static_cast<int64_t>(bytes.size());
      std::memcpy(frame_host.data_ptr(), &n, sizeof(n));
      std::memcpy(static_cast<char*>(frame_host.data_ptr()) + 8, bytes.data(),
                  static_cast<size_t>(std::min(n, kControlInline)));
    }
    at::Tensor frame = frame_host.to(options);
    if (absl::Status s = Broadcast(frame, root); !s.ok()) return s;
    if (absl::Status s = WaitIdle("BroadcastBytes"); !s.ok()) return s;
    if (rank_ == root && static_cast<int64_t>(bytes.size()) <= kControlInline) {
      return absl::OkStatus();
    }
    frame_host = frame.cpu();
    int64_t n = 0;
    std::memcpy(&n, frame_host.data_ptr(), sizeof(n));
    if (n < 0) return absl::InternalError("BroadcastBytes: negative length in the frame");
    const auto* head = static_cast<const char*>(frame_host.data_ptr()) + 8;
    if (rank_ != root) bytes.assign(head, static_cast<size_t>(std::min(n, kControlInline)));
    if (n <= kControlInline) return absl::OkStatus();
    const int64_t rest = n - kControlInline;
    at::Tensor data = at::empty({rest}, options);
    if (rank_ == root) {
      data.copy_(at::from_blob(bytes.data() + kControlInline, {rest}, at::kByte));
    }
    if (absl::Status s = Broadcast(data, root); !s.ok()) return s;
    if (absl::Status s = WaitIdle("BroadcastBytes"); !s.ok()) return s;
    if (rank_ != root) {
      at::Tensor host = data.cpu();
      bytes.append(static_cast<const char*>(host.data_ptr()), static_cast<size_t>(rest));
    }
    return absl::OkStatus();
  }

  absl::Status Barrier() override {
    at::Tensor one =
        at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_));
    if (absl::Status s = AllReduceSum(one); !s.ok()) return s;
    return WaitIdle("Barrier");
  }

 private:
  // SendRecv and SendRecvStart: `join` makes the current stream wait for the exchange.
  absl::Status SendRecvImpl(const at::Tensor& send, int dst, at::Tensor& recv, int src, bool join) {
    if (absl::Status s = CheckCuda("SendRecv", send, recv); !s.ok()) return s;
    if (absl::Status s = CheckRank("SendRecv", dst, size_); !s.ok()) return s;
    if (absl::Status s = CheckRank("SendRecv", src, size_); !s.ok()) return s;
    return Collective("SendRecv", join, [&] {
      ncclResult_t rc = ncclGroupStart();
      if (rc == ncclSuccess)
        rc = ncclSend(send.data_ptr(), send.nbytes(), ncclUint8, dst, comm_, stream_);
      if (rc == ncclSuccess)
        rc = ncclRecv(recv.data_ptr(), recv.nbytes(), ncclUint8, src, comm_, stream_);
      ncclResult_t end = ncclGroupEnd();
      return rc == ncclSuccess ? end : rc;
    });
  }

  absl::Status AllGatherImpl(const at::Tensor& in, at::Tensor& out, bool join) {
    if (absl::Status s = CheckCuda("AllGather", in, out); !s.ok()) return s;
    if (absl::Status s = CheckAllGather(in, out, size_); !s.ok()) return s;
    return Collective("AllGather", join, [&] {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.nbytes(), ncclUint8, comm_, stream_);
    });
  }

  // Drops the end events of the `n` oldest operations begun without a join.
  void ForgetStarted(size_t n) {
    for (; n > 0 && !started_.empty(); --n) {
      cudaEventDestroy(started_.front());
      started_.pop_front();
    }
  }

  struct Pending {
    cudaEvent_t event;
    absl::Time enqueued;
  };

  NcclCommunicator(ncclComm_t comm, int rank, int size, int device, absl::Duration timeout,
                   cudaStream_t stream)
      : comm_(comm), rank_(rank), size_(size), device_(device), timeout_(timeout), stream_(stream) {
    watchdog_ = std::thread([this] { Watchdog(); });
  }

  absl::Status CheckCuda(absl::string_view op, const at::Tensor& a, const at::Tensor& b) {
    if (absl::Status s = Usable(); !s.ok()) return s;
    if (absl::Status s = CheckTensor(op, "tensor", a); !s.ok()) return s;
    if (absl::Status s = CheckTensor(op, "tensor", b); !s.ok()) return s;
    if (absl::Status s = CheckSameKind(op, a, b); !s.ok()) return s;
    if (!a.is_cuda() || a.get_device() != device_) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": nccl needs tensors on cuda:", device_, ", got ", a.device().str()));
    }
    return absl::OkStatus();
  }

  absl::Status Usable() const {
    if (!broken_.load()) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    return absl::Status(failure_.code(), absl::StrCat("communicator broken by an earlier failure: ",
                                                      failure_.message()));
  }

  // Aborts the communicator with `status` (once). Requires mu_.
  void AbortLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (aborted_) return;
    failure_ = status;
    broken_.store(true);
    aborted_ = true;
    ncclCommAbort(comm_);
  }

  // Enqueues non-blocking NCCL work `fn` and waits until NCCL has taken it.
  template <typename Fn>
  absl::Status Enqueue(absl::string_view op, Fn&& fn) {
    if (absl::Status s = Usable(); !s.ok()) return s;
    cudaSetDevice(device_);
    absl::MutexLock lock(&mu_);
    if (aborted_) return failure_;
    ncclResult_t rc = fn();
    absl::Status status;
    if (rc == ncclInProgress || rc == ncclSuccess) {
      status = AwaitComm(comm_, absl::Now() + timeout_, op);
    } else {
      status = NcclError(rc, op);
    }
    if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument) AbortLocked(status);
    return status;
  }

  // A device operation on the own stream, ordered after and before the caller's current stream.
  template <typename Fn>
  absl::Status Collective(absl::string_view op, Fn&& fn) {
    return Collective(op, /*join=*/true, std::forward<Fn>(fn));
  }

  // As above; with `join` false the caller's stream does not wait (JoinPending or
  // JoinPendingExceptNewest does that later, waiting for an end event kept in started_).
  template <typename Fn>
  absl::Status Collective(absl::string_view op, bool join, Fn&& fn) {
    cudaSetDevice(device_);
    cudaStream_t current = c10::cuda::getCurrentCUDAStream(device_).stream();
    cudaEvent_t before = nullptr, after = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&before, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(before, current);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(stream_, before, 0);
    if (before != nullptr) cudaEventDestroy(before);
    if (err != cudaSuccess) return CudaError(err, op);
    if (absl::Status s = Enqueue(op, fn); !s.ok()) return s;
    err = cudaEventCreateWithFlags(&after, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(after, stream_);
    if (err == cudaSuccess && join) err = cudaStreamWaitEvent(current, after, 0);
    cudaEvent_t end = nullptr;  // The watchdog destroys `after`; the join needs its own event.
    if (err == cudaSuccess && !join) err = cudaEventCreateWithFlags(&end, cudaEventDisableTiming);
    if (err == cudaSuccess && !join) err = cudaEventRecord(end, stream_);
    if (err != cudaSuccess) {
      if (after != nullptr) cudaEventDestroy(after);
      if (end != nullptr) cudaEventDestroy(end);
      return CudaError(err, op);
    }
    if (end != nullptr) started_.push_back(end);
    absl::MutexLock lock(&mu_);
    pending_.push_back({after, absl::Now()});
    return absl::OkStatus();
  }

  // Waits on the host until every operation enqueued so far finished, or the communicator broke
  // (the watchdog aborts it on a timeout, which makes Usable() fail). Polls an event of its own
  // rather than waiting for the watchdog to retire the pending list (it looks every 5 ms, too
  // coarse for the denoise loop's per-step control message).
  absl::Status WaitIdle(absl::string_view op) {
    cudaSetDevice(device_);
    cudaEvent_t done = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(done, stream_);
    if (err != cudaSuccess) {
      if (done != nullptr) cudaEventDestroy(done);
      return CudaError(err, op);
    }
    const absl::Time spin_until = absl::Now() + absl::Milliseconds(2);
    absl::Status status;
    while (true) {
      if (status = Usable(); !status.ok()) break;
      const cudaError_t q = cudaEventQuery(done);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) {
        status = CudaError(q, op);
        break;
      }
      if (stop_.HasBeenNotified()) {
        status = absl::CancelledError(absl::StrCat(op, ": communicator shutting down"));
        break;
      }
      if (absl::Now() < spin_until) {
        std::this_thread::yield();
      } else {
        absl::SleepFor(absl::Microseconds(50));
      }
    }
    cudaEventDestroy(done);
    return status;
  }

  // Retires finished operations, aborts on a timed-out one or an asynchronous error.
  void Watchdog() {
    cudaSetDevice(device_);
    while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(5))) {
      absl::MutexLock lock(&mu_);
      if (aborted_) continue;
      while (!pending_.empty()) {
        cudaError_t q = cudaEventQuery(pending_.front().event);
        if (q == cudaErrorNotReady) break;
        cudaEventDestroy(pending_.front().event);
        pending_.pop_front();
        if (q != cudaSuccess) {
          AbortLocked(CudaError(q, "nccl operation"));
          break;
        }
      }
      if (aborted_) continue;
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess &&
          state != ncclInProgress) {
        AbortLocked(NcclError(state, "asynchronous error"));
        continue;
      }
      if (!pending_.empty() && absl::Now() - pending_.front().enqueued > timeout_) {
        AbortLocked(absl::DeadlineExceededError(
            absl::StrCat("nccl: an operation did not finish within ",
                         absl::FormatDuration(timeout_), " (a peer is missing)")));
      }
    }
  }

  ncclComm_t comm_;
  const int rank_;
  const int size_;
  const int device_;
  const absl::Duration timeout_;
  cudaStream_t stream_;
  std::atomic<bool> broken_{false};
  mutable absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  // End events of the operations begun without a join and not joined yet, oldest first. The
  // caller's thread only (one at a time), like the operations themselves.
  std::deque<cudaEvent_t> started_;
  absl::Notification stop_;
  std::thread watchdog_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const CommunicatorOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: rank ", options.rank, " outside a group of ", options.size));
  }
  cudaError_t err = cudaSetDevice(options.device_index);
  if (err != cudaSuccess)
    return CudaError(err, absl::StrCat("nccl: device ", options.device_index));
  auto rendezvous = JoinRendezvous(options.leader_address, options.rank, options.timeout);
  if (!rendezvous.ok()) return rendezvous.status();
  ncclUniqueId id;
  if (options.rank == 0) {
    ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) return NcclError(rc, "unique id");
    absl::Status s =
        (*rendezvous)
            ->store->Set("nccl/world/id",
                         absl::string_view(reinterpret_cast<const char*>(&id), sizeof(id)));
    if (!s.ok()) return s;
  } else {
    auto value = (*rendezvous)->store->Get("nccl/world/id", options.timeout);
    if (!value.ok()) return value.status();
    if (value->size() != sizeof(id)) return absl::InternalError("nccl: malformed unique id");
    std::memcpy(&id, value->data(), sizeof(id));
  }
  ncclComm_t comm = nullptr;
  ncclConfig_t config = NonBlockingConfig();
  absl::Time deadline = absl::Now() + options.timeout;
  ncclResult_t rc = ncclCommInitRankConfig(&comm, options.size, id, options.rank, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return NcclError(rc, "init");
  }
  absl::Status s = AwaitComm(comm, deadline, "init");
  if (!s.ok()) {
    ncclCommAbort(comm);
    return s;
  }
  // Initialisation is collective, so every rank has read the id: the store may go now.
  return NcclCommunicator::Wrap(comm, options.rank, options.size, options.device_index,
                                options.timeout);
}

}  // namespace dgrid
