#include "parallel/parallel_layout.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {

absl::StatusOr<ParallelLayout> ParallelLayout::Create(int cfg, int ring, int ulysses, int rank) {
  if (cfg != 1 && cfg != 2) {
    return InvalidArgument("cfg degree must be 1 or 2, got ", cfg);
  }
  if (ring < 1) return InvalidArgument("ring degree must be >= 1, got ", ring);
  if (ulysses < 1) return InvalidArgument("ulysses degree must be >= 1, got ", ulysses);
  const int64_t size = int64_t{cfg} * ring * ulysses;
  if (size > 65536) return InvalidArgument("group size ", size, " is implausibly large");
  if (rank < 0 || rank >= size) {
    return InvalidArgument("rank ", rank, " is outside [0, ", size, ") for cfg ", cfg, " x ring ",
                           ring, " x ulysses ", ulysses);
  }
  return ParallelLayout(cfg, ring, ulysses, rank);
}

absl::Status ParallelLayout::CheckModel(int num_heads) const {
  if (num_heads <= 0) return InvalidArgument("model has ", num_heads, " attention heads");
  if (num_heads % ulysses_ != 0) {
    return InvalidArgument("ulysses degree ", ulysses_, " does not divide the model's ", num_heads,
                           " attention heads");
  }
  return absl::OkStatus();
}

ParallelCoords ParallelLayout::CoordsOf(int rank) const {
  ParallelCoords c;
  c.ulysses = rank % ulysses_;
  c.ring = (rank / ulysses_) % ring_;
  c.cfg = rank / (ulysses_ * ring_);
  return c;
}

int ParallelLayout::RankOf(const ParallelCoords& c) const {
  return c.ulysses + ulysses_ * (c.ring + ring_ * c.cfg);
}

std::vector<int> ParallelLayout::UlyssesGroup() const {
  ParallelCoords c = coords();
  std::vector<int> ranks;
  for (c.ulysses = 0; c.ulysses < ulysses_; ++c.ulysses) ranks.push_back(RankOf(c));
  return ranks;
}

std::vector<int> ParallelLayout::RingGroup() const {
  ParallelCoords c = coords();
  std::vector<int> ranks;
  for (c.ring = 0; c.ring < ring_; ++c.ring) ranks.push_back(RankOf(c));
  return ranks;
}

std::vector<int> ParallelLayout::CfgGroup() const {
  ParallelCoords c = coords();
  std::vector<int> ranks;
  for (c.cfg = 0; c.cfg < cfg_; ++c.cfg) ranks.push_back(RankOf(c));
  return ranks;
}

std::vector<int> ParallelLayout::SequenceGroup() const {
  const int base = coords().cfg * ring_ * ulysses_;
  std::vector<int> ranks;
  for (int i = 0; i < ring_ * ulysses_; ++i) ranks.push_back(base + i);
  return ranks;
}

int ParallelLayout::sequence_shard() const { return rank_ % (ring_ * ulysses_); }

int64_t ParallelLayout::PaddedLength(int64_t length) const {
  const int64_t m = sequence_parallel_degree();
  return (length + m - 1) / m * m;
}

std::string ParallelLayout::ToString() const {
  return absl::StrCat("cfg", cfg_, "-ring", ring_, "-ulysses", ulysses_);
}

}  // namespace dgrid
