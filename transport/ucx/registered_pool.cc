#include "transport/ucx/registered_pool.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/ucx_status.h"

namespace dgrid::ucx {

RegisteredBuffer::RegisteredBuffer() = default;
RegisteredBuffer::~RegisteredBuffer() = default;

RegisteredPool::~RegisteredPool() { Trim(); }

size_t RegisteredPool::SizeClass(size_t bytes) {
  constexpr size_t kMinimum = 4096;
  if (bytes <= kMinimum) return kMinimum;
  size_t power = kMinimum;
  while (power * 2 < bytes) power *= 2;
  // Classes between `power` and 2 * power step by power / 8.
  const size_t step = power / 8;
  return (bytes + step - 1) / step * step;
}

absl::StatusOr<std::unique_ptr<RegisteredBuffer>> RegisteredPool::Acquire(size_t bytes,
                                                                          int device) {
  const size_t capacity = SizeClass(bytes);
  {
    absl::MutexLock lock(&mutex_);
    auto it = free_.find({device, capacity});
    if (it != free_.end() && !it->second.empty()) {
      std::unique_ptr<RegisteredBuffer> buffer = std::move(it->second.back());
      it->second.pop_back();
      cached_bytes_ -= capacity;
      stats_.leased_bytes += capacity;
      ++stats_.leased_buffers;
      return buffer;
    }
  }
  auto buffer = std::make_unique<RegisteredBuffer>();
  buffer->capacity = capacity;
  buffer->device = device;
  buffer->ucx_allocated = device < 0 && ucx_host_memory_;
  if (buffer->ucx_allocated) {
    RETURN_IF_ERROR(AllocateWithUcx(*buffer));
  } else {
    RETURN_IF_ERROR(AllocateWithTorch(*buffer));
  }
  void* rkey = nullptr;
  size_t rkey_size = 0;
  const ucs_status_t packed = ucp_rkey_pack(context_, buffer->memh, &rkey, &rkey_size);
  if (packed != UCS_OK) {
    ucp_mem_unmap(context_, buffer->memh);
    return UcxStatus(packed, "pack remote key");
  }
  buffer->packed_rkey.assign(static_cast<const char*>(rkey), rkey_size);
  ucp_rkey_buffer_release(rkey);

  absl::MutexLock lock(&mutex_);
  stats_.registered_bytes += capacity;
  stats_.leased_bytes += capacity;
  ++stats_.leased_buffers;
  return buffer;
}

absl::Status RegisteredPool::AllocateWithUcx(RegisteredBuffer& buffer) {
  // UCX allocates through its first memory domain that can (UCX_ALLOC_PRIO: sysv, then posix
  // shared memory, then plain pages) and registers the memory with the others, so a consumer on
  // the same host can map the segment from the packed rkey (ucp_rkey_ptr) and copy it directly.
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  params.length = buffer.capacity;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  params.memory_type = UCS_MEMORY_TYPE_HOST;
  const ucs_status_t mapped = ucp_mem_map(context_, &params, &buffer.memh);
  if (mapped != UCS_OK) {
    buffer.memh = nullptr;
    return absl::ResourceExhaustedError(
        UcxStatus(mapped, absl::StrCat("allocate ", buffer.capacity, " bytes")).message());
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  const ucs_status_t queried = ucp_mem_query(buffer.memh, &attr);
  if (queried != UCS_OK) {
    ucp_mem_unmap(context_, buffer.memh);
    buffer.memh = nullptr;
    return UcxStatus(queried, "query allocated memory");
  }
  buffer.address = attr.address;
  return TorchCall("wrap a transfer buffer", [&] {
    buffer.storage = std::make_unique<at::Tensor>(
        at::from_blob(buffer.address, {static_cast<int64_t>(buffer.capacity)}, at::kByte));
  });
}

absl::Status RegisteredPool::AllocateWithTorch(RegisteredBuffer& buffer) {
  const absl::Status allocated = TorchCall("allocate a transfer buffer", [&] {
    at::TensorOptions options = at::TensorOptions().dtype(at::kByte);
    if (buffer.device >= 0) {
      options = options.device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(buffer.device)));
    } else if (at::hasCUDA()) {
      options = options.pinned_memory(true);  // lets cuda_copy and DMA engines read it directly
    }
    buffer.storage =
        std::make_unique<at::Tensor>(at::empty({static_cast<int64_t>(buffer.capacity)}, options));
    buffer.address = buffer.storage->data_ptr();
  });
  if (!allocated.ok()) return absl::ResourceExhaustedError(allocated.message());

  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  params.address = buffer.address;
  params.length = buffer.capacity;
  params.memory_type = buffer.device >= 0 ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  const ucs_status_t mapped = ucp_mem_map(context_, &params, &buffer.memh);
  if (mapped != UCS_OK) {
    buffer.memh = nullptr;
    return absl::ResourceExhaustedError(
        UcxStatus(mapped, absl::StrCat("register ", buffer.capacity, " bytes")).message());
  }
  return absl::OkStatus();
}

void RegisteredPool::Return(std::unique_ptr<RegisteredBuffer> buffer) {
  if (buffer == nullptr) return;
  const size_t capacity = buffer->capacity;
  {
    absl::MutexLock lock(&mutex_);
    stats_.leased_bytes -= capacity;
    --stats_.leased_buffers;
    if (cached_bytes_ + capacity <= max_cached_bytes_) {
      cached_bytes_ += capacity;
      free_[{buffer->device, capacity}].push_back(std::move(buffer));
      return;
    }
  }
  Free(std::move(buffer));
}

void RegisteredPool::Trim() {
  std::vector<std::unique_ptr<RegisteredBuffer>> freed;
  {
    absl::MutexLock lock(&mutex_);
    for (auto& [key, buffers] : free_) {
      for (auto& buffer : buffers) freed.push_back(std::move(buffer));
    }
    free_.clear();
    cached_bytes_ = 0;
  }
  for (auto& buffer : freed) Free(std::move(buffer));
}

void RegisteredPool::Free(std::unique_ptr<RegisteredBuffer> buffer) {
  ucp_mem_unmap(context_, buffer->memh);
  {
    absl::MutexLock lock(&mutex_);
    stats_.registered_bytes -= buffer->capacity;
  }
  (void)TorchCall("free a transfer buffer", [&] { buffer->storage.reset(); });
}

RegisteredPool::Stats RegisteredPool::stats() const {
  absl::MutexLock lock(&mutex_);
  return stats_;
}

}  // namespace dgrid::ucx
