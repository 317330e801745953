// Sequence (Ulysses, Ring, USP) and CFG parallelism of one denoiser group, as the model families'
// transformers and samplers see it: a layout plus the communicators of this rank's subgroups.
//
// A group of cfg * ring * ulysses ranks runs one request. Every rank holds the whole latents and
// runs the whole sampler loop; inside the transformer's Forward the tokens are split over the ring
// * ulysses ranks of a CFG branch (ParallelLayout::sequence_shard(), padded to a multiple of ring *
// ulysses) and the prediction is gathered back on every rank: FLUX shards its text and its image
// tokens (FluxTransformer2DModel::Forward), Wan its video tokens after the patch embedding
// (WanTransformer3DModel::Forward; its cross-attention keys, the text, stay whole on every rank).
// With cfg == 2 the two branches run the conditional and the unconditional pass of classifier-free
// guidance and exchange their predictions (ExchangeCfgBranches; RunFluxSampler, RunWanSampler).
//
// Ownership: SequenceParallelContext does not own its communicators (the group service, or a
// SequenceParallelGroup, does); it must outlive the Forward / sampler call it is passed to.
// Threads: the communicators are used from the calling thread only, one call at a time.
#ifndef DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_PARALLEL_H_
#define DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_PARALLEL_H_

#include <cstdint>
#include <memory>
#include <utility>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"

namespace dgrid {

struct SequenceParallelContext {
  explicit SequenceParallelContext(ParallelLayout l) : layout(l) {}

  ParallelLayout layout;
  // Over layout.UlyssesGroup() (rank = ulysses coordinate); required when layout.ulysses() > 1.
  Communicator* ulysses = nullptr;
  // Over layout.RingGroup() (rank = ring coordinate); required when layout.ring() > 1.
  Communicator* ring = nullptr;
  // Over layout.CfgGroup() (rank = cfg coordinate); required when layout.cfg() > 1.
  Communicator* cfg = nullptr;
  // Over the whole group (rank = layout rank): what a model with sharded block weights
  // (--dit-shard-weights, sharded_blocks.h) gathers its blocks through; not used otherwise.
  Communicator* group = nullptr;
  // Head groups that Ulysses' all-to-alls are pipelined in (SequenceParallelAttention::Attend): 1
  // = all heads in one exchange each way, no overlap; 0 = automatic (DGRID_ULYSSES_CHUNKS when
  // set, else 2 without ring and with an even number of heads per Ulysses rank, else 1). Must be
  // the same on every rank of the group.
  int ulysses_chunks = 0;

  // INVALID_ARGUMENT when a needed communicator is missing, its size or rank disagrees with the
  // layout, `num_heads` is not divisible by the Ulysses degree, or ulysses_chunks is negative or
  // does not divide the heads per Ulysses rank.
  absl::Status Validate(int64_t num_heads) const;
};

// Which tokens of a sequence (the text, or the image) a rank holds: the sequence of `length` tokens
// is padded to `padded` (a multiple of ring * ulysses) and cut into shards of `shard_length`; shard
// s holds tokens [s * shard_length, (s + 1) * shard_length). Padding sits at the end of the last
// shards.
struct SequenceShardPlan {
  SequenceShardPlan(const ParallelLayout& layout, int64_t length);

  int64_t length = 0;
  int64_t padded = 0;
  int64_t shard_length = 0;
  int shard = 0;

  int64_t start() const { return shard * shard_length; }
  // Number of real (unpadded) tokens among [begin, begin + count).
  int64_t ValidIn(int64_t begin, int64_t count) const;
};

// Owns the subgroup communicators of one rank, split from a communicator over the whole group.
struct SequenceParallelGroup {
  explicit SequenceParallelGroup(const ParallelLayout& layout) : context(layout) {}

  SequenceParallelContext context;  // Points into the members below.
  std::unique_ptr<Communicator> ulysses, ring, cfg;
};

// Splits `group` (rank i = group rank i, size layout.size()) into the Ulysses, Ring and CFG
// subgroups of `layout`; the result's context.group points at `group` itself, which must outlive
// it. Collective over all ranks of `group` (each calls it with its own layout rank); errors are
// those of Communicator::Split, or INVALID_ARGUMENT when sizes disagree.
absl::StatusOr<std::unique_ptr<SequenceParallelGroup>> SplitSequenceParallelGroup(
    Communicator& group, const ParallelLayout& layout);

// CFG parallel: gathers this rank's `prediction` (the conditional one on CFG coordinate 0, the
// unconditional one on coordinate 1) over the CFG group `cfg` (size 2) and returns {conditional,
// unconditional} on both ranks, each combined by its sampler as the single-rank loop combines
// them. Errors: the collective's (DEADLINE_EXCEEDED, UNAVAILABLE, ...), INTERNAL from LibTorch.
absl::StatusOr<std::pair<at::Tensor, at::Tensor>> ExchangeCfgBranches(Communicator& cfg,
                                                                      const at::Tensor& prediction);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_PARALLEL_H_
