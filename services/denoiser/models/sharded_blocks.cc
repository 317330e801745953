#include "services/denoiser/models/sharded_blocks.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <ATen/ATen.h>

#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

// Every packed storage starts at this byte boundary, the alignment of LibTorch's CPU allocator (and
// more than CUDA kernels' vector loads need), so a gathered weight sits at the same alignment as
// the original and takes the same kernel paths.
constexpr int64_t kAlignBytes = 64;

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// DGRID_SHARD_ASYNC_GATHER=0: every gather joined as it is begun (AllGather, the path before the
// overlap), for a GPU run where gathers beside the layouts' own NCCL work misbehave. Read once.
bool AsyncGathers() {
  static const bool async = [] {
    const char* v = std::getenv("DGRID_SHARD_ASYNC_GATHER");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return async;
}

// The part of a storage that a block's tensors use, in elements: [lo, hi).
struct Segment {
  const void* storage = nullptr;
  at::Tensor tensor;  // One tensor over the storage (for its storage and dtype).
  int buffer = -1;
  int64_t lo = 0, hi = 0;
  int64_t start = 0;  // Where element `lo` lands in the buffer.
};

}  // namespace

ShardedBlocks::Packing ShardedBlocks::Pack(const std::vector<at::Tensor>& tensors, int parts) {
  TORCH_CHECK(parts >= 1, "sharded weights: ", parts, " parts");
  Packing out;
  std::vector<Segment> segments;
  std::vector<at::ScalarType> dtypes;
  std::vector<int> segment_of(tensors.size(), -1);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const at::Tensor& t = tensors[k];
    if (!t.defined()) continue;
    const void* key = t.storage().unsafeGetStorageImpl();
    auto it = std::find_if(segments.begin(), segments.end(),
                           [&](const Segment& s) { return s.storage == key; });
    // The elements this tensor reads: from its offset to one past its last element.
    int64_t end = t.storage_offset();
    if (t.numel() > 0) {
      end += 1;
      for (int64_t d = 0; d < t.dim(); ++d) {
        TORCH_CHECK(t.stride(d) >= 0, "sharded weights: a tensor with a negative stride");
        end += (t.size(d) - 1) * t.stride(d);
      }
    }
    if (it == segments.end()) {
      Segment s;
      s.storage = key;
      s.tensor = t;
      s.lo = t.storage_offset();
      s.hi = std::max(end, s.lo);
      auto d = std::find(dtypes.begin(), dtypes.end(), t.scalar_type());
      if (d == dtypes.end()) {
        dtypes.push_back(t.scalar_type());
        d = dtypes.end() - 1;
      }
      s.buffer = static_cast<int>(d - dtypes.begin());
      segments.push_back(std::move(s));
      it = segments.end() - 1;
    } else {
      TORCH_CHECK(it->tensor.scalar_type() == t.scalar_type(),
                  "sharded weights: one storage viewed as two dtypes");
      it->lo = std::min(it->lo, t.storage_offset());
      it->hi = std::max(it->hi, end);
    }
    segment_of[k] = static_cast<int>(it - segments.begin());
  }
  // Lay the segments out, each from an aligned element at or below its `lo` (so a tensor keeps its
  // offset modulo the alignment).
  std::vector<int64_t> cursor(dtypes.size(), 0);
  for (Segment& s : segments) {
    const int64_t item = static_cast<int64_t>(s.tensor.element_size());
    const int64_t align = std::max<int64_t>(1, kAlignBytes / item);
    s.lo -= s.lo % align;
    s.start = RoundUp(cursor[s.buffer], align);
    cursor[s.buffer] = s.start + (s.hi - s.lo);
  }
  for (size_t b = 0; b < dtypes.size(); ++b) {
    const at::Tensor& like = std::find_if(segments.begin(), segments.end(), [&](const Segment& s) {
                               return s.buffer == static_cast<int>(b);
                             })->tensor;
    const int64_t length = std::max<int64_t>(parts, RoundUp(cursor[b], parts));
    // Zeros, so that the padding (and the gaps of alignment) are the same bytes on every rank.
    out.buffers.push_back(at::zeros({length}, like.options()));
  }
  for (const Segment& s : segments) {
    const int64_t item = static_cast<int64_t>(s.tensor.element_size());
    const int64_t n = s.hi - s.lo;
    if (n == 0) continue;
    const int64_t storage_elements = static_cast<int64_t>(s.tensor.storage().nbytes()) / item;
    const at::Tensor flat =
        at::empty({0}, s.tensor.options()).set_(s.tensor.storage(), 0, {storage_elements}, {1});
    out.buffers[s.buffer].narrow(0, s.start, n).copy_(flat.narrow(0, s.lo, n));
    out.content_bytes += n * item;
  }
  for (size_t k = 0; k < tensors.size(); ++k) {
    TensorView v;
    if (segment_of[k] >= 0) {
      const at::Tensor& t = tensors[k];
      const Segment& s = segments[segment_of[k]];
      v.buffer = s.buffer;
      v.sizes = t.sizes().vec();
      v.strides = t.strides().vec();
      v.offset = s.start + (t.storage_offset() - s.lo);
    }
    out.views.push_back(std::move(v));
  }
  return out;
}

