// TensorChannel over UCX, NIXL-style: the producer copies a tensor into a registered buffer and
// hands out a lease on it (TensorRef.ucx: worker address, address, packed rkey, lease id, expiry);
// the consumer pulls the bytes with ucp_get_nbx and releases the lease.
//
// Lease protocol (why a pull never returns recycled bytes): each buffer ends with an 8-byte lease
// word that holds the lease id while the lease is live and is zeroed before the buffer is reused.
// After pulling the data the consumer reads the word again; if it still holds the lease id, the
// buffer was not recycled before the data had been read. Releases travel as a UCX active message on
// the endpoint the pull just used (no gRPC channel back to the producer is needed, and the
// message costs one eager send); a lease that is never released expires and a reaper thread
// reclaims it, so a consumer that dies leaks nothing.
//
// Tensors smaller than `inline_threshold_bytes` (and empty ones) go inline in the TensorRef.
//
// Thread safety: Publish / Fetch / Release may be called from any thread. Errors: Fetch gives
// UNAVAILABLE when the producer is gone, unreachable or does not answer within fetch_timeout,
// DEADLINE_EXCEEDED when the lease expired before the pull, FAILED_PRECONDITION when the lease was
// released or reclaimed during the pull, DATA_LOSS when the pulled bytes do not match the
// reference's CRC-32C, INVALID_ARGUMENT for an inconsistent reference.
#ifndef DGRID_TRANSPORT_UCX_UCX_CHANNEL_H_
#define DGRID_TRANSPORT_UCX_UCX_CHANNEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/tensor_channel.h"
#include "transport/ucx/registered_pool.h"
#include "transport/ucx/ucx_worker.h"

namespace dgrid {

struct UcxChannelOptions {
  std::string tls;  // UCX_TLS syntax; empty: UCX's default
  uint64_t inline_threshold_bytes = uint64_t{64} << 10;
  absl::Duration lease_duration = absl::Seconds(60);
  absl::Duration fetch_timeout = absl::Seconds(30);
  uint64_t max_cached_bytes = uint64_t{1} << 30;  // registered memory kept for reuse
  // Host buffers allocated by UCX (shared memory when UCX_TLS has shm: consumers on this host copy
  // them directly); false: LibTorch memory, pinned when LibTorch has CUDA (faster device-to-host
  // staging on a GPU host whose UCX has no CUDA transports, but same-host pulls go through UCX
  // gets).
  bool ucx_host_memory = true;
  // CRC-32C of host-memory tensors: set in the TensorRef on Publish (fused with the copy into the
  // buffer), checked on Fetch when the reference carries one (DATA_LOSS on a mismatch).
  bool checksum = true;
};

class UcxChannel final : public TensorChannel {
 public:
  struct Stats {
    uint64_t registered_bytes = 0;
    uint64_t leased_bytes = 0;
    uint64_t live_leases = 0;
    uint64_t released_leases = 0;
    uint64_t expired_leases = 0;
    uint64_t direct_copies = 0;  // fetches copied from the producer's mapped shared memory
    uint64_t ucx_gets = 0;       // fetches pulled with ucp_get_nbx
  };

  // Starts UCX (context, worker, progress thread) and the lease reaper; logs the memory choice.
  // An error when UCX cannot start.
  static absl::StatusOr<std::unique_ptr<UcxChannel>> Create(const UcxChannelOptions& options);
  // Reclaims every live lease; peers still pulling then fail.
  ~UcxChannel() override;

  absl::StatusOr<v1::TensorRef> Publish(const at::Tensor& tensor) override;
  absl::StatusOr<at::Tensor> Fetch(const v1::TensorRef& ref, absl::string_view field) override;
  void Release(const v1::TensorRef& ref) override;

  Stats stats() const;
  // Frees the cached (unleased) registered buffers.
  void TrimPool() { pool_->Trim(); }
  bool cuda_memory() const { return worker_->cuda_memory(); }
  const std::string& worker_address() const { return worker_->address(); }

 private:
  struct Lease {
    std::unique_ptr<ucx::RegisteredBuffer> buffer;
    size_t word_offset = 0;  // where the lease word lives in the buffer
    absl::Time expiry;
  };

  explicit UcxChannel(const UcxChannelOptions& options) : options_(options) {}
  // Ends lease `id` if it is live: zeroes its word and gives the buffer back to the pool.
  void EndLease(uint64_t id, bool expired);
  void Recycle(Lease lease);
  void ReaperLoop();

  const UcxChannelOptions options_;
  std::unique_ptr<ucx::UcxWorker> worker_;
  std::unique_ptr<ucx::RegisteredPool> pool_;
  std::thread reaper_;

  mutable absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t next_lease_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mutex_);
  uint64_t released_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t expired_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace dgrid

#endif  // DGRID_TRANSPORT_UCX_UCX_CHANNEL_H_
