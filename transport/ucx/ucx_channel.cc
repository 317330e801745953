#include "transport/ucx/ucx_channel.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/tensor_ref.h"
#include "common/torch_status.h"
#include "transport/crc32c.h"

namespace dgrid {
namespace {

constexpr size_t kWordBytes = sizeof(uint64_t);

size_t WordOffset(size_t bytes) { return (bytes + kWordBytes - 1) / kWordBytes * kWordBytes; }

// Writes `word` at `offset` of `buffer` (host memcpy, or a small copy into device memory).
void WriteLeaseWord(ucx::RegisteredBuffer& buffer, size_t offset, uint64_t word) {
  if (buffer.device < 0) {
    std::memcpy(static_cast<char*>(buffer.address) + offset, &word, kWordBytes);
    // A consumer on this host may read the buffer directly (UcxWorker::Get maps it): a cleared
    // word must be visible before the next tenant's data stores (the reader fences its loads).
    std::atomic_thread_fence(std::memory_order_release);
    return;
  }
  // The CPU round trip (.cpu()) waits for the stream, so the data copy queued before it is complete
  // when the reference leaves this process.
  buffer.storage->narrow(0, static_cast<int64_t>(offset), kWordBytes)
      .copy_(at::from_blob(&word, {static_cast<int64_t>(kWordBytes)}, at::kByte));
  (void)buffer.storage->narrow(0, static_cast<int64_t>(offset), kWordBytes).cpu();
}

// Tensors from this size up are allocated on transparent huge pages.
constexpr size_t kHugePage = size_t{2} << 20;

// A CPU tensor for a pull. Large ones sit on 2 MiB-aligned memory advised for transparent huge
// pages: a fresh 4 KiB-page destination costs one page fault per 4 KiB on the first write, which
// on a VM took longer than the copy itself (64 MiB: ~85 ms of faults vs ~25 ms with huge pages).
at::Tensor EmptyHostTensor(const std::vector<int64_t>& shape, c10::ScalarType type, size_t bytes) {
  if (bytes < kHugePage) return at::empty(shape, at::TensorOptions().dtype(type));
  const size_t length = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* memory = nullptr;
  if (posix_memalign(&memory, kHugePage, length) != 0) throw std::bad_alloc();
  (void)madvise(memory, length, MADV_HUGEPAGE);  // a hint: without THP the pages are just small
  return at::from_blob(
      memory, shape, [](void* p) { std::free(p); }, at::TensorOptions().dtype(type));
}

int64_t NowUnixMs() { return absl::ToUnixMillis(absl::Now()); }

}  // namespace

absl::StatusOr<std::unique_ptr<UcxChannel>> UcxChannel::Create(const UcxChannelOptions& options) {
  std::unique_ptr<UcxChannel> channel(new UcxChannel(options));
  UcxChannel* self = channel.get();
  ASSIGN_OR_RETURN(channel->worker_,
                   ucx::UcxWorker::Create({options.tls}, [self](uint64_t lease_id) {
                     self->EndLease(lease_id, /*expired=*/false);
                   }));
  channel->pool_ = std::make_unique<ucx::RegisteredPool>(
      channel->worker_->context(), options.max_cached_bytes, options.ucx_host_memory);
  {
    // Lease ids start at a random point so that a restarted producer does not reuse recent ids.
    absl::MutexLock lock(&channel->mutex_);
    channel->next_lease_ = (std::random_device{}() | uint64_t{1}) << 20;
  }
  channel->reaper_ = std::thread([self] { self->ReaperLoop(); });
  DG_LOG_INFO("",
              "UCX transport up (UCX_TLS=%s): CUDA tensors %s; inline below %d bytes, "
              "leases of %s",
              options.tls.empty() ? "default" : options.tls,
              channel->cuda_memory() ? "published from registered device memory"
                                     : "staged through registered host memory",
              options.inline_threshold_bytes, absl::FormatDuration(options.lease_duration));
  return channel;
}

UcxChannel::~UcxChannel() {
  std::vector<Lease> live;
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
    for (auto& [id, lease] : leases_) live.push_back(std::move(lease));
    leases_.clear();
  }
  if (reaper_.joinable()) reaper_.join();
  for (Lease& lease : live) Recycle(std::move(lease));
  pool_.reset();
  worker_.reset();
}