std::vector<at::Tensor> ShardedBlocks::Unpack(const std::vector<at::Tensor>& buffers,
                                              const std::vector<TensorView>& views) {
  std::vector<at::Tensor> out;
  out.reserve(views.size());
  for (const TensorView& v : views) {
    out.push_back(v.buffer < 0 ? at::Tensor()
                               : buffers[v.buffer].as_strided(v.sizes, v.strides, v.offset));
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const ShardedBlocks>> ShardedBlocks::Create(
    std::vector<std::vector<at::Tensor>> blocks, int rank, int size, int64_t prefetch,
    c10::Device device) {
  if (size < 2) {
    return InvalidArgument("--dit-shard-weights: a group of ", size,
                           " rank has nothing to shard over; it needs 2 or more");
  }
  if (rank < 0 || rank >= size) {
    return InvalidArgument("--dit-shard-weights: rank ", rank, " outside a group of ", size);
  }
  if (prefetch < 1) {
    return InvalidArgument("--dit-shard-prefetch: ", prefetch, " blocks; it must be at least 1");
  }
  std::shared_ptr<ShardedBlocks> out(new ShardedBlocks());
  out->rank_ = rank;
  out->size_ = size;
  out->prefetch_ = prefetch;
  out->device_ = device;
  RETURN_IF_ERROR(TorchCall("sharded weights: packing the blocks", [&] {
    for (std::vector<at::Tensor>& tensors : blocks) {
      Packing packing = Pack(tensors, size);
      Block block;
      for (const at::Tensor& buffer : packing.buffers) {
        const int64_t part = buffer.numel() / size;
        // A copy, so that the whole packed buffer is freed with `packing`.
        at::Tensor shard = at::empty({part}, buffer.options().device(device));
        shard.copy_(buffer.narrow(0, rank * part, part));
        out->kept_bytes_ += static_cast<int64_t>(shard.nbytes());
        block.shards.push_back(std::move(shard));
        block.lengths.push_back(buffer.numel());
      }
      block.views = std::move(packing.views);
      out->unsharded_bytes_ += packing.content_bytes;
      out->blocks_.push_back(std::move(block));
      tensors.clear();
    }
  }));
  return std::shared_ptr<const ShardedBlocks>(std::move(out));
}

at::TensorOptions ShardedBlocks::tensor_options(int64_t i, size_t index) const {
  const Block& block = blocks_[i];
  const TensorView& v = block.views[index];
  if (v.buffer < 0) return at::TensorOptions();
  return block.shards[v.buffer].options();
}

absl::Status ShardedBlocks::CheckCommunicator(const Communicator* comm) const {
  if (comm == nullptr) {
    return InvalidArgument("--dit-shard-weights: the blocks are sharded over a group of ", size_,
                           " ranks; a forward pass needs that group's communicator "
                           "(SequenceParallelContext::group)");
  }
  if (comm->size() != size_ || comm->rank() != rank_) {
    return InvalidArgument("--dit-shard-weights: the blocks were sharded for rank ", rank_, " of ",
                           size_, ", the communicator is rank ", comm->rank(), " of ",
                           comm->size());
  }
  return absl::OkStatus();
}

ShardedBlocks::Pass::Pass(const ShardedBlocks& blocks, Communicator& comm,
                          const GatherObserverForTesting* observer)
    : blocks_(blocks), comm_(comm), observer_(observer) {}

ShardedBlocks::Pass::~Pass() {
  // A pass that failed (or stopped) with gathers in flight: their buffers may be freed only once
  // the collective is done with them. A broken communicator has aborted them already.
  // (Any begun, counted or not: a start that failed after NCCL queued its work is not counted.)
  if (begun_) comm_.JoinPending().IgnoreError();
}

void ShardedBlocks::Pass::Check(const absl::Status& s, int64_t i, const char* what) {
  if (s.ok()) return;
  if (status_.ok()) status_ = s;
  TORCH_CHECK(false, "sharded weights: ", what, " block ", i, ": ", s.ToString());
}

void ShardedBlocks::Pass::Start(int64_t i) {
  const Block& block = blocks_.blocks_[i];
  // Gloo moves host memory only: a model on a GPU in a Gloo group gathers through host copies,
  // synchronously.
  const bool through_host = comm_.backend() == "gloo" && !blocks_.device_.is_cpu();
  Gathered& gathered = gathered_[i];
  for (size_t b = 0; b < block.shards.size(); ++b) {
    const at::Tensor& shard = block.shards[b];
    // Held before the collective is begun, so that it outlives the collective whatever happens.
    gathered.buffers.push_back(at::empty({block.lengths[b]}, shard.options()));
    at::Tensor& whole = gathered.buffers.back();
    if (through_host) {
      at::Tensor host = at::empty({block.lengths[b]}, shard.options().device(at::kCPU));
      Check(comm_.AllGather(shard.cpu(), host), i, "gathering");
      whole.copy_(host);
    } else if (!AsyncGathers()) {
      Check(comm_.AllGather(shard, whole), i, "gathering");
    } else {
      begun_ = true;
      Check(comm_.AllGatherStart(shard, whole), i, "gathering");
      ++gathered.started;
      ++started_;
    }
  }
  gathered.tensors = Unpack(gathered.buffers, block.views);
}

void ShardedBlocks::Pass::Join(int64_t i) {
  int joining = 0;
  for (auto it = gathered_.begin(); it != gathered_.end() && it->first <= i; ++it) {
    joining += it->second.started;
  }
  if (joining == 0) return;
  // The gathers finish in the order begun, which is block order: the newest ones are the later
  // blocks', kept in flight.
  Check(comm_.JoinPendingExceptNewest(started_ - joining), i, "joining the gather of");
  for (auto it = gathered_.begin(); it != gathered_.end() && it->first <= i; ++it) {
    it->second.started = 0;
  }
  started_ -= joining;
}

const std::vector<at::Tensor>& ShardedBlocks::Pass::Acquire(int64_t i) {
  TORCH_CHECK(i >= 0 && i < blocks_.num_blocks(), "sharded weights: block ", i,
              " out of range [0, ", blocks_.num_blocks(), ")");
  TORCH_CHECK(i >= released_, "sharded weights: block ", i,
              " asked for after it was dropped (blocks must run in order)");
  if (i >= next_gather_) {  // Not begun (the first block, or blocks skipped past the prefetch).
    next_gather_ = i;
    Start(next_gather_++);
  }
  // Before the blocks before `i` are dropped: a block begun but skipped over is joined with them.
  Join(i);
  gathered_.erase(gathered_.begin(), gathered_.lower_bound(i));
  released_ = i;
  const int64_t last = std::min(blocks_.num_blocks() - 1, i + blocks_.prefetch_);
  while (next_gather_ <= last) Start(next_gather_++);
  if (observer_ != nullptr && *observer_) {
    std::vector<int64_t> gathered;
    for (const auto& [block, unused] : gathered_) gathered.push_back(block);
    (*observer_)(i, gathered);
  }
  return gathered_.at(i).tensors;
}

void LogShardedWeights(const ShardedBlocks& sharded, int64_t outside_bytes,
                       const std::string& device) {
  constexpr double kMiB = 1 << 20;
  DG_LOG_INFO("",
              "sharded weights: rank %d of %d keeps %.1f MiB of the weights on %s (%.1f MiB of "
              "%d blocks' %.1f MiB, plus %.1f MiB outside the blocks) where an unsharded rank "
              "keeps %.1f MiB; gathers %d block(s) ahead (--dit-shard-prefetch)",
              sharded.rank(), sharded.size(),
              static_cast<double>(sharded.kept_bytes() + outside_bytes) / kMiB, device,
              static_cast<double>(sharded.kept_bytes()) / kMiB,
              static_cast<int>(sharded.num_blocks()),
              static_cast<double>(sharded.unsharded_bytes()) / kMiB,
              static_cast<double>(outside_bytes) / kMiB,
              static_cast<double>(sharded.unsharded_bytes() + outside_bytes) / kMiB,
              static_cast<int>(sharded.prefetch()));
}

}  // namespace dgrid
