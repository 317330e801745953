// Rank arithmetic of a denoiser group (a value type; no communication here).
//
// A group of size = cfg * ring * ulysses ranks. Ulysses is innermost, then Ring, then CFG:
//   rank = u + U * (r + R * c)
// so a Ulysses group is U contiguous ranks (its all-to-all stays on the fastest links), a Ring
// group is strided by U, and the two CFG branches are U * R apart. Ref: the Megatron-style order
// used by xDiT's and SGLang's parallel state.
#ifndef DGRID_PARALLEL_PARALLEL_LAYOUT_H_
#define DGRID_PARALLEL_PARALLEL_LAYOUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dgrid {

struct ParallelCoords {
  int cfg = 0;
  int ring = 0;
  int ulysses = 0;
};

class ParallelLayout {
 public:
  // Validates and builds a layout: every degree >= 1, cfg in {1, 2}, rank in [0, size).
  // INVALID_ARGUMENT with the offending degree otherwise.
  static absl::StatusOr<ParallelLayout> Create(int cfg, int ring, int ulysses, int rank);

  // Checks the layout against a model: attention heads divisible by ulysses.
  absl::Status CheckModel(int num_heads) const;

  int cfg() const { return cfg_; }
  int ring() const { return ring_; }
  int ulysses() const { return ulysses_; }
  int rank() const { return rank_; }
  int size() const { return cfg_ * ring_ * ulysses_; }
  // Ranks that split one sequence (ring * ulysses).
  int sequence_parallel_degree() const { return ring_ * ulysses_; }

  ParallelCoords coords() const { return CoordsOf(rank_); }
  ParallelCoords CoordsOf(int rank) const;
  int RankOf(const ParallelCoords& coords) const;

  // Members of this rank's subgroups, in order of their coordinate along that axis.
  std::vector<int> UlyssesGroup() const;
  std::vector<int> RingGroup() const;
  std::vector<int> CfgGroup() const;
  // The ring * ulysses ranks that share this rank's CFG branch, in sequence-shard order
  // (shard index = u + U * r).
  std::vector<int> SequenceGroup() const;
  // This rank's shard of the sequence within its CFG branch, in [0, ring * ulysses).
  int sequence_shard() const;

  // Sequence length padded up to a multiple of ring * ulysses.
  int64_t PaddedLength(int64_t length) const;

  // "cfg2-ring1-ulysses4" — also the name used in configs and reports.
  std::string ToString() const;

  bool operator==(const ParallelLayout& o) const {
    return cfg_ == o.cfg_ && ring_ == o.ring_ && ulysses_ == o.ulysses_ && rank_ == o.rank_;
  }

 private:
  ParallelLayout(int cfg, int ring, int ulysses, int rank)
      : cfg_(cfg), ring_(ring), ulysses_(ulysses), rank_(rank) {}

  int cfg_;
  int ring_;
  int ulysses_;
  int rank_;
};

}  // namespace dgrid

#endif  // DGRID_PARALLEL_PARALLEL_LAYOUT_H_