absl::StatusOr<v1::TensorRef> UcxChannel::Publish(const at::Tensor& tensor) {
  if (!tensor.defined() || tensor.nbytes() == 0 ||
      tensor.nbytes() < options_.inline_threshold_bytes) {
    return TensorToInlineRef(tensor);
  }
  ASSIGN_OR_RETURN(v1::DType dtype, ProtoFromScalarType(tensor.scalar_type()));
  const size_t bytes = tensor.nbytes();
  const int device = tensor.is_cuda() && worker_->cuda_memory() ? tensor.get_device() : -1;
  const size_t word_offset = WordOffset(bytes);
  ASSIGN_OR_RETURN(std::unique_ptr<ucx::RegisteredBuffer> buffer,
                   pool_->Acquire(word_offset + kWordBytes, device));
  uint64_t lease_id;
  {
    absl::MutexLock lock(&mutex_);
    lease_id = ++next_lease_;
  }
  uint32_t crc = 0;  // 0: not computed (device buffers, or checksums off)
  const absl::Status copied = TorchCall("copy into a transfer buffer", [&] {
    const at::Tensor source = tensor.contiguous();
    if (device < 0 && !source.is_cuda()) {
      if (options_.checksum) {
        crc = CopyWithCrc32c(0, buffer->address, source.data_ptr(), bytes);
      } else {
        std::memcpy(buffer->address, source.data_ptr(), bytes);
      }
    } else {
      // Device to device, or device to (pinned) host staging.
      buffer->storage->narrow(0, 0, static_cast<int64_t>(bytes))
          .copy_(source.reshape({-1}).view(at::kByte));
      // Staged bytes are on the host once the copy returns (copy_ to pageable or pinned memory
      // from a CUDA tensor synchronises); device buffers would need a copy back just for this.
      if (options_.checksum && device < 0) crc = Crc32c(0, buffer->address, bytes);
    }
    WriteLeaseWord(*buffer, word_offset, lease_id);
  });
  if (!copied.ok()) {
    pool_->Return(std::move(buffer));
    return copied;
  }

  v1::TensorRef ref;
  ref.set_dtype(dtype);
  for (int64_t size : tensor.sizes()) ref.add_shape(size);
  ref.set_byte_size(bytes);
  ref.set_crc32c(crc);
  v1::UcxDescriptor* ucx = ref.mutable_ucx();
  ucx->set_worker_address(worker_->address());
  ucx->set_remote_address(reinterpret_cast<uint64_t>(buffer->address));
  ucx->set_packed_rkey(buffer->packed_rkey);
  ucx->set_lease_id(lease_id);
  const absl::Time expiry = absl::Now() + options_.lease_duration;
  ucx->set_expiry_unix_ms(absl::ToUnixMillis(expiry));
  ucx->set_memory(device >= 0 ? v1::MEMORY_KIND_CUDA : v1::MEMORY_KIND_HOST);
  ucx->set_device_index(std::max(device, 0));

  absl::MutexLock lock(&mutex_);
  if (stopping_) {
    // Not handed out: the destructor already ran past the lease table.
    pool_->Return(std::move(buffer));
    return absl::UnavailableError("UCX channel is shutting down");
  }
  leases_[lease_id] = Lease{std::move(buffer), word_offset, expiry};
  metrics::CountTransferBytes("ucx", "sent", static_cast<double>(bytes));
  return ref;
}

