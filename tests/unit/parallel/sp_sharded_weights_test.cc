// Sharded block weights in a denoiser group (--dit-shard-weights, issue #20 item 2) over the
// thread test seam: whole FLUX and Wan sampler runs on groups of 2 and 4 ranks (CFG, Ulysses and
// Ring layouts), each rank holding only its shard of every block, against the same layout with
// whole weights (bitwise: the arithmetic is the same) and against one rank (within 1e-5 relative,
// as the sequence-parallel tests). Also: the gathered-block window per prefetch depth, and a
// forward without the group's communicator. The prefetch schedule (a block's gather begun before
// the block ahead of it runs and joined only before its own) over a test double that defers each
// gather until it is joined.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/status.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::RelativeError;

DitShard Shard(int rank, int size, int64_t prefetch) {
  DitShard shard;
  shard.weights = true;
  shard.rank = rank;
  shard.size = size;
  shard.prefetch = prefetch;
  return shard;
}

// A copy of `plain` (sharing its weights) with its blocks sharded for `rank` of `size`.
template <typename Model>
std::unique_ptr<Model> Sharded(const Model& plain, int rank, int size, int64_t prefetch) {
  auto model = std::make_unique<Model>(plain);
  const absl::Status s = model->ShardBlocks("cpu", Shard(rank, size, prefetch));
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_NE(model->sharded(), nullptr);
  return model;
}

struct Layout {
  std::string name;
  int cfg, ring, ulysses;
  int size() const { return cfg * ring * ulysses; }
};

// Runs fn(rank, context) on every rank of a thread group of `layout`; the results by rank.
std::vector<absl::StatusOr<at::Tensor>> RunOnGroup(
    const Layout& layout,
    const std::function<absl::StatusOr<at::Tensor>(int, const SequenceParallelContext&)>& fn) {
  std::mutex mu;
  std::vector<absl::StatusOr<at::Tensor>> got(layout.size(), absl::UnknownError("not run"));
  testing::RunOnThreadGroup(layout.size(), [&](int rank, Communicator& world) {
    const auto run = [&]() -> absl::StatusOr<at::Tensor> {
      ASSIGN_OR_RETURN(ParallelLayout l,
                       ParallelLayout::Create(layout.cfg, layout.ring, layout.ulysses, rank));
      ASSIGN_OR_RETURN(std::unique_ptr<SequenceParallelGroup> group,
                       SplitSequenceParallelGroup(world, l));
      EXPECT_EQ(group->context.group, &world);
      return fn(rank, group->context);
    };
    absl::StatusOr<at::Tensor> result = run();
    std::lock_guard<std::mutex> lock(mu);
    got[rank] = std::move(result);
  });
  return got;
}

// Sharded results equal the whole-weight group's bit for bit, and one rank's within 1e-5.
void ExpectSameAsPlain(const std::vector<absl::StatusOr<at::Tensor>>& sharded,
                       const std::vector<absl::StatusOr<at::Tensor>>& plain,
                       const at::Tensor& one_rank, const std::string& name) {
  ASSERT_EQ(sharded.size(), plain.size());
  for (size_t r = 0; r < sharded.size(); ++r) {
    ASSERT_TRUE(sharded[r].ok()) << name << " rank " << r << ": " << sharded[r].status();
    ASSERT_TRUE(plain[r].ok()) << name << " rank " << r << ": " << plain[r].status();
    ASSERT_EQ(sharded[r]->sizes(), one_rank.sizes());
    EXPECT_TRUE(at::equal(*sharded[r], *plain[r])) << name << " rank " << r;
    EXPECT_LT(RelativeError(*sharded[r], one_rank), 1e-5) << name << " rank " << r;
  }
}

class FluxShardedWeightsTest : public ::testing::TestWithParam<Layout> {
 protected:
  static void SetUpTestSuite() { at::set_num_threads(1); }  // Up to 4 rank threads, 2 cores.
};

