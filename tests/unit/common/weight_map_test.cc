// Tests of common/weight_map.{h,cc}.
#include "common/weight_map.h"

#include <ATen/ATen.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dgrid {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

WeightMap TwoWeights() {
  WeightMap weights("/models/flux/transformer");
  weights.Insert("proj.weight", at::ones({4, 3}));
  weights.Insert("proj.bias", at::zeros({4}));
  return weights;
}

TEST(WeightMapTest, TakeRemovesTheEntry) {
  WeightMap weights = TwoWeights();
  EXPECT_EQ(weights.size(), 2u);
  EXPECT_TRUE(weights.Contains("proj.weight"));
  absl::StatusOr<at::Tensor> w = weights.Take("proj.weight", {4, 3});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(at::equal(*w, at::ones({4, 3})));
  EXPECT_FALSE(weights.Contains("proj.weight"));
  EXPECT_THAT(weights.RemainingNames(), ElementsAre("proj.bias"));
}

TEST(WeightMapTest, EmptyShapeSkipsTheCheckAndMinusOneMatchesAnySize) {
  WeightMap weights = TwoWeights();
  EXPECT_TRUE(weights.Take("proj.bias").ok());
  absl::StatusOr<at::Tensor> w = weights.Take("proj.weight", {-1, 3});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(weights.size(), 0u);
}

TEST(WeightMapTest, MissingParameterIsNotFound) {
  WeightMap weights = TwoWeights();
  absl::StatusOr<at::Tensor> w = weights.Take("proj.gamma");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), AllOf(HasSubstr("/models/flux/transformer"),
                                          HasSubstr("missing parameter 'proj.gamma'")));
}

TEST(WeightMapTest, WrongShapeIsInvalidArgumentAndKeepsTheEntry) {
  WeightMap weights = TwoWeights();
  absl::StatusOr<at::Tensor> w = weights.Take("proj.weight", {3, 4});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("/models/flux/transformer"), HasSubstr("'proj.weight'"),
                    HasSubstr("has shape [4, 3], expected [3, 4]")));
  EXPECT_TRUE(weights.Contains("proj.weight"));
  // A different rank is a mismatch too, even with wildcards.
  EXPECT_EQ(weights.Take("proj.weight", {-1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(weights.Take("proj.weight", {4, 3, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WeightMapTest, TakeOptional) {
  WeightMap weights = TwoWeights();
  absl::StatusOr<at::Tensor> absent = weights.TakeOptional("norm.weight", {4});
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->defined());
  absl::StatusOr<at::Tensor> present = weights.TakeOptional("proj.bias", {4});
  ASSERT_TRUE(present.ok());
  EXPECT_TRUE(present->defined());
  EXPECT_EQ(weights.TakeOptional("proj.weight", {2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WeightMapTest, InsertReplacesAndNamesAreSorted) {
  WeightMap weights("src");
  weights.Insert("b", at::ones({1}));
  weights.Insert("a", at::ones({1}));
  weights.Insert("b", at::zeros({2}));
  EXPECT_EQ(weights.size(), 2u);
  EXPECT_EQ(weights.tensors().at("b").numel(), 2);
  EXPECT_THAT(weights.RemainingNames(), ElementsAre("a", "b"));
  EXPECT_EQ(weights.source(), "src");
}

}  // namespace
}  // namespace dgrid
