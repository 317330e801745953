// Sharded weights of a diffusion transformer's blocks in a denoiser group (--dit-shard-weights,
// issue #20 item 2; FSDP-style inference).
//
// Every rank of a group of N keeps 1/N of each block's weights. Per block the tensors are packed
// into one flat buffer per dtype (Pack: each distinct storage once, at a 64-byte boundary, the
// buffer zero-padded to a multiple of N elements); rank r keeps elements [r * len / N, (r + 1) *
// len / N) of each. A forward pass all-gathers a block's buffers over the whole group just before
// the block runs and views the block's tensors out of them (Unpack: the original sizes, strides
// and offsets, so views of one storage stay views of one buffer); the gathered buffers are dropped
// once the next block is acquired. Bytes are moved, never converted, so the block computes exactly
// what the unsharded model computes. Family-agnostic: a block is a list of tensors, as for
// layerwise offload (flux_transformer.cc and wan_transformer.cc flatten their block structs).
//
// The gathers are collectives over the group: every rank must run the same blocks in the same
// order, which the group's layouts (Ulysses, Ring, CFG) and step caching guarantee (every rank
// makes the same skip decision). When block i is asked for, a pass joins block i's gather (begun
// earlier, or now for the first block), drops the blocks before i, begins the gathers of blocks
// i + 1 .. i + prefetch that are not begun yet (Communicator::AllGatherStart) and hands block i to
// compute, so at most prefetch + 1 gathered blocks are held at once. Overlap: on NCCL the gathers
// run on the communicator's stream while block i computes, and the caller's stream waits for
// block i + 1's gather only when block i + 1 is asked for (JoinPendingExceptNewest keeps the later
// gathers in flight); a gather begins after the work enqueued before it (the compute of block
// i - 1, whose gathered memory the new buffers may reuse). The gathered buffers are held until
// their gather is joined (NCCL writes them on its own stream), and a pass destroyed with gathers in
// flight joins them first. Gloo's AllGatherStart completes on the host (no overlap), as does the
// gather of a GPU model over Gloo (through host copies). The group's communicator carries nothing
// else during a forward (the layouts' collectives use their Split communicators), so the join
// counts the pass's own gathers only. DGRID_SHARD_ASYNC_GATHER=0 joins every gather as it is
// begun (the path before the overlap; the planner still assumes the overlap). See
// docs/perf-notes.md, "Asynchronous all-gather of sharded blocks".
//
// Ownership: ShardedBlocks owns this rank's shards; it is immutable after Create and may be shared
// by threads. A Pass belongs to one forward pass on one thread and owns the gathered blocks; it
// uses the group's communicator, which allows one caller at a time (so one pass at a time per
// group). Errors: Create gives INVALID_ARGUMENT naming the flag for a group below 2 ranks, a rank
// outside it or a prefetch below 1, and the TorchCall mapping for allocation failures;
// Pass::Acquire throws c10::Error (callers run it inside TorchCall) and keeps a failed collective's
// own status in status().
#ifndef DGRID_SERVICES_DENOISER_MODELS_SHARDED_BLOCKS_H_
#define DGRID_SERVICES_DENOISER_MODELS_SHARDED_BLOCKS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dgrid {

class ShardedBlocks {
 public:
  // Test seam: called as a block is handed to compute, with its index and the (ascending) indices
  // of every block the pass holds gathered (or being gathered) at that moment, that block
  // included.
  using GatherObserverForTesting =
      std::function<void(int64_t block, const std::vector<int64_t>& gathered)>;

  // How a tensor of a block is viewed out of its packed buffer.
  struct TensorView {
    int buffer = -1;  // Index into the buffers; -1: an undefined tensor.
    std::vector<int64_t> sizes, strides;
    int64_t offset = 0;  // In elements of the buffer.
  };
  // One block packed: a flat, contiguous buffer per dtype (in the order the dtypes first appear),
  // each padded with zeros to a multiple of `parts` elements, and a view per tensor.
  struct Packing {
    std::vector<at::Tensor> buffers;
    std::vector<TensorView> views;
    int64_t content_bytes = 0;  // The distinct bytes packed, without alignment and padding.
  };
  // Packs `tensors` (any device; undefined entries stay undefined; tensors sharing a storage are
  // packed once, as the span of it they use). Throws c10::Error for a storage viewed as two dtypes
  // or negative strides.
  static Packing Pack(const std::vector<at::Tensor>& tensors, int parts);
  // The tensors of a block from its (gathered) buffers, as views into them.
  static std::vector<at::Tensor> Unpack(const std::vector<at::Tensor>& buffers,
                                        const std::vector<TensorView>& views);