TEST_P(FluxShardedWeightsTest, SamplerMatchesWholeWeights) {
  const Layout layout = GetParam();
  // Two double blocks, so that a gather runs ahead of a block of each kind.
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel(/*double_blocks=*/2);
  ASSERT_NE(plain, nullptr);
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
  auto one_rank = RunFluxSampler(*plain, testing::TinyFluxScheduler(), request);
  ASSERT_TRUE(one_rank.ok()) << one_rank.status();
  for (int64_t prefetch : {1, 2}) {
    std::vector<std::unique_ptr<FluxTransformer2DModel>> models;
    for (int r = 0; r < layout.size(); ++r) {
      models.push_back(Sharded(*plain, r, layout.size(), prefetch));
      ASSERT_NE(models.back(), nullptr);
    }
    // Each rank really holds a part: about 1/size of the blocks' bytes, and not the same part.
    const ShardedBlocks& first = *models[0]->sharded();
    EXPECT_GE(first.kept_bytes() * layout.size(), first.unsharded_bytes());
    EXPECT_LE(static_cast<double>(first.kept_bytes() * layout.size()),
              1.05 * static_cast<double>(first.unsharded_bytes()));
    EXPECT_FALSE(at::equal(first.shards(0)[0], models[1]->sharded()->shards(0)[0]));
    const auto sharded = RunOnGroup(layout, [&](int rank, const SequenceParallelContext& sp) {
      return RunFluxSampler(*models[rank], testing::TinyFluxScheduler(), request, {}, &sp);
    });
    const auto whole = RunOnGroup(layout, [&](int, const SequenceParallelContext& sp) {
      return RunFluxSampler(*plain, testing::TinyFluxScheduler(), request, {}, &sp);
    });
    ExpectSameAsPlain(sharded, whole, *one_rank,
                      layout.name + " prefetch " + std::to_string(prefetch));
  }
}

// Groups of 2 and 4: CFG alone (each branch's arithmetic is one rank's), Ulysses, Ring, mixed.
INSTANTIATE_TEST_SUITE_P(Layouts, FluxShardedWeightsTest,
                         ::testing::Values(Layout{"CFG2", 2, 1, 1}, Layout{"U2", 1, 1, 2},
                                           Layout{"R2", 1, 2, 1}, Layout{"U4", 1, 1, 4},
                                           Layout{"CFG2U2", 2, 1, 2}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                           return info.param.name;
                         });

TEST(FluxShardedWeightsWindowTest, AtMostPrefetchPlusOneBlocksAreGatheredInOrder) {
  at::set_num_threads(1);
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel(/*double_blocks=*/2);
  ASSERT_NE(plain, nullptr);
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/false);
  for (int64_t prefetch : {1, 2}) {
    std::vector<std::unique_ptr<FluxTransformer2DModel>> models;
    std::vector<std::vector<std::vector<int64_t>>> seen(2);
    for (int r = 0; r < 2; ++r) {
      models.push_back(Sharded(*plain, r, 2, prefetch));
      models.back()->SetShardObserverForTesting(
          [&seen, r](int64_t block, const std::vector<int64_t>& gathered) {
            std::vector<int64_t> entry = {block};
            entry.insert(entry.end(), gathered.begin(), gathered.end());
            seen[r].push_back(std::move(entry));
          });
    }
    const auto got =
        RunOnGroup(Layout{"U2", 1, 1, 2}, [&](int rank, const SequenceParallelContext& sp) {
          return RunFluxSampler(*models[rank], testing::TinyFluxScheduler(), request, {}, &sp);
        });
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(got[r].ok()) << got[r].status();
      // 3 blocks per forward (2 double, 1 single), 3 steps.
      ASSERT_EQ(seen[r].size(), 9u);
      for (size_t k = 0; k < seen[r].size(); ++k) {
        const std::vector<int64_t>& e = seen[r][k];
        const int64_t block = e[0];
        EXPECT_EQ(block, static_cast<int64_t>(k % 3));
        // The gathered blocks: this one and the next ones up to the prefetch depth, no more.
        std::vector<int64_t> want;
        for (int64_t b = block; b <= std::min<int64_t>(2, block + prefetch); ++b) want.push_back(b);
        EXPECT_EQ(std::vector<int64_t>(e.begin() + 1, e.end()), want)
            << "prefetch " << prefetch << " block " << block;
      }
    }
  }
}

