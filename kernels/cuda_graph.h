// CUDA graph capture and replay of a fixed-shape function of tensors (issue #19 item 1: the launch
// gaps of a denoising step at small image sizes, where the host's per-kernel work and the
// device's per-launch latency weigh against short kernels).
//
// GraphCache::Run(key, inputs, fn) computes fn(inputs). For a key it has not seen it runs fn
// eagerly (the warm-up: lazy initialisation, library handles, plans and the current stream's
// workspaces happen outside any capture; a per-stream workspace of the capture's side stream may
// still be allocated inside it, from the graph's pool). The second time it copies the inputs into
// static tensors of its own, captures fn on them into a CUDA graph (on a side stream of the inputs'
// device, thread-local capture mode, a pool of its own), and replays it; from then on each call
// copies the inputs in, replays and returns a copy of the static output. So a key must mean "the
// same work": the same shapes, dtypes, device and the same branches inside fn; the values may
// change. fn must not read tensor values on the host or copy to or from pageable host memory
// (both end a capture); a capture that fails (an exception or an error Status from fn, or CUDA
// refusing the capture) is logged once, its pool is ended and released, and the key then always
// runs eagerly (`log_failure` is told why). While one thread replays a key's graph, another
// thread's call with the same key runs eagerly rather than wait (the static tensors are shared);
// a later user on another stream first waits for the previous replay's copy of the output (an
// event), so the static tensors are never overwritten early.
//
// The inputs' CUDA device (all on one; CPU tensors are passed through) is made current for the
// capture and each replay, whatever device the calling thread has current. On the CPU, in builds
// without CUDA (DGRID_WITH_CUDA off), with inputs on several devices, or none on CUDA, Run is
// fn(inputs). The result is the same either way: a graph replays exactly the kernels fn launched
// during capture, on the same data, so its output equals the eager output bit for bit (kernels
// whose choice depends on pointers' alignment aside; the static tensors are fresh allocations,
// aligned as any other).
//
// Memory: each captured key keeps its pool (the activations fn allocates) and its static inputs
// and output for as long as the cache lives, on top of what the caching allocator keeps for eager
// work; at most `max_graphs` keys are captured (later new keys run eagerly), so a cache holds at
// most that many forward passes' activations. The planner's memory model does not count them yet.
//
// Thread safety: Run may be called from several threads at once.
#ifndef DGRID_KERNELS_CUDA_GRAPH_H_
#define DGRID_KERNELS_CUDA_GRAPH_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace dgrid {

class GraphCache {
 public:
  using Fn = std::function<absl::StatusOr<at::Tensor>(const std::vector<at::Tensor>& inputs)>;

  struct Stats {
    int64_t eager = 0;     // calls run eagerly (warm-ups, busy keys, failed or over-limit keys)
    int64_t captures = 0;  // graphs captured
    int64_t replays = 0;   // calls answered by a replay (a capture's first replay included)
    int64_t failures = 0;  // captures that failed (those keys run eagerly from then on)
  };

  // Told why a capture failed (the key then runs eagerly); may be empty.
  using FailureLog = std::function<void(const std::string& why)>;

  explicit GraphCache(int max_graphs = 4, FailureLog log_failure = nullptr);
  ~GraphCache();
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;

  // fn(inputs), captured and replayed as the header says. `inputs` may hold undefined tensors
  // (passed through as undefined). Errors: fn's.
  absl::StatusOr<at::Tensor> Run(const std::string& key, const std::vector<at::Tensor>& inputs,
                                 const Fn& fn);

  Stats stats() const;

  // Whether this build can capture graphs at all (DGRID_WITH_CUDA).
  static bool Built();

  // A key for `inputs`: shape, dtype and device of each (undefined ones too), prefixed by `what`.
  static std::string KeyOf(const std::string& what, const std::vector<at::Tensor>& inputs);

 private:
  struct Entry;
  const int max_graphs_;
  const FailureLog log_failure_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  int captured_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dgrid

#endif  // DGRID_KERNELS_CUDA_GRAPH_H_
