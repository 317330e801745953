// GraphCache (kernels/cuda_graph.h): eager on the CPU; on a GPU, warm-up, capture and replay give
// the eager results bit for bit with new input values, a capture that fails falls back to eager,
// and the number of captured keys is bounded. (The FLUX transformer's forward with CUDA graphs:
// flux_fused_model_test.cc.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda_graph.h"

namespace dgrid {
namespace {

// A few launches of different kinds: a GEMM, elementwise work and a reduction.
absl::StatusOr<at::Tensor> SmallWork(const std::vector<at::Tensor>& in) {
  const at::Tensor h = at::gelu(at::matmul(in[0], in[1]) + in[2], "tanh");
  return h * at::softmax(h, -1) + h.mean(-1, /*keepdim=*/true);
}

TEST(GraphCache, RunsEagerlyOnTheCpu) {
  GraphCache cache(4);
  for (int i = 0; i < 3; ++i) {
    const std::vector<at::Tensor> in = {at::randn({8, 16}), at::randn({16, 4}), at::randn({4})};
    auto out = cache.Run(GraphCache::KeyOf("small", in), in, SmallWork);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(at::equal(*out, *SmallWork(in)));
  }
  const GraphCache::Stats s = cache.stats();
  EXPECT_EQ(s.eager, 3);
  EXPECT_EQ(s.captures, 0);
  EXPECT_EQ(s.replays, 0);
}

TEST(GraphCache, KeysNameShapesDtypesAndUndefinedInputs) {
  const at::Tensor a = at::zeros({2, 3});
  EXPECT_EQ(GraphCache::KeyOf("k", {a, at::Tensor()}), GraphCache::KeyOf("k", {a * 2, {}}));
  EXPECT_NE(GraphCache::KeyOf("k", {a}), GraphCache::KeyOf("k", {at::zeros({3, 2})}));
  EXPECT_NE(GraphCache::KeyOf("k", {a}), GraphCache::KeyOf("k", {a.to(at::kDouble)}));
  EXPECT_NE(GraphCache::KeyOf("k", {a}), GraphCache::KeyOf("j", {a}));
  EXPECT_NE(GraphCache::KeyOf("k", {a, a}), GraphCache::KeyOf("k", {a, at::Tensor()}));
}

bool HaveGraphs() { return GraphCache::Built() && at::hasCUDA(); }

TEST(GraphCache, ReplaysGiveTheEagerResultsWithNewValues) {
  if (!HaveGraphs()) GTEST_SKIP() << "no CUDA build or no GPU";
  const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(at::kBFloat16);
  GraphCache cache(4);
  for (int i = 0; i < 6; ++i) {
    const std::vector<at::Tensor> in = {at::randn({64, 128}, o), at::randn({128, 96}, o),
                                        at::randn({96}, o)};
    auto out = cache.Run(GraphCache::KeyOf("small", in), in, SmallWork);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(at::equal(*out, *SmallWork(in))) << "call " << i;
  }
  const GraphCache::Stats s = cache.stats();
  EXPECT_EQ(s.eager, 1);     // the warm-up
  EXPECT_EQ(s.captures, 1);  // the second call
  EXPECT_EQ(s.replays, 5);   // the capture's own replay and four more
  EXPECT_EQ(s.failures, 0);
}

TEST(GraphCache, AFailedCaptureRunsEagerlyFromThenOn) {
  if (!HaveGraphs()) GTEST_SKIP() << "no CUDA build or no GPU";
  std::vector<std::string> logged;
  GraphCache cache(4, [&](const std::string& why) { logged.push_back(why); });
  // Reading a value on the host ends a capture.
  const GraphCache::Fn reads_host =
      [](const std::vector<at::Tensor>& in) -> absl::StatusOr<at::Tensor> {
    return in[0] * in[0].sum().item<float>();
  };
  for (int i = 0; i < 4; ++i) {
    const std::vector<at::Tensor> in = {at::randn({32}, at::kCUDA)};
    auto out = cache.Run(GraphCache::KeyOf("host read", in), in, reads_host);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(at::equal(*out, *reads_host(in))) << "call " << i;
  }
  const GraphCache::Stats s = cache.stats();
  EXPECT_EQ(s.failures, 1);
  EXPECT_EQ(s.captures, 0);
  EXPECT_EQ(s.eager, 4);
  ASSERT_EQ(logged.size(), 1u);
  // The device is still usable, and another key still captures.
  const std::vector<at::Tensor> in = {at::randn({8, 8}, at::kCUDA), at::randn({8, 8}, at::kCUDA),
                                      at::randn({8}, at::kCUDA)};
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(cache.Run("small", in, SmallWork).ok());
  EXPECT_EQ(cache.stats().captures, 1);
}

TEST(GraphCache, CapturesAtMostMaxGraphsKeys) {
  if (!HaveGraphs()) GTEST_SKIP() << "no CUDA build or no GPU";
  GraphCache cache(2);
  for (int64_t rows : {4, 8, 16}) {
    const std::vector<at::Tensor> in = {at::randn({rows, 8}, at::kCUDA),
                                        at::randn({8, 8}, at::kCUDA), at::randn({8}, at::kCUDA)};
    for (int i = 0; i < 3; ++i) {
      auto out = cache.Run(GraphCache::KeyOf("small", in), in, SmallWork);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_TRUE(at::equal(*out, *SmallWork(in)));
    }
  }
  const GraphCache::Stats s = cache.stats();
  EXPECT_EQ(s.captures, 2);
  EXPECT_EQ(s.replays, 4);
  EXPECT_EQ(s.eager, 2 + 3);  // two warm-ups, then the third key every time
}

}  // namespace
}  // namespace dgrid
