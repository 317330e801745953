// Model offload of a whole component (--text-encoder-device offload, --vae-device offload; issue
// #20 item 3), as diffusers' enable_model_cpu_offload() does for a pipeline: the component's
// weights rest in host memory and are copied to the compute device just before the component runs
// and dropped from it right after, so that the components of one process take their turns on the
// GPU instead of all sitting there at once.
//
// Mechanism: a model is built from a WeightMap (its FromWeights). ModelResidency keeps the tensors
// that the model took at load (TakenWeights, common/weight_map.h) in host memory: pinned when the
// compute device is CUDA (so the copies may be asynchronous), as loaded otherwise. A use copies
// every tensor to the device, builds the model over the copies and hands it out; when the last
// concurrent use ends, the device copies go. Uses that overlap (several worker threads) share one
// device copy: the weights come in with the first and leave with the last.
//
// On a CPU (--device cpu) the "device" copies are CPU tensors of their own, so the mechanism, its
// bookkeeping and the outputs (bitwise equal to the component without offload: the arithmetic is
// the same, only where the weights come from changes) are what the CPU tests check. On CUDA the
// copies from pinned memory are enqueued without waiting each and then waited for once, so that a
// use on any stream sees the weights; the last use's end waits for the device before the copies
// are freed, so that no kernel still reading them (on any stream) races the allocator's reuse of
// the memory. Kept simple on purpose: nothing overlaps the copies with other work. What only a GPU
// run can show: that these waits are enough, the copy time per use (weight bytes / host-to-device
// bandwidth) and the device memory given back. After the last use on CUDA the caching
// allocator's free blocks go back to the driver (emptyCache), so that other processes on the GPU
// (the denoiser beside an offloaded encoder under dgrid up) can use them; in one process
// (--local) the next component then allocates afresh. So do the blocks a build frees right after
// it (the DiT's FLUX build concatenates projections and drops the pieces, services/denoiser/
// dit_placement.h). The pinned host copy takes more host memory
// than the weights' bytes (host_bytes()): PyTorch's pinned allocator rounds each tensor up to a
// power of two.
//
// Ownership and threads: PlacedModel and ModelResidency are immutable after creation apart from the
// residency bookkeeping, which a mutex guards; Use() may be called from several threads. A pointer
// that Use() returns keeps the device copy until it (and every copy of it) is gone; it must not
// outlive the PlacedModel. Errors: statuses only (TorchCall mapping for a failed copy, e.g.
// RESOURCE_EXHAUSTED when the device is out of memory).
#ifndef DGRID_COMMON_MODEL_OFFLOAD_H_
#define DGRID_COMMON_MODEL_OFFLOAD_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/weight_map.h"

namespace dgrid {

// `device` ("cpu", "cuda", "cuda:N") as a c10::Device; INVALID_ARGUMENT naming `component`
// otherwise. Exposed for LoadPlacedModel.
absl::StatusOr<c10::Device> ParseOffloadDevice(const std::string& device,
                                               absl::string_view component);

// The host copy of one offloaded component's weights and whether they are on the device now.
class ModelResidency {
 public:
  // Builds the model (type-erased) over weights on the compute device.
  using Build = std::function<absl::StatusOr<std::shared_ptr<const void>>(WeightMap& weights)>;
  // Test seam: called after the weights came in (true) and after they left (false), with the
  // component's name, under the residency's lock (so the calls of one component are in order).
  using ObserverForTesting = std::function<void(absl::string_view component, bool on_device)>;

  // Takes `weights` (CPU tensors) as the host copy: pinned when `device` is CUDA, each source
  // tensor let go as soon as its copy is made. `name` names the component in errors and log lines
  // ("text_encoder", "vae", "transformer").
  static absl::StatusOr<std::unique_ptr<ModelResidency>> Create(std::string name, WeightMap weights,
                                                                c10::Device device);
  ~ModelResidency();
  ModelResidency(const ModelResidency&) = delete;
  ModelResidency& operator=(const ModelResidency&) = delete;

  // The model on the device for as long as the returned pointer lives: copied in and built with
  // `build` unless another use holds it already.
  absl::StatusOr<std::shared_ptr<const void>> Acquire(const Build& build) const;

  const std::string& name() const { return name_; }
  c10::Device device() const { return device_; }
  // The host tensors (shared, not copied).
  const WeightMap& host_weights() const { return host_; }
  int64_t host_bytes() const { return host_bytes_; }

  // Residency seam (tests, log lines): whether the device copy exists now, and how many times the
  // weights came in and went out since Create.
  bool on_device() const;
  int64_t moves_in() const;
  int64_t moves_out() const;
  void SetObserverForTesting(ObserverForTesting observer) const;

