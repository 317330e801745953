// Ulysses' exchanges pipelined by head chunks (SequenceParallelContext::ulysses_chunks) against the
// unchunked exchange, over the thread test seam with the asynchronous contract of
// AllToAllManyStart / JoinPending enforced (DeferredStarts below): the attention alone on
// FLUX-like (text + image) and Wan-like (video only) sequences, whole FLUX sampler runs and Wan
// forwards, under U2, U4 and U2R2 (USP), with 8 heads so that U4 has two heads per rank to chunk.
// On CPU the chunked results equal the unchunked ones bitwise (at::equal) without ring, within
// 1e-5 relative under USP; all are within 1e-5 of one rank.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/sequence_attention.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/sampler.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::RelativeError;

// Wraps a communicator; AllToAllManyStart only records the exchange and fills its outputs with
// NaN, and the recorded exchanges run, in call order, at the next JoinPending: the latest moment
// an asynchronous backend may finish them. A caller that reads an output or rewrites an input
// before the join gets wrong values.
class DeferredStarts final : public testing::ForwardingCommunicator {
 public:
  explicit DeferredStarts(Communicator& inner) : ForwardingCommunicator(inner) {}

  absl::Status AllToAllManyStart(const std::vector<at::Tensor>& ins,
                                 std::vector<at::Tensor>& outs) override {
    for (at::Tensor& out : outs) out.fill_(std::numeric_limits<float>::quiet_NaN());
    pending_.emplace_back(ins, outs);  // The outputs share the caller's storage.
    ++starts_;
    return absl::OkStatus();
  }
  absl::Status JoinPending() override {
    for (auto& [ins, outs] : pending_) {
      if (absl::Status s = inner_.AllToAllMany(ins, outs); !s.ok()) return s;
    }
    pending_.clear();
    return inner_.JoinPending();
  }

  // Whether every started exchange was joined.
  bool idle() const { return pending_.empty(); }
  int64_t starts() const { return starts_; }

 private:
  std::vector<std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>> pending_;
  int64_t starts_ = 0;
};

// Results by rank of fn on a ring x ulysses thread group whose Ulysses communicator is wrapped in
// DeferredStarts, with `chunks` head chunks; and the exchanges each rank started on it.
struct GroupRun {
  std::vector<absl::StatusOr<at::Tensor>> results;
  std::vector<int64_t> starts;
};

GroupRun RunOnGroup(
    int ring, int ulysses, int chunks,
    const std::function<absl::StatusOr<at::Tensor>(const SequenceParallelContext&)>& fn) {
  const int size = ring * ulysses;
  GroupRun run;
  run.results.assign(size, absl::UnknownError("not run"));
  run.starts.assign(size, 0);
  std::mutex mu;
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& world) {
    absl::StatusOr<at::Tensor> result = absl::UnknownError("not run");
    int64_t starts = 0;
    auto layout = ParallelLayout::Create(/*cfg=*/1, ring, ulysses, rank);
    if (!layout.ok()) {
      result = layout.status();
    } else if (auto group = SplitSequenceParallelGroup(world, *layout); !group.ok()) {
      result = group.status();
    } else {
      DeferredStarts deferred(*(*group)->ulysses);
      SequenceParallelContext context = (*group)->context;
      context.ulysses = &deferred;
      context.ulysses_chunks = chunks;
      result = fn(context);
      EXPECT_TRUE(deferred.idle()) << "rank " << rank << ": an exchange was never joined";
      starts = deferred.starts();
    }
    std::lock_guard<std::mutex> lock(mu);
    run.results[rank] = std::move(result);
    run.starts[rank] = starts;
  });
  return run;
}

// `chunked` started `chunks` times the unchunked run's exchanges, is within 1e-5 of `want`, and
// equals `unchunked` on every rank: bitwise without ring; within 1e-5 under USP, whose CPU path
// attends with float32 matmuls batched over the chunk's heads (the GEMM's blocking, hence its
// rounding, depends on the batch).
void ExpectChunkedEqualsUnchunked(const GroupRun& chunked, const GroupRun& unchunked,
                                  const at::Tensor& want, int ring, int chunks,
                                  const std::string& name) {
  ASSERT_EQ(chunked.results.size(), unchunked.results.size());
  for (size_t r = 0; r < chunked.results.size(); ++r) {
    ASSERT_TRUE(unchunked.results[r].ok())
        << name << " rank " << r << ": " << unchunked.results[r].status();
    ASSERT_TRUE(chunked.results[r].ok())
        << name << " rank " << r << ": " << chunked.results[r].status();
    const at::Tensor& got = *chunked.results[r];
    if (ring == 1) {
      EXPECT_TRUE(at::equal(got, *unchunked.results[r])) << name << " rank " << r;
    } else {
      const double error = RelativeError(got, *unchunked.results[r]);
      EXPECT_LT(error, 1e-5) << name << " rank " << r;
      if (r == 0) std::printf("%s: chunked against unchunked %.3g\n", name.c_str(), error);
    }
    EXPECT_LT(RelativeError(got, want), 1e-5) << name << " rank " << r;
    EXPECT_GT(unchunked.starts[r], 0) << name << " rank " << r;
    EXPECT_EQ(chunked.starts[r], chunks * unchunked.starts[r]) << name << " rank " << r;
  }
}