absl::StatusOr<at::Tensor> UcxChannel::Fetch(const v1::TensorRef& ref, absl::string_view field) {
  if (ref.payload_case() != v1::TensorRef::kUcx) return TensorFromInlineRef(ref, field);
  RETURN_IF_ERROR(ValidateTensorRef(ref, field));
  const v1::UcxDescriptor& ucx = ref.ucx();
  if (ucx.lease_id() == 0 || ucx.worker_address().empty() || ucx.packed_rkey().empty()) {
    return InvalidArgument(field, ": UCX descriptor without lease, worker address or rkey");
  }
  const int64_t now_ms = NowUnixMs();
  if (now_ms >= ucx.expiry_unix_ms()) {
    return absl::DeadlineExceededError(absl::StrCat(field, ": lease ", ucx.lease_id(), " expired ",
                                                    now_ms - ucx.expiry_unix_ms(),
                                                    " ms before the pull"));
  }
  ASSIGN_OR_RETURN(c10::ScalarType type, ScalarTypeFromProto(ref.dtype()));
  const size_t bytes = ref.byte_size();
  ASSIGN_OR_RETURN(at::Tensor out, TorchCall("allocate a fetched tensor", [&] {
                     return EmptyHostTensor(
                         std::vector<int64_t>(ref.shape().begin(), ref.shape().end()), type, bytes);
                   }));
  uint64_t word = 0;
  uint32_t crc = 0;
  const bool check = options_.checksum && ref.crc32c() != 0;
  const ucx::UcxWorker::GetRange ranges[] = {
      {ucx.remote_address(), out.data_ptr(), bytes, check ? &crc : nullptr},
      {ucx.remote_address() + WordOffset(bytes), &word, kWordBytes, nullptr}};
  const absl::Status pulled =
      worker_->Get(ucx.worker_address(), ucx.packed_rkey(), ranges, options_.fetch_timeout);
  if (!pulled.ok()) {
    return absl::Status(pulled.code(), absl::StrCat(field, ": ", pulled.message()));
  }
  if (word != ucx.lease_id()) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": lease ", ucx.lease_id(), " was released or reclaimed by the producer"));
  }
  // After the lease check: bytes of a recycled buffer are a lease problem, not corruption.
  if (check && crc != ref.crc32c()) {
    return absl::DataLossError(absl::StrCat(field, ": CRC-32C of the pulled ", bytes, " bytes is ",
                                            crc, ", the producer's ", ref.crc32c()));
  }
  metrics::CountTransferBytes("ucx", "received", static_cast<double>(bytes));
  return out;
}

void UcxChannel::Release(const v1::TensorRef& ref) {
  if (ref.payload_case() != v1::TensorRef::kUcx || ref.ucx().lease_id() == 0) return;
  if (ref.ucx().worker_address() == worker_->address()) {
    EndLease(ref.ucx().lease_id(), /*expired=*/false);
    return;
  }
  worker_->SendRelease(ref.ucx().worker_address(), ref.ucx().lease_id());
}

void UcxChannel::EndLease(uint64_t id, bool expired) {
  Lease lease;
  {
    absl::MutexLock lock(&mutex_);
    auto it = leases_.find(id);
    if (it == leases_.end()) return;  // already released, expired or never ours
    lease = std::move(it->second);
    leases_.erase(it);
    ++(expired ? expired_ : released_);
  }
  if (expired) DG_LOG_WARN("", "lease %d expired unreleased; buffer reclaimed", id);
  Recycle(std::move(lease));
}

void UcxChannel::Recycle(Lease lease) {
  // Zero the word first: a consumer still pulling then sees that its bytes may be recycled.
  const absl::Status zeroed =
      TorchCall("clear a lease word", [&] { WriteLeaseWord(*lease.buffer, lease.word_offset, 0); });
  if (!zeroed.ok()) {
    DG_LOG_ERROR("", "%s; dropping the buffer", zeroed.ToString());
    return;  // never reuse a buffer whose word may still name a lease
  }
  pool_->Return(std::move(lease.buffer));
}

void UcxChannel::ReaperLoop() {
  const absl::Duration interval =
      std::clamp(options_.lease_duration / 4, absl::Milliseconds(10), absl::Seconds(1));
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), interval);
    if (stopping_) break;
    const absl::Time now = absl::Now();
    std::vector<uint64_t> expired;
    for (const auto& [id, lease] : leases_) {
      if (lease.expiry <= now) expired.push_back(id);
    }
    if (expired.empty()) continue;
    mutex_.Unlock();
    for (uint64_t id : expired) EndLease(id, /*expired=*/true);
    mutex_.Lock();
  }
}

UcxChannel::Stats UcxChannel::stats() const {
  const ucx::RegisteredPool::Stats pool = pool_->stats();
  absl::MutexLock lock(&mutex_);
  Stats stats;
  stats.registered_bytes = pool.registered_bytes;
  stats.leased_bytes = pool.leased_bytes;
  stats.live_leases = leases_.size();
  stats.released_leases = released_;
  stats.expired_leases = expired_;
  stats.direct_copies = worker_->direct_copies();
  stats.ucx_gets = worker_->ucx_gets();
  return stats;
}

}  // namespace dgrid
