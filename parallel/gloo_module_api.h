// The table of functions that libdgrid_gloo_module.so (parallel/gloo_module) exports.
//
// Why a separately loaded module: LibTorch (libtorch_cpu.so) bundles its own, newer Gloo and
// exports its symbols. Linked into one process with Debian's libgloo, calls from dgrid code land in
// torch's copy for some functions and in Debian's for others (different class layouts): the
// process crashes. dlopen()ing the wrapper with RTLD_LOCAL | RTLD_DEEPBIND binds the module's and
// libgloo's references to Debian's libgloo. The module is torch-free; tensors cross as pointers.
//
// Both sides are built by the same compiler against the same libstdc++, so C++ types may cross.
// Every call returns a GlooResult; on failure `error` says what happened.
#ifndef DGRID_PARALLEL_GLOO_MODULE_API_H_
#define DGRID_PARALLEL_GLOO_MODULE_API_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace dgrid::gloo_module {

inline constexpr int kGlooModuleVersion = 1;
inline constexpr char kGlooModuleEntry[] = "dgrid_gloo_module";

enum GlooResult : int {
  kOk = 0,
  kTimedOut = 1,     // A peer did not arrive in time.
  kUnavailable = 2,  // A connection broke (a peer died).
  kInternal = 3,     // Anything else Gloo threw.
};

// Element types of allreduce_sum.
enum GlooDType : int { kFloat32 = 0, kFloat64 = 1, kInt32 = 2, kInt64 = 3 };

// The rendezvous store, served by the caller (parallel/tcp_store.h).
struct StoreCallbacks {
  void* self;
  GlooResult (*set)(void* self, const std::string& key, const std::string& value,
                    std::string* error);
  // Waits up to timeout_ms for the key.
  GlooResult (*get)(void* self, const std::string& key, int64_t timeout_ms, std::string* value,
                    std::string* error);
};

struct GlooModuleApi {
  int version;
  // A TCP transport device listening on `hostname` (an address of this host).
  void* (*create_device)(const std::string& hostname, std::string* error);
  void (*destroy_device)(void* device);
  // A full-mesh context of `size` ranks whose addresses are exchanged under `prefix` in `store`.
  // Returns nullptr on failure with *result set.
  void* (*connect)(void* device, const StoreCallbacks& store, const std::string& prefix, int rank,
                   int size, int64_t timeout_ms, GlooResult* result, std::string* error);
  void (*destroy_context)(void* context);
  GlooResult (*alltoall)(void* context, const void* in, void* out, size_t nbytes,
                         int64_t timeout_ms, std::string* error);
  GlooResult (*allgather)(void* context, const void* in, void* out, size_t in_bytes,
                          int64_t timeout_ms, std::string* error);
  GlooResult (*allreduce_sum)(void* context, void* data, size_t numel, GlooDType dtype,
                              int64_t timeout_ms, std::string* error);
  GlooResult (*broadcast)(void* context, void* data, size_t nbytes, int root, int64_t timeout_ms,
                          std::string* error);
  // Sends to `dst` and receives from `src` at once; slots number the messages of each pair.
  GlooResult (*sendrecv)(void* context, const void* send, size_t send_bytes, int dst,
                         uint64_t send_slot, void* recv, size_t recv_bytes, int src,
                         uint64_t recv_slot, int64_t timeout_ms, std::string* error);
  GlooResult (*barrier)(void* context, int64_t timeout_ms, std::string* error);
};

}  // namespace dgrid::gloo_module

#endif  // DGRID_PARALLEL_GLOO_MODULE_API_H_
