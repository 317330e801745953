// Collective communication inside a denoiser group.
//
// A Communicator connects the `size()` ranks of one group (or of one subgroup made by Split). Two
// real backends implement it: NCCL (CUDA tensors, its own stream, ordered after the caller's
// current stream with events, no host synchronisation) and Gloo (CPU tensors over TCP). Every
// operation is collective over the communicator's ranks unless said otherwise and must be called by
// all of them in the same order.
//
// Tensors: contiguous, same dtype on every rank; sizes below are in elements of dim 0 unless said.
// Errors: DEADLINE_EXCEEDED when a peer does not arrive within the communicator's timeout
// (CommunicatorOptions::timeout), UNAVAILABLE when a peer is gone (connection closed, NCCL remote
// error); after either the communicator is broken and every later call fails fast with the same
// code (`healthy()` turns false). INVALID_ARGUMENT for shape or dtype mismatches detectable
// locally. No call blocks forever.
//
// Threads: one thread at a time per communicator (the denoise loop's).
#ifndef DGRID_PARALLEL_COMMUNICATOR_H_
#define DGRID_PARALLEL_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid {

struct CommunicatorOptions {
  // Where the group meets: "host:port" of the leader's rendezvous listener (rank 0 listens, the
  // others connect). From configuration or LeaderWorkerSet's LWS_LEADER_ADDRESS.
  std::string leader_address;
  int rank = 0;
  int size = 1;
  // Bound on every collective and on the rendezvous itself.
  absl::Duration timeout = absl::Seconds(60);
  // NCCL only: the CUDA device of this rank.
  int device_index = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "gloo" or "nccl".
  virtual absl::string_view backend() const = 0;
  // False once a call failed with DEADLINE_EXCEEDED or UNAVAILABLE.
  virtual bool healthy() const = 0;

  // A communicator over `ranks` (ranks of this communicator, in the order that becomes the new
  // ranks). Collective over *all* ranks of this communicator; a rank not in `ranks` gets nullptr.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks) = 0;

  // in: [size() * n, ...]; chunk j (rows [j*n, (j+1)*n)) goes to rank j; out (same shape, allocated
  // by the caller) gets rank j's chunk for this rank at rows [j*n, (j+1)*n).
  virtual absl::Status AllToAll(const at::Tensor& in, at::Tensor& out) = 0;
  // AllToAll of several tensor pairs (ins[i] -> outs[i]) as one operation where the backend can
  // group them (NCCL: one group of sends and receives); others run them one after the other.
  virtual absl::Status AllToAllMany(const std::vector<at::Tensor>& ins,
                                    std::vector<at::Tensor>& outs);
  // AllToAllMany that the caller may overlap with its own work, as SendRecvStart: `outs` may be
  // read, and `ins` / `outs` overwritten or freed, only after JoinPending(); several may be in
  // flight (they run in call order). Errors as AllToAllMany (some only show at JoinPending).
  // Backends without asynchronous work (Gloo) complete it here.
  virtual absl::Status AllToAllManyStart(const std::vector<at::Tensor>& ins,
                                         std::vector<at::Tensor>& outs) {
    return AllToAllMany(ins, outs);
  }
  // in: [n, ...]; out: [size() * n, ...], rank j's input at rows [j*n, (j+1)*n).
  virtual absl::Status AllGather(const at::Tensor& in, at::Tensor& out) = 0;
  // Elementwise sum over ranks, in place.
  virtual absl::Status AllReduceSum(at::Tensor& tensor) = 0;
  // root's `tensor` is copied into every rank's `tensor` (same shape everywhere).
  virtual absl::Status Broadcast(at::Tensor& tensor, int root) = 0;
  // Sends `send` to rank `dst` and receives `recv` from rank `src` at the same time (a ring step).
  // Point-to-point between the two peers; the others need not take part.
  virtual absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src) = 0;
  // SendRecv that the caller may overlap with its own work: `recv` may be read and `send`
  // overwritten only after JoinPending(). The caller's work issued before the call is ordered
  // before the transfer, work issued after it may run alongside. Errors as SendRecv (some only
  // show at JoinPending). Backends without asynchronous work (Gloo) complete it here.
  virtual absl::Status SendRecvStart(const at::Tensor& send, int dst, at::Tensor& recv, int src) {
    return SendRecv(send, dst, recv, src);
  }
  // Orders the caller's later work after every operation begun with a *Start call (NCCL: the
  // caller's current stream waits for the communicator's stream; no host synchronisation).
  virtual absl::Status JoinPending() { return absl::OkStatus(); }
  // AllGather with SendRecvStart's contract: `out` may be read (and `in` overwritten, and either
  // freed) only once joined. For a pipeline that keeps later gathers in flight (sharded weights'
  // prefetch) JoinPendingExceptNewest joins the older ones only.
  virtual absl::Status AllGatherStart(const at::Tensor& in, at::Tensor& out) {
    return AllGather(in, out);
  }
  // JoinPending for all but the `newest` most recently begun operations of the *Start calls not
  // joined yet (they finish in the order begun); newest <= 0 joins them all.
  virtual absl::Status JoinPendingExceptNewest(int /*newest*/) { return absl::OkStatus(); }
  // Raw bytes from root to all (control messages: the request a leader hands to its peers).
  // Non-root ranks get `bytes` replaced by root's.
  virtual absl::Status BroadcastBytes(std::string& bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

// Gloo over TCP (CPU tensors). Rendezvous through a store served by rank 0 at leader_address.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const CommunicatorOptions& options);

// NCCL (CUDA tensors of options.device_index). The unique id travels from rank 0 through the same
// TCP rendezvous. UNIMPLEMENTED in builds without CUDA.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const CommunicatorOptions& options);

// Fills leader_address / rank / size from LWS_LEADER_ADDRESS (+ DGRID_RENDEZVOUS_PORT, default
// 29500), LWS_GROUP_SIZE and LWS_WORKER_INDEX when they are set; leaves `options` alone otherwise.
absl::Status ApplyLeaderWorkerSetEnvironment(CommunicatorOptions& options);

}  // namespace dgrid

#endif  // DGRID_PARALLEL_COMMUNICATOR_H_