struct AttentionCase {
  std::string name;
  int ring, ulysses, chunks;
  int64_t text, image;  // FLUX: text and image; Wan's self-attention: no text.
};

class UlyssesChunksAttentionTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(UlyssesChunksAttentionTest, EqualsUnchunked) {
  at::set_num_threads(1);  // up to 4 rank threads on a 2-core CI machine
  const AttentionCase c = GetParam();
  constexpr int64_t kBatch = 2, kHeads = 8, kDim = 8;
  at::manual_seed(4);
  const int64_t length = c.text + c.image;
  const at::Tensor q = at::randn({kBatch, length, kHeads, kDim});
  const at::Tensor k = at::randn({kBatch, length, kHeads, kDim});
  const at::Tensor v = at::randn({kBatch, length, kHeads, kDim});
  const at::Tensor want =
      at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
          .transpose(1, 2)
          .flatten(2, 3);
  const auto attend = [&](const SequenceParallelContext& context) -> absl::StatusOr<at::Tensor> {
    const flux::SequenceParallelAttention attention(context, c.text, c.image);
    const auto local = [&](const at::Tensor& x) {
      return at::cat({attention.ShardText(x.narrow(1, 0, c.text)),
                      attention.ShardImage(x.narrow(1, c.text, c.image))},
                     1);
    };
    try {
      const at::Tensor out = attention.Attend(local(q), local(k), local(v));
      const int64_t st = attention.local_text_length();
      return at::cat({attention.GatherText(out.narrow(1, 0, st)),
                      attention.GatherImage(out.narrow(1, st, out.size(1) - st))},
                     1);
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
  };
  const GroupRun unchunked = RunOnGroup(c.ring, c.ulysses, 1, attend);
  const GroupRun chunked = RunOnGroup(c.ring, c.ulysses, c.chunks, attend);
  ExpectChunkedEqualsUnchunked(chunked, unchunked, want, c.ring, c.chunks, c.name);
  // One Attend: q/k/v in one exchange, the output in another.
  for (int64_t starts : unchunked.starts) EXPECT_EQ(starts, 2) << c.name;
}

// FLUX: 3 text + 13 image tokens; Wan: 45 video tokens (both padded for every degree).
INSTANTIATE_TEST_SUITE_P(Layouts, UlyssesChunksAttentionTest,
                         ::testing::Values(AttentionCase{"flux_U2_G2", 1, 2, 2, 3, 13},
                                           AttentionCase{"flux_U2_G4", 1, 2, 4, 3, 13},
                                           AttentionCase{"flux_U4_G2", 1, 4, 2, 3, 13},
                                           AttentionCase{"flux_U2R2_G2", 2, 2, 2, 3, 13},
                                           AttentionCase{"flux_U2R2_G4", 2, 2, 4, 3, 13},
                                           AttentionCase{"wan_U2_G2", 1, 2, 2, 0, 45},
                                           AttentionCase{"wan_U2_G4", 1, 2, 4, 0, 45},
                                           AttentionCase{"wan_U4_G2", 1, 4, 2, 0, 45},
                                           AttentionCase{"wan_U2R2_G2", 2, 2, 2, 0, 45}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return info.param.name;
                         });

// ulysses_chunks 0: DGRID_ULYSSES_CHUNKS, else 2 chunks without ring and with an even number of
// heads per rank, else 1.
TEST(UlyssesChunksTest, AutomaticChunks) {
  if (std::getenv("DGRID_ULYSSES_CHUNKS") != nullptr) {
    GTEST_SKIP() << "DGRID_ULYSSES_CHUNKS is set";
  }
  at::set_num_threads(1);
  struct Case {
    int ring, ulysses;
    int64_t heads;
    int64_t starts;  // 2 per chunk
  };
  for (const Case& c : {Case{1, 2, 8, 4}, Case{1, 2, 6, 2}, Case{2, 2, 8, 2}, Case{1, 4, 8, 4}}) {
    at::manual_seed(6);
    const at::Tensor q = at::randn({1, 16, c.heads, 8});
    const GroupRun run =
        RunOnGroup(c.ring, c.ulysses, 0, [&](const SequenceParallelContext& context) {
          const flux::SequenceParallelAttention attention(context, 0, 16);
          const at::Tensor local = attention.ShardImage(q);
          return attention.Attend(local, local, local);
        });
    for (size_t r = 0; r < run.results.size(); ++r) {
      ASSERT_TRUE(run.results[r].ok()) << run.results[r].status();
      EXPECT_EQ(run.starts[r], c.starts)
          << "ring " << c.ring << " ulysses " << c.ulysses << " heads " << c.heads;
    }
  }
}

TEST(UlyssesChunksTest, ValidateRejectsChunksThatDoNotDivideTheLocalHeads) {
  auto layout = ParallelLayout::Create(1, 1, 2, 0);
  ASSERT_TRUE(layout.ok());
  std::vector<std::unique_ptr<Communicator>> comms = testing::CreateThreadCommunicators(2);
  SequenceParallelContext context(*layout);
  context.ulysses = comms[0].get();
  for (const int chunks : {0, 1, 2, 4}) {
    context.ulysses_chunks = chunks;
    EXPECT_TRUE(context.Validate(8).ok()) << chunks;
  }
  for (const int chunks : {-1, 3, 8}) {
    context.ulysses_chunks = chunks;
    EXPECT_EQ(context.Validate(8).code(), absl::StatusCode::kInvalidArgument) << chunks;
  }
}

struct ModelCase {
  std::string name;
  int ring, ulysses, chunks;
};

const ModelCase kModelCases[] = {
    {"U2_G2", 1, 2, 2}, {"U2_G4", 1, 2, 4}, {"U4_G2", 1, 4, 2}, {"U2R2_G2", 2, 2, 2}};

std::string ModelCaseName(const ::testing::TestParamInfo<ModelCase>& info) {
  return info.param.name;
}

// The tiny FLUX model with 8 heads of 8: RunFluxSampler (3 steps, true CFG, 15 image tokens).
class UlyssesChunksFluxTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(1);
    model_ = testing::TinyFluxModel(/*double_blocks=*/1, /*heads=*/8).release();
  }
  static void TearDownTestSuite() { delete model_; }
  static FluxTransformer2DModel* model_;
};
FluxTransformer2DModel* UlyssesChunksFluxTest::model_ = nullptr;

