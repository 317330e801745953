#include "services/denoiser/models/layerwise_offload.h"

#include <algorithm>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

// The device-generic c10 stream and event wrappers are used rather than c10::cuda's so that this
// file builds without the CUDA headers (CPU-only builds run the same code with no streams); for a
// CUDA device they are CUDA streams and events.
struct LayerwiseOffload::Pass::Streams {
  c10::Stream compute;  // The stream current when the pass began: where the model computes.
  c10::Stream copy;     // A pool stream for the host-to-device copies.
};

struct LayerwiseOffload::Pass::Resident {
  std::vector<at::Tensor> tensors;
  std::optional<c10::Event> ready;  // Recorded on the copy stream behind the copies (CUDA).
};

absl::StatusOr<std::shared_ptr<const LayerwiseOffload>> LayerwiseOffload::Create(
    std::vector<std::vector<at::Tensor>> layers, c10::Device device, int64_t prefetch) {
  if (prefetch < 1) {
    return InvalidArgument("--dit-offload-prefetch: ", prefetch, " blocks; it must be at least 1");
  }
  std::shared_ptr<LayerwiseOffload> out(new LayerwiseOffload());
  out->device_ = device;
  out->prefetch_ = prefetch;
  // Pinned memory lets the copies run asynchronously on the copy stream; it needs a CUDA runtime.
  const bool pin = device.is_cuda();
  RETURN_IF_ERROR(TorchCall("layerwise offload: host copies of the blocks", [&]() -> absl::Status {
    for (size_t l = 0; l < layers.size(); ++l) {
      Layer layer;
      std::vector<const void*> storages;  // Distinct storages of this layer, by base index.
      for (const at::Tensor& t : layers[l]) {
        View view;
        if (!t.defined()) {
          layer.views.push_back(view);
          layer.host.push_back(t);
          continue;
        }
        if (!t.device().is_cpu()) {
          return InvalidArgument("layerwise offload: block ", l, " has a tensor on ",
                                 t.device().str(), "; the blocks must be loaded on the CPU");
        }
        const void* key = t.storage().unsafeGetStorageImpl();
        auto it = std::find(storages.begin(), storages.end(), key);
        if (it == storages.end()) {
          const int64_t item = static_cast<int64_t>(t.element_size());
          const int64_t nbytes = static_cast<int64_t>(t.storage().nbytes());
          if (nbytes % item != 0) {
            return Internal("layerwise offload: block ", l, ": a storage of ", nbytes,
                            " bytes holds ", c10::toString(t.scalar_type()), " elements");
          }
          // A flat tensor over the whole storage: views into it are rebuilt on the device copy.
          at::Tensor base = at::empty({0}, t.options()).set_(t.storage(), 0, {nbytes / item}, {1});
          if (pin) {
            at::Tensor pinned = at::empty(base.sizes(), base.options().pinned_memory(true));
            pinned.copy_(base);
            base = pinned;
          }
          storages.push_back(key);
          layer.bases.push_back(base);
          out->host_bytes_ += nbytes;
          it = storages.end() - 1;
        }
        view.base = it - storages.begin();
        if (layer.bases[view.base].scalar_type() != t.scalar_type()) {
          return Internal("layerwise offload: block ", l, " views one storage as two dtypes");
        }
        view.sizes = t.sizes().vec();
        view.strides = t.strides().vec();
        view.offset = t.storage_offset();
        layer.host.push_back(
            layer.bases[view.base].as_strided(view.sizes, view.strides, view.offset));
        layer.views.push_back(std::move(view));
      }
      out->layers_.push_back(std::move(layer));
      // The caller's references to the unpinned originals go now, so that a model being pinned
      // holds about one block twice at a time rather than all of them.
      layers[l].clear();
    }
    return absl::OkStatus();
  }));
  return std::shared_ptr<const LayerwiseOffload>(std::move(out));
}

LayerwiseOffload::Pass::Pass(const LayerwiseOffload& offload,
                             const ResidencyObserverForTesting* observer)
    : offload_(offload), observer_(observer) {
  if (offload.device_.is_cuda()) {
    const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    streams_ = std::make_unique<Streams>(
        Streams{impl.getStream(offload.device_), impl.getStreamFromGlobalPool(offload.device_)});
  }
}

LayerwiseOffload::Pass::~Pass() {
  try {
    ReleaseBefore(offload_.num_layers());
  } catch (...) {
    // A failed event (the device is lost) cannot be reported from here; the next CUDA call
    // reports it. Drop the copies anyway.
  }
  resident_.clear();
}

void LayerwiseOffload::Pass::Issue(int64_t i) {
  const Layer& layer = offload_.layers_[i];
  auto r = std::make_unique<Resident>();
  std::vector<at::Tensor> bases;
  const auto copy = [&] {
    for (const at::Tensor& b : layer.bases) {
      at::Tensor d =
          at::empty(b.sizes(), b.options().device(offload_.device_).pinned_memory(false));
      d.copy_(b, /*non_blocking=*/streams_ != nullptr);
      bases.push_back(std::move(d));
    }
  };
  if (streams_ != nullptr) {
    // Allocated and filled on the copy stream: the caching allocator ties the memory to it.
    const c10::StreamGuard guard(streams_->copy);
    copy();
    r->ready.emplace(c10::DeviceType::CUDA);
    r->ready->record(streams_->copy);
  } else {
    copy();
  }
  for (const View& v : layer.views) {
    r->tensors.push_back(v.base < 0 ? at::Tensor()
                                    : bases[v.base].as_strided(v.sizes, v.strides, v.offset));
  }
  resident_[i] = std::move(r);
}

void LayerwiseOffload::Pass::ReleaseBefore(int64_t i) {
  if (!resident_.empty() && resident_.begin()->first < i) {
    if (streams_ != nullptr) {
      // Later copies reuse the freed memory in copy-stream order: make that order come after
      // every kernel enqueued so far on the compute stream (which includes the dropped layers').
      c10::Event done(c10::DeviceType::CUDA);
      done.record(streams_->compute);
      done.block(streams_->copy);
    }
    resident_.erase(resident_.begin(), resident_.lower_bound(i));
  }
  released_ = std::max(released_, i);
}

const std::vector<at::Tensor>& LayerwiseOffload::Pass::Acquire(int64_t i) {
  TORCH_CHECK(i >= 0 && i < offload_.num_layers(), "layerwise offload: block ", i,
              " out of range [0, ", offload_.num_layers(), ")");
  TORCH_CHECK(i >= released_, "layerwise offload: block ", i,
              " asked for after it was dropped (blocks must run in order)");
  ReleaseBefore(i);
  next_issue_ = std::max(next_issue_, i);
  const int64_t last = std::min(offload_.num_layers() - 1, i + offload_.prefetch_);
  while (next_issue_ <= last) Issue(next_issue_++);
  Resident& r = *resident_.at(i);
  if (r.ready.has_value()) {
    r.ready->block(streams_->compute);
    r.ready.reset();
  }
  if (observer_ != nullptr && *observer_) {
    std::vector<int64_t> resident;
    for (const auto& [layer, unused] : resident_) resident.push_back(layer);
    (*observer_)(i, resident);
  }
  return r.tensors;
}

}  // namespace dgrid