TEST(FluxShardedWeightsWindowTest, ForwardWithoutTheGroupIsInvalidArgument) {
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel();
  ASSERT_NE(plain, nullptr);
  std::unique_ptr<FluxTransformer2DModel> model = Sharded(*plain, 0, 2, 1);
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/false);
  const absl::Status alone = RunFluxSampler(*model, testing::TinyFluxScheduler(), request).status();
  EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument) << alone;
  EXPECT_NE(alone.message().find("--dit-shard-weights"), absl::string_view::npos) << alone;
  // A communicator over another group size is refused the same way.
  std::vector<std::unique_ptr<Communicator>> comms = testing::CreateThreadCommunicators(4);
  auto layout = ParallelLayout::Create(1, 1, 1, 0);
  ASSERT_TRUE(layout.ok());
  SequenceParallelContext wrong(*layout);
  wrong.group = comms[0].get();
  const absl::Status mismatched =
      RunFluxSampler(*model, testing::TinyFluxScheduler(), request, {}, &wrong).status();
  EXPECT_EQ(mismatched.code(), absl::StatusCode::kInvalidArgument) << mismatched;
  EXPECT_NE(mismatched.message().find("rank 0 of 4"), absl::string_view::npos) << mismatched;
}

TEST(FluxShardedWeightsWindowTest, MissingPeerIsDeadlineExceededNotInternal) {
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel();
  ASSERT_NE(plain, nullptr);
  std::unique_ptr<FluxTransformer2DModel> model = Sharded(*plain, 0, 2, 1);
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/false);
  absl::Status rank0 = absl::UnknownError("not run");
  testing::RunOnThreadGroup(
      2,
      [&](int rank, Communicator& world) {
        // CFG 2 without true CFG: no collective but the weights' gathers in the forward.
        auto layout = ParallelLayout::Create(2, 1, 1, rank);
        auto group = SplitSequenceParallelGroup(world, *layout);
        if (!group.ok() || rank != 0) return;  // Rank 1 "dies" after the split.
        rank0 =
            RunFluxSampler(*model, testing::TinyFluxScheduler(), request, {}, &(*group)->context)
                .status();
      },
      absl::Milliseconds(300));
  EXPECT_EQ(rank0.code(), absl::StatusCode::kDeadlineExceeded) << rank0;
}

// TEST DOUBLE: a rank's communicator (the thread seam) whose AllGatherStart is deferred until
// joined, as NCCL's writes land only by the join: a block read before its gather is joined reads
// garbage (at::empty) and breaks the bitwise comparison. It records, in the rank's log, each gather
// begun (by the block whose shard it sends) and each join (the gathers it completes, oldest first),
// and counts gathers whose output buffer nobody but the double held when joined (freed before the
// join). Everything else goes to the wrapped communicator.
class DeferredGatherRecorder final : public testing::ForwardingCommunicator {
 public:
  struct Entry {
    enum Kind { kStart, kJoin, kRun } kind;
    int64_t block;  // kStart, kRun: the block; kJoin: the gathers joined so far, in total.
  };

  DeferredGatherRecorder(Communicator& inner, const ShardedBlocks& sharded, std::vector<Entry>& log)
      : ForwardingCommunicator(inner), log_(log) {
    for (int64_t b = 0; b < sharded.num_blocks(); ++b) {
      for (const at::Tensor& shard : sharded.shards(b)) block_of_[shard.data_ptr()] = b;
    }
  }

  int freed_before_join() const { return freed_before_join_; }

  absl::Status AllGatherStart(const at::Tensor& in, at::Tensor& out) override {
    auto it = block_of_.find(in.data_ptr());
    log_.push_back({Entry::kStart, it == block_of_.end() ? -1 : it->second});
    queued_.push_back({in, out});
    return absl::OkStatus();
  }
  absl::Status JoinPending() override { return JoinPendingExceptNewest(0); }
  absl::Status JoinPendingExceptNewest(int newest) override {
    while (static_cast<int>(queued_.size()) > std::max(newest, 0)) {
      auto [in, out] = std::move(queued_.front());
      queued_.pop_front();
      // Only the double holds the buffer and its memory: the pass let go of it before the join.
      if (out.use_count() == 1 && out.storage().use_count() == 1) ++freed_before_join_;
      RETURN_IF_ERROR(inner_.AllGather(in, out));
      ++joined_;
    }
    log_.push_back({Entry::kJoin, joined_});
    return absl::OkStatus();
  }