TEST_P(UlyssesChunksFluxTest, SamplerEqualsUnchunked) {
  ASSERT_NE(model_, nullptr);
  const ModelCase c = GetParam();
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
  const FlowMatchEulerSchedulerConfig scheduler = testing::TinyFluxScheduler();
  auto want = RunFluxSampler(*model_, scheduler, request);
  ASSERT_TRUE(want.ok()) << want.status();
  const auto run = [&](const SequenceParallelContext& context) {
    return RunFluxSampler(*model_, scheduler, request, {}, &context);
  };
  ExpectChunkedEqualsUnchunked(RunOnGroup(c.ring, c.ulysses, c.chunks, run),
                               RunOnGroup(c.ring, c.ulysses, 1, run), *want, c.ring, c.chunks,
                               "flux " + c.name);
}

INSTANTIATE_TEST_SUITE_P(Layouts, UlyssesChunksFluxTest, ::testing::ValuesIn(kModelCases),
                         ModelCaseName);

// The tiny Wan model with 8 heads of 6 (the weights do not depend on the head count): Forward on
// 3 x 6 x 10 latents, 45 tokens.
TEST(UlyssesChunksWanTest, ForwardEqualsUnchunked) {
  at::set_num_threads(1);
  WanTransformerConfig config = testing::TinyWanConfig();
  config.num_attention_heads = 8;
  config.attention_head_dim = 6;
  WeightMap weights = testing::TinyWanWeights(3);
  auto model = WanTransformer3DModel::FromWeights(config, weights);
  ASSERT_TRUE(model.ok()) << model.status();
  at::manual_seed(5);
  WanTransformerInputs in;
  in.hidden_states = at::randn({1, 4, 3, 6, 10});
  in.encoder_hidden_states = at::randn({1, 7, 24});
  in.timestep = at::full({1}, 700, at::kLong);
  auto want = model->Forward(in);
  ASSERT_TRUE(want.ok()) << want.status();
  const auto run = [&](const SequenceParallelContext& context) {
    return model->Forward(in, &context);
  };
  for (const ModelCase& c : kModelCases) {
    ExpectChunkedEqualsUnchunked(RunOnGroup(c.ring, c.ulysses, c.chunks, run),
                                 RunOnGroup(c.ring, c.ulysses, 1, run), *want, c.ring, c.chunks,
                                 "wan " + c.name);
  }
}

}  // namespace
}  // namespace dgrid
