// Model offload (common/model_offload.h) on the CPU with a toy model built from a WeightMap: the
// weights in use are copies of their own made at the start of a use and dropped at its end,
// overlapping uses share one copy, the bookkeeping (on_device, moves, the observer) says so, the
// result equals the resident model's bit for bit, and load failures come back as statuses.
#include "common/model_offload.h"

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// y = x W^T + b, built from "w" and "b" like a model's FromWeights.
struct ToyModel {
  at::Tensor w, b;
  int64_t features = 0;  // "config"

  static absl::StatusOr<ToyModel> FromWeights(int64_t features, WeightMap& weights) {
    ToyModel m;
    m.features = features;
    ASSIGN_OR_RETURN(m.w, weights.Take("w", {features, features}));
    ASSIGN_OR_RETURN(m.b, weights.Take("b", {features}));
    return m;
  }
  at::Tensor Forward(const at::Tensor& x) const { return at::addmm(b, x, w.t()); }
};

WeightMap ToyWeights() {
  at::manual_seed(7);
  WeightMap weights("toy");
  weights.Insert("w", at::randn({4, 4}));
  weights.Insert("b", at::randn({4}));
  weights.Insert("unused", at::randn({2}));
  return weights;
}

// Loads like the models' Load(folder, options, taken).
absl::StatusOr<ToyModel> LoadToy(const LoadOptions& options, WeightMap* taken) {
  WeightMap weights = ToyWeights();
  if (options.device != "cpu") return InvalidArgument("toy: loads on the CPU only");
  const WeightMap all = weights;
  ASSIGN_OR_RETURN(ToyModel model, ToyModel::FromWeights(4, weights));
  if (taken != nullptr) *taken = TakenWeights(all, weights);
  return model;
}

absl::StatusOr<ToyModel> RebuildToy(const ToyModel& like, WeightMap& weights) {
  return ToyModel::FromWeights(like.features, weights);
}

absl::StatusOr<PlacedModel<ToyModel>> LoadPlacedToy(bool offload) {
  return LoadPlacedModel<ToyModel>("toy", LoadOptions{}, offload, LoadToy, RebuildToy);
}

TEST(TakenWeightsTest, KeepsWhatTheModelTookSharingTheTensors) {
  WeightMap before = ToyWeights();
  WeightMap after = before;
  ASSERT_TRUE(ToyModel::FromWeights(4, after).ok());
  const WeightMap taken = TakenWeights(before, after);
  EXPECT_EQ(taken.source(), "toy");
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_TRUE(taken.Contains("w"));
  EXPECT_TRUE(taken.Contains("b"));
  EXPECT_FALSE(taken.Contains("unused"));
  EXPECT_TRUE(taken.tensors().at("w").is_same(before.tensors().at("w")));
}

TEST(ModelOffloadTest, ResidentModelHasNoResidencyAndIsUsedAsLoaded) {
  absl::StatusOr<PlacedModel<ToyModel>> placed = LoadPlacedToy(/*offload=*/false);
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_EQ(placed->residency(), nullptr);
  absl::StatusOr<std::shared_ptr<const ToyModel>> a = placed->Use();
  absl::StatusOr<std::shared_ptr<const ToyModel>> b = placed->Use();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), &placed->host());
  EXPECT_EQ(b->get(), &placed->host());
}

