// A pool of buffers registered with a UCP context (ucp_mem_map), so that publishing a tensor costs
// one copy and no registration.
//
// Host buffers are allocated by UCX itself (ucp_mem_map with UCP_MEM_MAP_ALLOCATE) when
// `ucx_host_memory` is set: UCX then takes them from a shared-memory domain (sysv or posix) when
// its context has one, which lets a consumer on the same host map them (ucp_rkey_ptr) and copy them
// directly. Otherwise they come from LibTorch, pinned (page-locked through LibTorch's CUDA host
// allocator) when LibTorch has CUDA, plain host memory otherwise. Device buffers are CUDA memory of
// one device, used only when UCX reported CUDA support. Sizes are rounded up to one of 8 classes
// per power of two (at most 12.5% slack), and released buffers are kept per class for reuse up to
// `max_cached_bytes`; the rest are deregistered and freed.
//
// Thread safety: every method may be called from any thread. The pool must outlive every Buffer it
// handed out and the UCP context must outlive the pool.
#ifndef DGRID_TRANSPORT_UCX_REGISTERED_POOL_H_
#define DGRID_TRANSPORT_UCX_REGISTERED_POOL_H_

#include <ucp/api/ucp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::ucx {

// One registered buffer. `storage` is a LibTorch tensor over the memory: it owns it (CUDA memory
// then comes from the caching allocator), or, when `ucx_allocated`, is a non-owning view of memory
// UCX allocated. `memh` is the registration and `packed_rkey` what a peer needs to read it.
struct RegisteredBuffer {
  RegisteredBuffer();
  ~RegisteredBuffer();
  void* address = nullptr;
  size_t capacity = 0;
  int device = -1;             // CUDA ordinal, -1 for host memory
  bool ucx_allocated = false;  // memory owned by `memh` (freed by ucp_mem_unmap), not `storage`
  ucp_mem_h memh = nullptr;
  std::string packed_rkey;
  std::unique_ptr<at::Tensor> storage;
};

class RegisteredPool {
 public:
  struct Stats {
    uint64_t registered_bytes = 0;  // all registered buffers, leased and cached
    uint64_t leased_bytes = 0;      // buffers handed out and not yet returned
    uint64_t leased_buffers = 0;
  };

  RegisteredPool(ucp_context_h context, uint64_t max_cached_bytes, bool ucx_host_memory)
      : context_(context), max_cached_bytes_(max_cached_bytes), ucx_host_memory_(ucx_host_memory) {}
  ~RegisteredPool();

  // A buffer of at least `bytes` bytes on `device` (-1: host). RESOURCE_EXHAUSTED when memory or
  // registration fails.
  absl::StatusOr<std::unique_ptr<RegisteredBuffer>> Acquire(size_t bytes, int device);
  // Gives a buffer back (cached or freed).
  void Return(std::unique_ptr<RegisteredBuffer> buffer);
  // Deregisters and frees every cached buffer.
  void Trim();
  Stats stats() const;

  // The class a request of `bytes` is rounded up to.
  static size_t SizeClass(size_t bytes);

 private:
  void Free(std::unique_ptr<RegisteredBuffer> buffer);
  // Fill `buffer` (capacity and device set) with memory and its registration.
  absl::Status AllocateWithUcx(RegisteredBuffer& buffer);
  absl::Status AllocateWithTorch(RegisteredBuffer& buffer);

  ucp_context_h context_;
  const uint64_t max_cached_bytes_;
  const bool ucx_host_memory_;
  mutable absl::Mutex mutex_;
  // Keyed by (device, size class).
  absl::flat_hash_map<std::pair<int, size_t>, std::vector<std::unique_ptr<RegisteredBuffer>>> free_
      ABSL_GUARDED_BY(mutex_);
  uint64_t cached_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::ucx

#endif  // DGRID_TRANSPORT_UCX_REGISTERED_POOL_H_
