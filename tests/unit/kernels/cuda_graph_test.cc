// GraphCache (kernels/cuda_graph.h): eager on the CPU; on a GPU, warm-up, capture and replay give
// the eager results bit for bit with new input values, a capture that fails falls back to eager,
// and the number of captured keys is bounded. And the FLUX transformer's forward with CUDA graphs
// against the same model without them.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/weight_map.h"
#include "kernels/cuda_graph.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"

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

FluxTransformerConfig TinyFlux() {
  FluxTransformerConfig c;
  c.num_layers = 2;
  c.num_single_layers = 2;
  c.attention_head_dim = 16;
  c.num_attention_heads = 4;
  c.in_channels = c.out_channels = 16;
  c.joint_attention_dim = 32;
  c.pooled_projection_dim = 24;
  c.guidance_embeds = true;
  c.axes_dims_rope = {4, 6, 6};
  return c;
}

TEST(GraphCache, FluxForwardWithGraphsEqualsWithout) {
  if (!HaveGraphs()) GTEST_SKIP() << "no CUDA build or no GPU";
  const FluxTransformerConfig c = TinyFlux();
  const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(at::kBFloat16);
  at::manual_seed(3);
  WeightMap weights;
  for (const FluxParameter& p : FluxParameters(c)) {
    weights.Insert(p.name,
                   at::randn(p.shape, o) * 0.1 + (p.kind == FluxParameter::kNormScale ? 1.0 : 0.0));
  }
  auto model = FluxTransformer2DModel::FromWeights(c, weights);
  ASSERT_TRUE(model.ok()) << model.status();
  FluxTransformer2DModel graphed = *model;  // shares the weights
  graphed.EnableCudaGraphs(2);
  ASSERT_NE(graphed.cuda_graphs(), nullptr);
  ASSERT_EQ(model->cuda_graphs(), nullptr);

  const int64_t n = 70, s = 9;
  const at::Tensor rows = at::arange(n, o.dtype(at::kLong));
  const at::Tensor img_ids =
      at::stack({at::zeros_like(rows), at::floor_divide(rows, 10), rows % 10}, 1);
  auto rope = model->ComputeRope(at::zeros({s, 3}, o.dtype(at::kLong)), img_ids);
  ASSERT_TRUE(rope.ok()) << rope.status();
  for (int step = 0; step < 5; ++step) {
    FluxTransformerInputs in;
    in.hidden_states = at::randn({1, n, 16}, o);
    in.encoder_hidden_states = at::randn({1, s, 32}, o);
    in.pooled_projections = at::randn({1, 24}, o);
    in.timestep = at::full({1}, 1.0 - 0.2 * step, o);
    in.guidance = at::full({1}, 3.5, o.dtype(at::kFloat));
    in.img_ids = img_ids;
    in.rope = &*rope;
    auto eager = model->Forward(in);
    auto replayed = graphed.Forward(in);
    ASSERT_TRUE(eager.ok()) << eager.status();
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    EXPECT_TRUE(at::equal(*eager, *replayed)) << "step " << step;
  }
  const GraphCache::Stats st = graphed.cuda_graphs()->stats();
  EXPECT_EQ(st.failures, 0);
  EXPECT_EQ(st.captures, 1);
  EXPECT_EQ(st.replays, 4);
}

}  // namespace
}  // namespace dgrid