TEST(ModelOffloadTest, WeightsComeInForAUseAndLeaveAfterItWithTheSameResult) {
  absl::StatusOr<PlacedModel<ToyModel>> resident = LoadPlacedToy(false);
  absl::StatusOr<PlacedModel<ToyModel>> offloaded = LoadPlacedToy(true);
  ASSERT_TRUE(resident.ok() && offloaded.ok());
  const ModelResidency* residency = offloaded->residency();
  ASSERT_NE(residency, nullptr);
  EXPECT_EQ(residency->name(), "toy");
  EXPECT_TRUE(residency->device().is_cpu());
  EXPECT_EQ(residency->host_bytes(), (16 + 4) * 4);  // the unused weight is not kept
  EXPECT_EQ(residency->host_weights().size(), 2u);
  EXPECT_THAT(DescribeOffload(*residency), HasSubstr("toy: 0.0 MiB in host memory"));
  std::vector<std::string> events;
  residency->SetObserverForTesting([&](absl::string_view name, bool on_device) {
    events.push_back(absl::StrCat(name, on_device ? " in" : " out"));
  });
  EXPECT_FALSE(residency->on_device());

  const at::Tensor x = at::randn({3, 4});
  const at::Tensor expected = resident->host().Forward(x);
  for (int use = 1; use <= 2; ++use) {
    {
      absl::StatusOr<std::shared_ptr<const ToyModel>> model = offloaded->Use();
      ASSERT_TRUE(model.ok()) << model.status();
      EXPECT_TRUE(residency->on_device());
      // The weights in use are copies of the host ones, not views of them.
      const at::Tensor& host_w = residency->host_weights().tensors().at("w");
      EXPECT_NE((*model)->w.data_ptr(), host_w.data_ptr());
      EXPECT_NE((*model)->w.data_ptr(), offloaded->host().w.data_ptr());
      EXPECT_TRUE(at::equal((*model)->Forward(x), expected));
    }
    EXPECT_FALSE(residency->on_device());
    EXPECT_EQ(residency->moves_in(), use);
    EXPECT_EQ(residency->moves_out(), use);
  }
  EXPECT_THAT(events, ElementsAre("toy in", "toy out", "toy in", "toy out"));
}

TEST(ModelOffloadTest, OverlappingUsesShareOneCopyThatLeavesWithTheLast) {
  absl::StatusOr<PlacedModel<ToyModel>> placed = LoadPlacedToy(true);
  ASSERT_TRUE(placed.ok()) << placed.status();
  const ModelResidency& residency = *placed->residency();
  absl::StatusOr<std::shared_ptr<const ToyModel>> first = placed->Use();
  absl::StatusOr<std::shared_ptr<const ToyModel>> second = placed->Use();
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->get(), second->get());
  EXPECT_EQ(residency.moves_in(), 1);
  std::shared_ptr<const ToyModel> copy = *first;  // a copy of a pointer is the same use
  first->reset();
  second->reset();
  EXPECT_TRUE(residency.on_device());
  EXPECT_EQ(residency.moves_out(), 0);
  copy.reset();
  EXPECT_FALSE(residency.on_device());
  EXPECT_EQ(residency.moves_out(), 1);
}

TEST(ModelOffloadTest, AFailedBuildLeavesNothingOnTheDevice) {
  absl::StatusOr<PlacedModel<ToyModel>> placed = LoadPlacedModel<ToyModel>(
      "toy", LoadOptions{}, true, LoadToy,
      [](const ToyModel& like, WeightMap& weights) -> absl::StatusOr<ToyModel> {
        // The host model builds; a build over device copies (the second call) fails.
        static int calls = 0;
        if (++calls > 1) return absl::ResourceExhaustedError("toy: out of device memory");
        return ToyModel::FromWeights(like.features, weights);
      });
  ASSERT_TRUE(placed.ok()) << placed.status();
  const absl::Status s = placed->Use().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(placed->residency()->on_device());
  EXPECT_EQ(placed->residency()->moves_in(), 0);
}

TEST(ModelOffloadTest, LoadErrorsAndBadDevicesAreStatuses) {
  LoadOptions options;
  options.device = "tpu:0";
  absl::Status s = LoadPlacedModel<ToyModel>("vae", options, true, LoadToy, RebuildToy).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("vae: offload to 'tpu:0'"));
  // Without offload the load runs on the device given, and its error comes back as it is.
  options.device = "cuda";
  s = LoadPlacedModel<ToyModel>("vae", options, false, LoadToy, RebuildToy).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("toy: loads on the CPU only"));
  // Weights not on the CPU cannot be the host copy.
  WeightMap meta("meta");
  meta.Insert("w", at::empty({4, 4}, at::TensorOptions().device(at::kMeta)));
  s = ModelResidency::Create("vae", std::move(meta), c10::Device(c10::kCPU)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'w' is on meta"));
}

}  // namespace
}  // namespace dgrid
