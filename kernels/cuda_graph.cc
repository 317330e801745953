#include "kernels/cuda_graph.h"

#include <exception>
#include <optional>
#include <utility>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#ifdef DGRID_WITH_CUDA_KERNELS
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dgrid {

struct GraphCache::Entry {
  absl::Mutex mu;  // held while the static tensors and the graph are in use
  int calls = 0;   // calls seen for this key
  bool eager_only = false;
#ifdef DGRID_WITH_CUDA_KERNELS
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  // Recorded after the last replay's copy of the output, on that caller's stream.
  std::unique_ptr<at::cuda::CUDAEvent> last_use;
#endif
  std::vector<at::Tensor> static_inputs;
  at::Tensor static_output;
};

GraphCache::GraphCache(int max_graphs, FailureLog log_failure)
    : max_graphs_(max_graphs), log_failure_(std::move(log_failure)) {}

GraphCache::~GraphCache() = default;

bool GraphCache::Built() {
#ifdef DGRID_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

std::string GraphCache::KeyOf(const std::string& what, const std::vector<at::Tensor>& inputs) {
  std::vector<std::string> parts = {what};
  for (const at::Tensor& t : inputs) {
    if (!t.defined()) {
      parts.push_back("undefined");
      continue;
    }
    parts.push_back(absl::StrCat(c10::toString(t.scalar_type()), "[", absl::StrJoin(t.sizes(), ","),
                                 "]@", t.device().str()));
  }
  return absl::StrJoin(parts, ";");
}

GraphCache::Stats GraphCache::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

namespace {

// fn(inputs) with an exception turned into INTERNAL (the callers' own TorchCall maps the rest).
absl::StatusOr<at::Tensor> CallCatching(const GraphCache::Fn& fn,
                                        const std::vector<at::Tensor>& inputs) {
  try {
    return fn(inputs);
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace

absl::StatusOr<at::Tensor> GraphCache::Run(const std::string& key,
                                           const std::vector<at::Tensor>& inputs, const Fn& fn) {
  const auto eager = [&]() {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.eager;
    }
    return fn(inputs);
  };
#ifndef DGRID_WITH_CUDA_KERNELS
  return eager();
#else
  // One CUDA device for every input (mixed devices, or none, run eagerly), made current for the
  // capture and the replays whatever device the calling thread had current.
  std::optional<c10::Device> device;
  for (const at::Tensor& t : inputs) {
    if (!t.defined() || t.is_cpu()) continue;
    if (!t.is_cuda() || (device && *device != t.device())) return eager();
    device = t.device();
  }
  if (!device || max_graphs_ <= 0) return eager();
  const c10::cuda::CUDAGuard on_device(*device);

  std::shared_ptr<Entry> entry;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Entry>& slot = entries_[key];
    if (slot == nullptr) slot = std::make_shared<Entry>();
    entry = slot;
  }
  if (!entry->mu.TryLock()) return eager();  // another thread replays this key's graph now
  struct Unlock {
    absl::Mutex& mu;
    ~Unlock() { mu.Unlock(); }
  } unlock{entry->mu};

  if (entry->eager_only || ++entry->calls == 1) return eager();
  const at::cuda::CUDAStream current = at::cuda::getCurrentCUDAStream(device->index());
  // The previous user of the static tensors may have been on another stream: its replay and copy
  // of the output come before this call's writes.
  if (entry->last_use != nullptr) entry->last_use->block(current);

  if (entry->graph == nullptr) {
    bool room = true;
    {
      absl::MutexLock lock(&mu_);
      room = captured_ < max_graphs_;
      if (room) ++captured_;
    }
    if (!room) {
      entry->eager_only = true;
      return eager();
    }
    std::string failure;
    try {
      entry->static_inputs.clear();
      for (const at::Tensor& t : inputs) {
        entry->static_inputs.push_back(t.defined() ? t.clone() : at::Tensor());
      }
      // Capture on a side stream that first waits for the current one (the copies above), into a
      // pool of its own, so that a failed capture's pool can be ended and released here.
      const at::cuda::CUDAStream side =
          at::cuda::getStreamFromPool(/*isHighPriority=*/false, device->index());
      at::cuda::CUDAEvent inputs_ready;
      inputs_ready.record(current);
      inputs_ready.block(side);
      auto graph = std::make_unique<at::cuda::CUDAGraph>();
      const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
      absl::StatusOr<at::Tensor> out;
      bool ended = false;
      {
        c10::cuda::CUDAStreamGuard on_side(side);
        graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
        out = CallCatching(fn, entry->static_inputs);
        try {
          graph->capture_end();
          ended = true;
        } catch (const std::exception& e) {
          if (out.ok()) out = absl::InternalError(e.what());
        }
      }
      if (!ended) {
        // capture_end threw before it told the allocators that the capture is over: without this
        // they would keep routing this stream's allocations to the pool (through a filter that
        // refers to the graph about to be destroyed) and keep the pool for good.
        out = absl::InternalError(out.ok() ? "capture did not end" : out.status().ToString());
        try {
          c10::cuda::CUDACachingAllocator::endAllocateToPool(device->index(), pool);
          c10::cuda::CUDACachingAllocator::releasePool(device->index(), pool);
        } catch (const std::exception&) {
        }
        try {
          at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(pool);
          at::getHostAllocator(at::kCUDA)->release_pool(pool);
        } catch (const std::exception&) {
        }
        // It also threw before the device's CUDA generator heard the capture end (its epilogue),
        // so the generator still believes a capture runs and refuses every later random draw on
        // the device ("Offset increment outside graph capture", seen on an H100). A capture with
        // nothing in it, begun and ended, runs that prologue and epilogue and clears it.
        // (On the side stream: PyTorch refuses captures on the default stream.)
        try {
          c10::cuda::CUDAStreamGuard on_side(side);
          at::cuda::CUDAGraph reset;
          reset.capture_begin(at::cuda::graph_pool_handle(), cudaStreamCaptureModeThreadLocal);
          reset.capture_end();
        } catch (const std::exception&) {
        }
      }
      at::cuda::CUDAEvent captured;
      captured.record(side);
      captured.block(current);
      if (out.ok()) {
        entry->static_output = *std::move(out);
        entry->graph = std::move(graph);
      } else {
        failure = out.status().ToString();
      }
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (entry->graph == nullptr) {
      entry->eager_only = true;
      entry->static_inputs.clear();
      {
        absl::MutexLock lock(&mu_);
        ++stats_.failures;
        --captured_;
      }
      if (log_failure_) log_failure_(absl::StrCat("capture of ", key, " failed: ", failure));
      // Nothing of the failed capture ran (a capture only records); the call itself runs eagerly.
      return eager();
    }
    absl::MutexLock lock(&mu_);
    ++stats_.captures;
  } else {
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].defined()) entry->static_inputs[i].copy_(inputs[i]);
    }
  }
  entry->graph->replay();
  {
    absl::MutexLock lock(&mu_);
    ++stats_.replays;
  }
  // A copy: the static output is overwritten by the next replay, which another thread may start
  // as soon as this one returns (after waiting for last_use, on its own stream).
  at::Tensor result = entry->static_output.clone();
  if (entry->last_use == nullptr) entry->last_use = std::make_unique<at::cuda::CUDAEvent>();
  entry->last_use->record(current);
  return result;
#endif
}

}  // namespace dgrid