 private:
  std::vector<Entry>& log_;
  std::map<const void*, int64_t> block_of_;
  std::deque<std::pair<at::Tensor, at::Tensor>> queued_;
  int64_t joined_ = 0;
  int freed_before_join_ = 0;
};

// Checks one rank's log of forwards over `blocks` blocks at `prefetch`: when block i runs, its
// gathers were all begun and joined, and those of blocks i + 1 .. i + prefetch were begun and are
// still in flight (the overlap), and nothing further was begun.
void ExpectPrefetchSchedule(const std::vector<DeferredGatherRecorder::Entry>& log, int64_t blocks,
                            int64_t prefetch, const std::string& name) {
  using Entry = DeferredGatherRecorder::Entry;
  std::vector<int64_t> block_of_gather;  // By the order begun.
  int64_t joined = 0;
  int64_t runs = 0;
  for (size_t k = 0; k < log.size(); ++k) {
    const Entry& e = log[k];
    if (e.kind == Entry::kStart) {
      ASSERT_GE(e.block, 0) << name << ": a gather of no block's shard";
      block_of_gather.push_back(e.block);
      continue;
    }
    if (e.kind == Entry::kJoin) {
      joined = e.block;
      continue;
    }
    ++runs;
    const int64_t i = e.block;
    // This forward's gathers: from the last begin of block 0 at or before this run.
    size_t first = 0;
    for (size_t g = 0; g < block_of_gather.size(); ++g) {
      if (block_of_gather[g] == 0) first = g;
    }
    std::map<int64_t, int> begun, done;
    for (size_t g = first; g < block_of_gather.size(); ++g) {
      ++begun[block_of_gather[g]];
      if (static_cast<int64_t>(g) < joined) ++done[block_of_gather[g]];
    }
    EXPECT_GT(begun[i], 0) << name << " block " << i;
    EXPECT_EQ(done[i], begun[i]) << name << ": block " << i << " runs before its gather is joined";
    for (int64_t j = i + 1; j < blocks; ++j) {
      if (j <= i + prefetch) {
        EXPECT_GT(begun[j], 0) << name << ": block " << j << " not begun when block " << i
                               << " runs";
        EXPECT_EQ(done[j], 0) << name << ": block " << j << " joined before block " << i
                              << " runs (no overlap)";
      } else {
        EXPECT_EQ(begun[j], 0) << name << ": block " << j << " begun beyond the prefetch";
      }
    }
  }
  EXPECT_GT(runs, 0) << name;
}

