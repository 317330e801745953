// Layerwise offload of a diffusion transformer's blocks (--dit-offload layerwise, issue #20 item
// 1).
//
// The weights of each layer (a transformer block) live in host memory, pinned when the compute
// device is a CUDA GPU (plain CPU memory otherwise); a forward pass copies each layer to the device
// just ahead of its use. While layer i runs, layers i+1 .. i+prefetch are being copied on a copy
// stream, so at most prefetch + 1 layers are on the device at once. Family-agnostic: a layer is a
// list of tensors (FLUX and Wan flatten their block structs into one, flux_transformer.cc and
// wan_transformer.cc).
//
// On CUDA: the copies run on a stream from LibTorch's pool and record a `ready` event; compute
// waits on it before it uses the layer. A layer's device copy is dropped only after a `done` event
// recorded on the compute stream behind the layer's last use has been made a dependency of the
// copy stream, so the caching allocator (which hands the freed memory to later copies on that
// stream) never lets a copy overwrite weights that compute still reads. On a CPU (or any device
// without streams) the same code runs with plain synchronous copies, which is what the CPU tests
// exercise. The arithmetic of the layers is unchanged: outputs equal a run without offload bit for
// bit.
//
// Ownership: LayerwiseOffload owns the host copies; it is immutable after Create and may be shared
// by threads. A Pass belongs to one forward pass on one thread and owns that pass's device copies;
// several passes at once each hold their own (prefetch + 1 layers each). Errors: Create gives
// INVALID_ARGUMENT for a prefetch below 1 and the TorchCall mapping for allocation failures;
// Pass::Acquire throws c10::Error (callers run it inside TorchCall, as model code does).
#ifndef DGRID_SERVICES_DENOISER_MODELS_LAYERWISE_OFFLOAD_H_
#define DGRID_SERVICES_DENOISER_MODELS_LAYERWISE_OFFLOAD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/statusor.h"

namespace dgrid {

class LayerwiseOffload {
 public:
  // Test seam: called as a layer is handed to compute, with its index and the (ascending) indices
  // of every layer whose device copy this pass holds at that moment, that layer included.
  using ResidencyObserverForTesting =
      std::function<void(int64_t layer, const std::vector<int64_t>& resident)>;

  // Takes `layers` (each a list of tensors on the CPU; undefined entries stay undefined, views of
  // one storage are copied once and stay views of one copy) into host memory: pinned when
  // `device` is CUDA, kept as they are otherwise. `prefetch` >= 1 (DitOffload::PrefetchDepth).
  // Each layer's list is emptied as it is taken, so a caller that moved its tensors in frees the
  // unpinned originals one layer at a time.
  static absl::StatusOr<std::shared_ptr<const LayerwiseOffload>> Create(
      std::vector<std::vector<at::Tensor>> layers, c10::Device device, int64_t prefetch);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t prefetch() const { return prefetch_; }
  c10::Device device() const { return device_; }
  // The host tensors of layer `i`, in the order Create got them.
  const std::vector<at::Tensor>& host_layer(int64_t i) const { return layers_[i].host; }
  // Bytes of host memory the layers take (each storage counted once).
  int64_t host_bytes() const { return host_bytes_; }

  // One forward pass's window of device copies. Layers are asked for in non-decreasing order.
  class Pass {
   public:
    // `observer` may be null; it must outlive the pass.
    Pass(const LayerwiseOffload& offload, const ResidencyObserverForTesting* observer);
    // Drops the remaining device copies (behind the compute enqueued so far).
    ~Pass();
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

    // Layer `i`'s tensors on the device, ready for work enqueued on the current stream from now
    // on. Drops the layers before `i` (their compute has been enqueued), starts the copies of
    // layers up to i + prefetch, and makes the current stream wait for layer i's. The reference
    // is valid until the next Acquire. Throws c10::Error when `i` is out of range or before a
    // layer already dropped.
    const std::vector<at::Tensor>& Acquire(int64_t i);

   private:
    struct Resident;
    void Issue(int64_t i);
    void ReleaseBefore(int64_t i);

    const LayerwiseOffload& offload_;
    const ResidencyObserverForTesting* observer_;
    std::map<int64_t, std::unique_ptr<Resident>> resident_;
    int64_t next_issue_ = 0;  // The first layer not copied yet.
    int64_t released_ = 0;    // Layers below this were dropped.
    struct Streams;
    std::unique_ptr<Streams> streams_;  // CUDA only.
  };

 private:
  // A layer's host tensors as views of its distinct storages (`bases`, each a flat tensor over a
  // whole storage); `views` says how to rebuild each tensor from a base.
  struct View {
    int64_t base = -1;  // -1: undefined tensor.
    std::vector<int64_t> sizes, strides;
    int64_t offset = 0;
  };
  struct Layer {
    std::vector<at::Tensor> host;
    std::vector<at::Tensor> bases;
    std::vector<View> views;
  };
  LayerwiseOffload() = default;

  std::vector<Layer> layers_;
  c10::Device device_ = c10::Device(c10::kCPU);
  int64_t prefetch_ = 1;
  int64_t host_bytes_ = 0;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_LAYERWISE_OFFLOAD_H_
