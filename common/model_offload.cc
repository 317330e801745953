#include "common/model_offload.h"

#include <utility>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

// Waits for all work on `device` (a CUDA device; nothing to wait for on a CPU). The device-generic
// guard keeps CUDA headers out of this file, as layerwise_offload.cc does.
void SynchronizeDevice(c10::Device device) {
  if (!device.is_cuda()) return;
  const c10::impl::VirtualGuardImpl impl(device.type());
  impl.synchronizeDevice(device.has_index() ? device.index() : impl.getDevice().index());
}

}  // namespace

struct ModelResidency::State {
  absl::Mutex mu;
  std::shared_ptr<const void> model ABSL_GUARDED_BY(mu);  // The device copy; null when out.
  int64_t users ABSL_GUARDED_BY(mu) = 0;
  int64_t moves_in ABSL_GUARDED_BY(mu) = 0;
  int64_t moves_out ABSL_GUARDED_BY(mu) = 0;
  ObserverForTesting observer ABSL_GUARDED_BY(mu);
  std::string name;
  c10::Device device = c10::Device(c10::kCPU);

  // Ends one use; the last one drops the device copy (its memory goes back to the allocator).
  void Release() {
    absl::MutexLock lock(&mu);
    if (--users > 0) return;
    try {
      // Kernels of any stream may still read the weights; freed blocks are reused in the order of
      // the stream that allocated them only.
      SynchronizeDevice(device);
    } catch (...) {
      // A lost device is reported by its next call; the copy is dropped anyway.
    }
    model.reset();
    if (device.is_cuda()) {
      // Back to the driver, not only to this process's caching allocator: a stage process
      // (dgrid up --offload model) shares its GPU with other processes, which could not use
      // blocks this one keeps cached.
      try {
        at::accelerator::emptyCache();
      } catch (...) {
      }
    }
    ++moves_out;
    DG_LOG_DEBUG("", "%s: weights left the device", name);
    if (observer) observer(name, false);
  }
};

absl::StatusOr<c10::Device> ParseOffloadDevice(const std::string& device,
                                               absl::string_view component) {
  absl::StatusOr<c10::Device> parsed =
      TorchCall("offload device", [&] { return c10::Device(device); });
  if (!parsed.ok()) {
    return InvalidArgument(component, ": offload to '", device, "': not a device (cpu, cuda[:N])");
  }
  return parsed;
}

ModelResidency::ModelResidency(std::string name, c10::Device device)
    : name_(std::move(name)), device_(device), state_(std::make_shared<State>()) {
  state_->name = name_;
  state_->device = device;
}

ModelResidency::~ModelResidency() = default;

