#include "parallel/parallel_layout.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParallelLayout, RankOrderIsUlyssesThenRingThenCfg) {
  // cfg2 x ring2 x ulysses2: rank = u + 2 * (r + 2 * c).
  auto layout = *ParallelLayout::Create(2, 2, 2, 5);  // u=1, r=0, c=1
  EXPECT_EQ(layout.size(), 8);
  EXPECT_EQ(layout.coords().ulysses, 1);
  EXPECT_EQ(layout.coords().ring, 0);
  EXPECT_EQ(layout.coords().cfg, 1);
  EXPECT_THAT(layout.UlyssesGroup(), ElementsAre(4, 5));
  EXPECT_THAT(layout.RingGroup(), ElementsAre(5, 7));
  EXPECT_THAT(layout.CfgGroup(), ElementsAre(1, 5));
  EXPECT_THAT(layout.SequenceGroup(), ElementsAre(4, 5, 6, 7));
  EXPECT_EQ(layout.sequence_shard(), 1);
  EXPECT_EQ(layout.ToString(), "cfg2-ring2-ulysses2");
}

TEST(ParallelLayout, CoordsRoundTripAndGroupsPartitionRanks) {
  for (int cfg : {1, 2}) {
    for (int ring : {1, 2, 3}) {
      for (int ulysses : {1, 2, 4}) {
        const int size = cfg * ring * ulysses;
        std::set<std::vector<int>> ulysses_groups;
        for (int rank = 0; rank < size; ++rank) {
          auto layout = *ParallelLayout::Create(cfg, ring, ulysses, rank);
          EXPECT_EQ(layout.RankOf(layout.coords()), rank);
          const auto group = layout.UlyssesGroup();
          EXPECT_EQ(group.back() - group.front(), ulysses - 1);  // contiguous
          ulysses_groups.insert(group);
          EXPECT_EQ(layout.RingGroup().size(), static_cast<size_t>(ring));
        }
        EXPECT_EQ(ulysses_groups.size(), static_cast<size_t>(cfg * ring));
      }
    }
  }
}

TEST(ParallelLayout, Validation) {
  EXPECT_THAT(ParallelLayout::Create(3, 1, 1, 0).status().message(),
              HasSubstr("cfg degree must be 1 or 2, got 3"));
  EXPECT_THAT(ParallelLayout::Create(1, 0, 1, 0).status().message(),
              HasSubstr("ring degree must be >= 1"));
  EXPECT_THAT(ParallelLayout::Create(1, 1, -2, 0).status().message(),
              HasSubstr("ulysses degree must be >= 1"));
  EXPECT_THAT(ParallelLayout::Create(1, 2, 2, 4).status().message(),
              HasSubstr("rank 4 is outside [0, 4)"));
  auto layout = *ParallelLayout::Create(1, 1, 5, 0);
  EXPECT_THAT(layout.CheckModel(24).message(),
              HasSubstr("ulysses degree 5 does not divide the model's 24 attention heads"));
  EXPECT_TRUE((*ParallelLayout::Create(1, 1, 4, 0)).CheckModel(24).ok());
}

TEST(ParallelLayout, Padding) {
  auto layout = *ParallelLayout::Create(1, 2, 2, 0);
  EXPECT_EQ(layout.PaddedLength(4096), 4096);
  EXPECT_EQ(layout.PaddedLength(4097), 4100);
  EXPECT_EQ(layout.PaddedLength(1), 4);
}

}  // namespace
}  // namespace dgrid