  // Packs each block of `blocks` (lists of tensors, on any one device) and keeps this rank's
  // shard of every buffer on `device`. Each block's list is emptied as it is taken, so a caller
  // that moved its tensors in frees the originals one block at a time.
  static absl::StatusOr<std::shared_ptr<const ShardedBlocks>> Create(
      std::vector<std::vector<at::Tensor>> blocks, int rank, int size, int64_t prefetch,
      c10::Device device);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int64_t prefetch() const { return prefetch_; }
  c10::Device device() const { return device_; }
  // Bytes of this rank's shards, and the blocks' bytes unsharded (each storage span once).
  int64_t kept_bytes() const { return kept_bytes_; }
  int64_t unsharded_bytes() const { return unsharded_bytes_; }
  // This rank's shard of each buffer of block `i`.
  const std::vector<at::Tensor>& shards(int64_t i) const { return blocks_[i].shards; }
  // The dtype and device tensor `index` of block `i` has once gathered (the default options for
  // an undefined one).
  at::TensorOptions tensor_options(int64_t i, size_t index) const;

  // INVALID_ARGUMENT naming --dit-shard-weights unless `comm` is a communicator over the group the
  // blocks were sharded for (its rank and size).
  absl::Status CheckCommunicator(const Communicator* comm) const;

  // One forward pass's gathered blocks. Blocks are asked for in non-decreasing order.
  class Pass {
   public:
    // `comm`: the whole group (CheckCommunicator); `observer` may be null. Both must outlive the
    // pass.
    Pass(const ShardedBlocks& blocks, Communicator& comm, const GatherObserverForTesting* observer);
    // Joins the gathers still in flight (their buffers are written until then).
    ~Pass();
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

    // Block `i`'s tensors, whole. Joins block i's gather, drops the blocks before `i`, begins the
    // gathers of blocks up to i + prefetch that are not begun yet. The reference is valid until
    // the next Acquire. Throws c10::Error when `i` is out of range or before a block already
    // dropped, or when a gather fails (then status() says why, with the collective's code).
    const std::vector<at::Tensor>& Acquire(int64_t i);
    // The first failed gather's status; OK otherwise.
    const absl::Status& status() const { return status_; }

   private:
    struct Gathered {
      std::vector<at::Tensor> buffers;  // Written by the collective until joined.
      std::vector<at::Tensor> tensors;  // The block's views into `buffers`.
      int started = 0;                  // AllGatherStart calls not joined yet.
    };
    // Begins block i's gathers.
    void Start(int64_t i);
    // Joins every gather begun for blocks up to `i`.
    void Join(int64_t i);
    // Keeps a failed collective's status and throws.
    void Check(const absl::Status& s, int64_t i, const char* what);

    const ShardedBlocks& blocks_;
    Communicator& comm_;
    const GatherObserverForTesting* observer_;
    std::map<int64_t, Gathered> gathered_;
    int64_t next_gather_ = 0;  // The first block not begun yet.
    int64_t released_ = 0;     // Blocks below this were dropped.
    int started_ = 0;          // AllGatherStart calls of this pass not joined yet, all blocks.
    bool begun_ = false;       // Whether any AllGatherStart was called (joined at the end).
    absl::Status status_;
  };

 private:
  struct Block {
    std::vector<at::Tensor> shards;  // One per buffer, on device_.
    std::vector<int64_t> lengths;    // Each buffer's whole (padded) length.
    std::vector<TensorView> views;
  };
  ShardedBlocks() = default;

  std::vector<Block> blocks_;
  int rank_ = 0;
  int size_ = 1;
  int64_t prefetch_ = 1;
  c10::Device device_ = c10::Device(c10::kCPU);
  int64_t kept_bytes_ = 0;
  int64_t unsharded_bytes_ = 0;
};

// The load-time log line of a rank with sharded blocks: the bytes it keeps (its shards and the
// `outside_bytes` of the weights outside the blocks, whole on every rank) against the unsharded
// model's, on `device`.
void LogShardedWeights(const ShardedBlocks& sharded, int64_t outside_bytes,
                       const std::string& device);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_SHARDED_BLOCKS_H_