absl::StatusOr<std::unique_ptr<ModelResidency>> ModelResidency::Create(std::string name,
                                                                       WeightMap weights,
                                                                       c10::Device device) {
  std::unique_ptr<ModelResidency> out(new ModelResidency(std::move(name), device));
  out->host_ = WeightMap(weights.source());
  // Pinned memory lets the host-to-device copies run asynchronously; it needs a CUDA runtime.
  const bool pin = device.is_cuda();
  RETURN_IF_ERROR(TorchCall(out->name_ + ": host copy of the weights", [&]() -> absl::Status {
    // One tensor at a time out of `weights`, so that a source nothing else holds is freed as soon
    // as its pinned copy exists (host memory peaks at the weights plus one tensor, not twice).
    for (const std::string& tensor_name : weights.RemainingNames()) {
      ASSIGN_OR_RETURN(const at::Tensor tensor, weights.Take(tensor_name));
      if (!tensor.defined()) continue;
      if (!tensor.device().is_cpu()) {
        return InvalidArgument(out->name_, ": '", tensor_name, "' is on ", tensor.device().str(),
                               "; an offloaded component is loaded on the CPU");
      }
      at::Tensor host = tensor;
      if (pin) {
        host = at::empty(tensor.sizes(), tensor.options().pinned_memory(true));
        host.copy_(tensor);
      }
      out->host_bytes_ += static_cast<int64_t>(host.nbytes());
      out->host_.Insert(tensor_name, std::move(host));
    }
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<std::shared_ptr<const void>> ModelResidency::Acquire(const Build& build) const {
  std::shared_ptr<State> state = state_;
  const void* model = nullptr;
  {
    absl::MutexLock lock(&state->mu);
    if (state->users == 0) {
      const absl::Time start = absl::Now();  // for the log line only
      WeightMap device_weights(host_.source());
      // A failed copy or build gives back what it allocated before the status goes up (a stage
      // sharing its GPU must not keep those blocks reserved).
      const auto give_back = [&](absl::Status failed) {
        device_weights = WeightMap(host_.source());
        if (device_.is_cuda()) {
          try {
            at::accelerator::emptyCache();
          } catch (...) {
          }
        }
        return failed;
      };
      // Copies, never aliases: on a CPU too the weights in use are tensors of their own, so that
      // the bookkeeping below is what happens to memory. From pinned memory the copies are
      // enqueued without a wait each.
      const absl::Status copied = TorchCall(name_ + ": weights to " + device_.str(), [&] {
        for (const auto& [tensor_name, tensor] : host_.tensors()) {
          device_weights.Insert(tensor_name, tensor.to(device_, tensor.scalar_type(),
                                                       /*non_blocking=*/device_.is_cuda(),
                                                       /*copy=*/true));
        }
        // One wait for all the copies, so that a use on any stream (overlapping uses of several
        // threads share the copy) sees the weights.
        SynchronizeDevice(device_);
      });
      if (!copied.ok()) return give_back(copied);
      // The build may run device kernels (FLUX concatenates its projections there), so an
      // out-of-memory error in it is a status too.
      absl::StatusOr<std::shared_ptr<const void>> built = TorchCall(
          name_ + ": build on " + device_.str(),
          [&]() -> absl::StatusOr<std::shared_ptr<const void>> { return build(device_weights); });
      if (!built.ok()) return give_back(built.status());
      state->model = *std::move(built);
      if (device_.is_cuda()) {
        // A build that rearranges the copies frees pieces of them (FLUX's DiT concatenates its
        // projections, flux_blocks.cc FuseProjections): blocks the caching allocator could not
        // reuse for the larger concatenations go back to the driver, not held beside the model.
        try {
          at::accelerator::emptyCache();
        } catch (...) {
        }
      }
      ++state->moves_in;
      // The copy and the build, waited for: what a use that finds the weights out pays.
      DG_LOG_DEBUG("", "%s: %.1f MiB of weights came in to %s in %.1f ms", name_,
                   static_cast<double>(host_bytes_) / (1 << 20), device_.str(),
                   absl::ToDoubleMilliseconds(absl::Now() - start));
      if (state->observer) state->observer(name_, true);
    }
    ++state->users;
    model = state->model.get();
  }
  // State::model owns the device copy while a use holds it; this pointer's deleter ends the use.
  return std::shared_ptr<const void>(model, [state](const void*) { state->Release(); });
}

bool ModelResidency::on_device() const {
  absl::MutexLock lock(&state_->mu);
  return state_->model != nullptr;
}

int64_t ModelResidency::moves_in() const {
  absl::MutexLock lock(&state_->mu);
  return state_->moves_in;
}

int64_t ModelResidency::moves_out() const {
  absl::MutexLock lock(&state_->mu);
  return state_->moves_out;
}

void ModelResidency::SetObserverForTesting(ObserverForTesting observer) const {
  absl::MutexLock lock(&state_->mu);
  state_->observer = std::move(observer);
}

std::string DescribeOffload(const ModelResidency& residency) {
  return absl::StrFormat("%s: %.1f MiB in %shost memory, copied to %s around each use",
                         residency.name(), static_cast<double>(residency.host_bytes()) / (1 << 20),
                         residency.device().is_cuda() ? "pinned " : "", residency.device().str());
}

}  // namespace dgrid
