// One UCP context and worker with a progress thread: the UCX half of the tensor data plane.
//
// The worker runs in UCS_THREAD_MODE_MULTI, so any thread may post operations; only the progress
// thread calls ucp_worker_progress (it sleeps on the worker's event fd between events, so an idle
// process costs no CPU). Endpoints to peers are cached by worker address and use
// UCP_ERR_HANDLING_MODE_PEER: a peer that dies fails its endpoint, which is dropped from the cache
// and fails the operations posted on it with UNAVAILABLE.
//
// Ownership: UcxWorker owns the context, the worker, the endpoints and the progress thread; the
// destructor closes them all. Nothing may be in flight when it runs (callers join their threads
// first). Errors are absl statuses (common/ucx_status.h maps UCX codes).
#ifndef DGRID_TRANSPORT_UCX_UCX_WORKER_H_
#define DGRID_TRANSPORT_UCX_UCX_WORKER_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace dgrid::ucx {

struct WorkerOptions {
  // UCX transports (UCX_TLS syntax, e.g. "tcp", "shm", "tcp,cuda_copy"); empty: UCX's default,
  // which honours the UCX_TLS environment variable.
  std::string tls;
};

// A cached connection to one peer worker. Held through shared_ptr while an operation uses it; the
// endpoint is closed when the last holder lets go after the entry left the cache.
class Endpoint;

class UcxWorker {
 public:
  // Called on the progress thread for every release message (see SendRelease) with its lease id.
  using ReleaseHandler = std::function<void(uint64_t lease_id)>;

  // Creates the context and worker and starts the progress thread; `on_release` (may be empty)
  // receives the release messages of peers. An error status when UCX cannot start (no transports,
  // no multi-thread support); callers then fall back to inline.
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(const WorkerOptions& options,
                                                           ReleaseHandler on_release);
  ~UcxWorker();

  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_context_h context() const { return context_; }
  // This worker's address (ucp_worker_get_address), to be put in TensorRefs.
  const std::string& address() const { return address_; }
  // Whether UCX reported CUDA memory support (UCP_ATTR_FIELD_MEMORY_TYPES) at start-up.
  bool cuda_memory() const { return cuda_memory_; }

  // One piece of a pull: `length` bytes at `remote_address` of the peer into local `dest`.
  struct GetRange {
    uint64_t remote_address = 0;
    void* dest = nullptr;
    size_t length = 0;
    // When set, receives the CRC-32C of the range's bytes (computed during the copy on the direct
    // path, over `dest` after the get otherwise).
    uint32_t* crc32c = nullptr;
  };

  // Reads `ranges` of the peer at `worker_address` (memory described by `packed_rkey`) into local
  // memory, in order: a range is read only after the earlier ones. When the peer's memory can be
  // mapped here (a shared-memory segment of a peer on this host; ucp_rkey_ptr) the bytes are copied
  // with memcpy; otherwise each range is a ucp_get_nbx over the endpoint's transports. Blocks until
  // done or `timeout` per range; a dead peer and the timeout both give UNAVAILABLE (after a timeout
  // the endpoint is closed, so the transfer cannot write into `dest` afterwards).
  absl::Status Get(absl::string_view worker_address, absl::string_view packed_rkey,
                   absl::Span<const GetRange> ranges, absl::Duration timeout);

  // How many Get calls copied directly from mapped memory and how many went through UCX gets.
  uint64_t direct_copies() const { return direct_copies_.load(std::memory_order_relaxed); }
  uint64_t ucx_gets() const { return ucx_gets_.load(std::memory_order_relaxed); }

  // Tells the peer at `worker_address` that `lease_id` is free (an active message on the cached
  // endpoint). Fire and forget: failures are logged, the peer's lease expiry covers them.
  void SendRelease(absl::string_view worker_address, uint64_t lease_id);

  // Endpoints currently cached (tests).
  size_t cached_endpoints() const;

 private:
  UcxWorker() = default;
  absl::Status Init(const WorkerOptions& options);
  void ProgressLoop();
  void Wake();
  absl::StatusOr<std::shared_ptr<Endpoint>> Connect(absl::string_view worker_address);
  // memcpy of `ranges` from the peer's memory mapped through `rkey`; UNIMPLEMENTED when it cannot
  // be mapped here (then nothing was copied).
  absl::Status DirectCopy(const Endpoint& ep, ucp_rkey_h rkey, absl::Span<const GetRange> ranges);
  // One ucp_get_nbx of `range`, waited for; on a timeout `ep` is closed and reset.
  absl::Status PostGet(std::shared_ptr<Endpoint>& ep, ucp_rkey_h rkey, const GetRange& range,
                       absl::Duration timeout);
  // Drops `ep` from the cache if it is still there (after a failure).
  void Forget(const std::shared_ptr<Endpoint>& ep);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnReleaseMessage(void* arg, const void* header, size_t header_length,
                                       void* data, size_t length, const ucp_am_recv_param_t* param);

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int event_fd_ = -1;
  int epoll_fd_ = -1;
  std::string address_;
  bool cuda_memory_ = false;
  std::atomic<uint64_t> direct_copies_{0};
  std::atomic<uint64_t> ucx_gets_{0};
  std::atomic<int> releases_in_flight_{0};
  std::atomic<bool> stop_{false};
  // The progress thread has handled some UCX event (a peer connected, a transfer ran): closing
  // lingers (kLinger in ucx_worker.cc).
  std::atomic<bool> talked_{false};
  std::thread progress_thread_;
  ReleaseHandler release_handler_;

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::ucx

#endif  // DGRID_TRANSPORT_UCX_UCX_WORKER_H_