 private:
  struct State;
  ModelResidency(std::string name, c10::Device device);

  std::string name_;
  c10::Device device_;
  WeightMap host_;
  int64_t host_bytes_ = 0;
  std::shared_ptr<State> state_;  // Shared with the pointers Acquire hands out.
};

// `residency`'s model on its device for as long as the returned pointer lives, built with `build`
// over the device copies of the weights unless another use holds it already (ModelResidency::
// Acquire, typed). For PlacedModel and the DiT's placement (services/denoiser/dit_placement.h).
template <typename Model>
absl::StatusOr<std::shared_ptr<const Model>> AcquireModel(
    const ModelResidency& residency,
    const std::function<absl::StatusOr<Model>(WeightMap& weights)>& build) {
  ASSIGN_OR_RETURN(
      std::shared_ptr<const void> model,
      residency.Acquire([&](WeightMap& weights) -> absl::StatusOr<std::shared_ptr<const void>> {
        ASSIGN_OR_RETURN(Model m, build(weights));
        return std::shared_ptr<const void>(std::make_shared<const Model>(std::move(m)));
      }));
  return std::static_pointer_cast<const Model>(model);
}

// A component's model, either resident on its device for good or offloaded (ModelResidency).
template <typename Model>
class PlacedModel {
 public:
  // Builds a model like `like` (its config and settings) from `weights`.
  using Rebuild = std::function<absl::StatusOr<Model>(const Model& like, WeightMap& weights)>;

  // Resident: the model as loaded.
  explicit PlacedModel(Model model) : host_(std::make_shared<const Model>(std::move(model))) {}

  // Offloaded to `device`: `loaded` is the model loaded on the CPU and `taken` the weights it took
  // (TakenWeights). `loaded` is not kept: the host model is built again over the host copy.
  static absl::StatusOr<PlacedModel> Offloaded(std::string name, c10::Device device,
                                               const Model& loaded, WeightMap taken,
                                               Rebuild rebuild) {
    ASSIGN_OR_RETURN(std::unique_ptr<ModelResidency> residency,
                     ModelResidency::Create(std::move(name), std::move(taken), device));
    WeightMap host = residency->host_weights();  // FromWeights empties its map; this is a copy.
    ASSIGN_OR_RETURN(Model host_model, rebuild(loaded, host));
    PlacedModel out(std::move(host_model));
    out.residency_ = std::move(residency);
    out.rebuild_ = std::move(rebuild);
    return out;
  }

  // The model to run: resident, the model itself; offloaded, a model over device copies of the
  // weights, which leave the device when the last pointer to it (from any thread) is gone.
  absl::StatusOr<std::shared_ptr<const Model>> Use() const {
    if (residency_ == nullptr) return host_;
    return AcquireModel<Model>(*residency_,
                               [this](WeightMap& weights) { return rebuild_(*host_, weights); });
  }

  // The model without running it (its config, options): resident, the model; offloaded, the model
  // over the host copy of the weights (on the CPU, whatever the compute device).
  const Model& host() const { return *host_; }
  // Null when resident.
  const ModelResidency* residency() const { return residency_.get(); }

 private:
  std::shared_ptr<const Model> host_;
  std::unique_ptr<ModelResidency> residency_;
  Rebuild rebuild_;
};

// Loads a component: resident on options.device, or with `offload`, on the CPU in options' dtype
// and offloaded to options.device. `load` loads the model with the options it is given, filling
// its WeightMap* (when not null) with the weights the model took (the models' Load(folder,
// options, taken)).
template <typename Model>
absl::StatusOr<PlacedModel<Model>> LoadPlacedModel(
    std::string name, const LoadOptions& options, bool offload,
    const std::function<absl::StatusOr<Model>(const LoadOptions&, WeightMap*)>& load,
    typename PlacedModel<Model>::Rebuild rebuild) {
  if (!offload) {
    ASSIGN_OR_RETURN(Model model, load(options, nullptr));
    return PlacedModel<Model>(std::move(model));
  }
  ASSIGN_OR_RETURN(const c10::Device device, ParseOffloadDevice(options.device, name));
  LoadOptions host = options;
  host.device = "cpu";
  WeightMap taken;
  ASSIGN_OR_RETURN(Model loaded, load(host, &taken));
  return PlacedModel<Model>::Offloaded(std::move(name), device, loaded, std::move(taken),
                                       std::move(rebuild));
}

// "<name>: N MiB in host memory (pinned), copied to <device> around each use", for load logs.
std::string DescribeOffload(const ModelResidency& residency);

}  // namespace dgrid

#endif  // DGRID_COMMON_MODEL_OFFLOAD_H_