TEST(FluxShardedWeightsWindowTest, NextGathersRunAlongsideTheBlockAndAreJoinedBeforeTheirOwn) {
  at::set_num_threads(1);
  // Three double blocks and one single: a prefetch of 2 has a block in flight behind another.
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel(/*double_blocks=*/3);
  ASSERT_NE(plain, nullptr);
  const int64_t blocks = 4;
  const FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
  const Layout layout{"U2", 1, 1, 2};
  const auto whole = RunOnGroup(layout, [&](int, const SequenceParallelContext& sp) {
    return RunFluxSampler(*plain, testing::TinyFluxScheduler(), request, {}, &sp);
  });
  for (int64_t prefetch : {1, 2}) {
    const std::string name = "prefetch " + std::to_string(prefetch);
    std::vector<std::unique_ptr<FluxTransformer2DModel>> models;
    std::vector<std::vector<DeferredGatherRecorder::Entry>> logs(2);
    std::vector<int> freed_before_join(2, -1);
    for (int r = 0; r < 2; ++r) {
      models.push_back(Sharded(*plain, r, 2, prefetch));
      ASSERT_EQ(models.back()->sharded()->num_blocks(), blocks);
      models.back()->SetShardObserverForTesting(
          [&logs, r](int64_t block, const std::vector<int64_t>&) {
            logs[r].push_back({DeferredGatherRecorder::Entry::kRun, block});
          });
    }
    std::mutex mu;
    std::vector<absl::StatusOr<at::Tensor>> got(2, absl::UnknownError("not run"));
    testing::RunOnThreadGroup(2, [&](int rank, Communicator& world) {
      DeferredGatherRecorder recorder(world, *models[rank]->sharded(), logs[rank]);
      const auto run = [&]() -> absl::StatusOr<at::Tensor> {
        ASSIGN_OR_RETURN(ParallelLayout l, ParallelLayout::Create(1, 1, 2, rank));
        ASSIGN_OR_RETURN(std::unique_ptr<SequenceParallelGroup> group,
                         SplitSequenceParallelGroup(recorder, l));
        return RunFluxSampler(*models[rank], testing::TinyFluxScheduler(), request, {},
                              &group->context);
      };
      absl::StatusOr<at::Tensor> result = run();
      std::lock_guard<std::mutex> lock(mu);
      got[rank] = std::move(result);
      freed_before_join[rank] = recorder.freed_before_join();
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(got[r].ok()) << name << " rank " << r << ": " << got[r].status();
      ASSERT_TRUE(whole[r].ok()) << whole[r].status();
      // Every block read only after its deferred gather landed: the whole-weight result, bitwise.
      EXPECT_TRUE(at::equal(*got[r], *whole[r])) << name << " rank " << r;
      EXPECT_EQ(freed_before_join[r], 0) << name << " rank " << r;
      // 3 steps of true CFG on one rank: 6 forwards of 4 blocks.
      int64_t runs = 0;
      for (const auto& e : logs[r]) runs += e.kind == DeferredGatherRecorder::Entry::kRun;
      EXPECT_EQ(runs, 6 * blocks) << name << " rank " << r;
      ExpectPrefetchSchedule(logs[r], blocks, prefetch, name + " rank " + std::to_string(r));
    }
  }
}

struct WanCase {
  std::string name;
  testing::TinyWanVariant variant;
  Layout layout;
};

class WanShardedWeightsTest : public ::testing::TestWithParam<WanCase> {
 protected:
  static void SetUpTestSuite() { at::set_num_threads(1); }
};

TEST_P(WanShardedWeightsTest, SamplerMatchesWholeWeights) {
  const WanCase c = GetParam();
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(c.variant);
  ASSERT_NE(p.transformer, nullptr);
  const WanSamplerRequest request = testing::TinyWanRequest(c.variant, 9, 48, 80, /*cfg=*/true);
  auto one_rank =
      RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, request);
  ASSERT_TRUE(one_rank.ok()) << one_rank.status();
  const int size = c.layout.size();
  std::vector<std::unique_ptr<WanTransformer3DModel>> models, models_2;
  for (int r = 0; r < size; ++r) {
    models.push_back(Sharded(*p.transformer, r, size, 1));
    if (p.transformer_2 != nullptr) models_2.push_back(Sharded(*p.transformer_2, r, size, 1));
  }
  // The model computes in its blocks' dtype, which sharding keeps.
  EXPECT_EQ(models[0]->options().dtype(), p.transformer->options().dtype());
  const auto sharded = RunOnGroup(c.layout, [&](int rank, const SequenceParallelContext& sp) {
    return RunWanSampler(*models[rank], models_2.empty() ? nullptr : models_2[rank].get(),
                         p.pipeline, p.scheduler, request, {}, &sp);
  });
  const auto whole = RunOnGroup(c.layout, [&](int, const SequenceParallelContext& sp) {
    return RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, request,
                         {}, &sp);
  });
  ExpectSameAsPlain(sharded, whole, *one_rank, c.name);
}

// Wan2.1 T2V on groups of 2 (CFG, Ulysses) and 4 (CFG x Ulysses); Wan2.2 A14B (two experts, each
// sharded) on CFG x Ring.
INSTANTIATE_TEST_SUITE_P(
    Layouts, WanShardedWeightsTest,
    ::testing::Values(WanCase{"T2V_CFG2", testing::TinyWanVariant::kT2V, {"CFG2", 2, 1, 1}},
                      WanCase{"T2V_U2", testing::TinyWanVariant::kT2V, {"U2", 1, 1, 2}},
                      WanCase{"T2V_CFG2U2", testing::TinyWanVariant::kT2V, {"CFG2U2", 2, 1, 2}},
                      WanCase{"A14B_CFG2R2", testing::TinyWanVariant::kA14B, {"CFG2R2", 2, 2, 1}}),
    [](const ::testing::TestParamInfo<WanCase>& info) { return info.param.name; });

}  // namespace
}  // namespace dgrid
