// Where a denoiser's DiT keeps its weights between requests (--dit-offload, common/
// dit_offload_flags.h): on the device for good (none; layerwise, whose blocks the model itself
// copies in per forward pass), or with model offload (--dit-offload model, issue #20 item 3) in
// host memory, copied to the device when a request or a step batch starts denoising and dropped
// when none uses them any more (common/model_offload.h's ModelResidency: uses that overlap share
// one device copy, and the last one's end waits for the device before the copy is freed).
//
// Unlike PlacedModel (the text encoders and the VAE) no model is kept on the host between uses:
// FLUX's blocks concatenate their projections at build time (flux_blocks.cc FuseProjections), so
// a host model would hold about a third of the weights a second time. The DiT's config and its
// compute options are kept instead, and each use builds the model (FromWeights) over the device
// copies of the checkpoint tensors it took at load. The load builds the model once on the CPU to
// check the checkpoint (the errors of a plain load come at start-up, not with the first request),
// then keeps only the taken tensors: pinned when the device is CUDA, each unpinned source freed as
// its copy is made (host memory peaks near the weights once, plus FLUX's concatenations while the
// CPU model is built).
//
// The families' denoisers (flux_denoiser.cc, wan_denoiser.cc) hold one PlacedDit per transformer.
// FLUX calls Use() around a request's loop (Run) or a batch's life (NewBatch returns a
// BatchOnFirstMember, which acquires with its first member and lets go when the step batcher drops
// the emptied batch). Wan's loops call it per expert when a step needs that expert (wan_sampler.h
// WanExperts), so Wan2.2 A14B's two experts take turns on the device. A preempting request run
// between another's steps (edf) or a second worker's request shares the copy that is already
// there.
//
// Thread safety: a PlacedDit is immutable after load; Use() may be called from any thread. Errors:
// the model's load errors; INVALID_ARGUMENT naming --dit-offload for a device that is not one;
// Use() answers what ModelResidency::Acquire and the model's FromWeights answer (RESOURCE_EXHAUSTED
// when the device is out of memory for the copy).
#ifndef DGRID_SERVICES_DENOISER_DIT_PLACEMENT_H_
#define DGRID_SERVICES_DENOISER_DIT_PLACEMENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/logging.h"
#include "common/model_offload.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/weight_map.h"
#include "services/denoiser/batched_sampler.h"

namespace dgrid {

template <typename Model>
class PlacedDit {
 public:
  using Config = std::decay_t<decltype(std::declval<const Model&>().config())>;
  // Builds the model from the device copies of the taken weights (the model's FromWeights).
  using Build = std::function<absl::StatusOr<Model>(WeightMap& weights)>;

  // Resident: the model as loaded.
  explicit PlacedDit(Model model)
      : config_(model.config()),
        options_(model.options()),
        resident_(std::make_shared<const Model>(std::move(model))) {}

  // Model offload to `device`: `config` and `options` (its dtype) are those of the model built on
  // the CPU, `taken` the checkpoint tensors it took (the host copy is made from them).
  static absl::StatusOr<PlacedDit> Offloaded(std::string name, c10::Device device, Config config,
                                             at::TensorOptions options, WeightMap taken,
                                             Build build) {
    ASSIGN_OR_RETURN(std::unique_ptr<ModelResidency> residency,
                     ModelResidency::Create(std::move(name), std::move(taken), device));
    return PlacedDit(std::move(config), options.device(device).pinned_memory(false),
                     std::move(residency), std::move(build));
  }

  // The model to run: resident, the model itself; offloaded, a model over device copies of the
  // weights, which leave the device when the last pointer to it (from any thread) is gone.
  absl::StatusOr<std::shared_ptr<const Model>> Use() const {
    if (residency_ == nullptr) return resident_;
    return AcquireModel<Model>(*residency_, build_);
  }

  const Config& config() const { return config_; }
  // The device and dtype the model computes in (offloaded too: the device it is copied to).
  at::TensorOptions options() const { return options_; }
  // Null when resident.
  const ModelResidency* residency() const { return residency_.get(); }

 private:
  PlacedDit(Config config, at::TensorOptions options, std::unique_ptr<ModelResidency> residency,
            Build build)
      : config_(std::move(config)),
        options_(options),
        residency_(std::move(residency)),
        build_(std::move(build)) {}

  Config config_;
  at::TensorOptions options_;
  std::shared_ptr<const Model> resident_;  // null when offloaded
  std::shared_ptr<const ModelResidency> residency_;
  Build build_;
};

// Loads a transformer as `options` place it: resident (options.dit_offload none or layerwise:
// `load(options, nullptr)`), or with options.dit_offload.model loaded on the CPU
// (`load(cpu_options, &taken)`) and offloaded to options.device under `name` ("transformer").
template <typename Model>
absl::StatusOr<PlacedDit<Model>> LoadPlacedDit(
    std::string name, const LoadOptions& options,
    const std::function<absl::StatusOr<Model>(const LoadOptions&, WeightMap*)>& load,
    typename PlacedDit<Model>::Build build) {
  if (!options.dit_offload.model) {
    ASSIGN_OR_RETURN(Model model, load(options, nullptr));
    return PlacedDit<Model>(std::move(model));
  }
  absl::StatusOr<c10::Device> device = ParseOffloadDevice(options.device, name);
  if (!device.ok()) return InvalidArgument("--dit-offload model: ", device.status().message());
  LoadOptions host = options;
  host.device = "cpu";
  host.dit_offload = DitOffload();
  WeightMap taken;
  std::optional<typename PlacedDit<Model>::Config> config;
  at::TensorOptions model_options;
  {
    // The CPU model goes before the host copy is made: it shares `taken`'s tensors (and holds
    // FLUX's concatenated projections of its own), which the copy then frees one by one.
    ASSIGN_OR_RETURN(Model loaded, load(host, &taken));
    config = loaded.config();
    model_options = loaded.options();
  }
  ASSIGN_OR_RETURN(PlacedDit<Model> placed,
                   PlacedDit<Model>::Offloaded(std::move(name), *device, *std::move(config),
                                               model_options, std::move(taken), std::move(build)));
  DG_LOG_INFO("", "--dit-offload model: %s", DescribeOffload(*placed.residency()));
  return placed;
}

// A step batch over model-offloaded transformers: the family's batch is made with its first
// member (Add), after `start` has acquired the models, and holds them until this batch is
// destroyed (the step batcher drops an emptied batch) or its first member is refused (then it is
// empty again, holding nothing, and the next Add starts afresh).
class BatchOnFirstMember final : public BatchedSampler {
 public:
  // Acquires the models (what `*hold` keeps on the device) and makes the family's batch over them;
  // the batch must not outlive `*hold`. Its errors end the member being added.
  using Start =
      std::function<absl::StatusOr<std::unique_ptr<BatchedSampler>>(std::shared_ptr<const void>*)>;
  explicit BatchOnFirstMember(Start start) : start_(std::move(start)) {}
  ~BatchOnFirstMember() override;

  absl::Status Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) override;
  std::vector<Ended> Step() override;
  int size() const override { return batch_ == nullptr ? 0 : batch_->size(); }

 private:
  void Drop();

  Start start_;
  std::shared_ptr<const void> hold_;
  std::unique_ptr<BatchedSampler> batch_;  // null until the first member; dropped before hold_
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_DIT_PLACEMENT_H_
