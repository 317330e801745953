// Sharded DiT weights (--dit-shard-weights, issue #20 item 2) without a group: the flags and their
// errors (common/dit_shard_flags.h), ShardedBlocks' packing round trip (padding, mixed dtypes,
// views of one storage, alignment) and shards, and the refusals (a group of one, layerwise offload,
// FP8, a second call, another family). The group runs are in tests/unit/parallel
// (sp_sharded_weights_test.cc over threads, sp_gloo_test.py --shard over Gloo processes).
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/safetensors.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/sharded_blocks.h"
#include "services/denoiser/models/wan_transformer.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

bool Mentions(const absl::Status& s, const std::string& text) {
  return s.message().find(text) != absl::string_view::npos;
}

TEST(DitShardFlagsTest, ParsesAndPassesOn) {
  absl::StatusOr<DitShard> off = ParseDitShard("false", "1", DitOffload());
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->weights);
  EXPECT_TRUE(DitShardArgs(*off).empty());
  EXPECT_TRUE(CheckDitShardGroup(*off, 1).ok());  // Off: a process alone is fine.

  absl::StatusOr<DitShard> on = ParseDitShard("true", " 3 ", DitOffload());
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->weights);
  EXPECT_EQ(on->prefetch, 3);
  EXPECT_EQ(DitShardArgs(*on),
            (std::vector<std::string>{"--dit-shard-weights=true", "--dit-shard-prefetch", "3"}));
  EXPECT_TRUE(CheckDitShardGroup(*on, 2).ok());

  // Through Config, as dgrid-denoiser and `dgrid up` read them: a bare boolean flag.
  Config config(DitShardSettings("test"));
  const char* argv[] = {"test", "--dit-shard-weights", "--dit-shard-prefetch", "2"};
  ASSERT_TRUE(config.ParseArgs(4, argv).ok());
  absl::StatusOr<DitShard> read = ReadDitShardFlags(config, DitOffload());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->weights);
  EXPECT_EQ(read->prefetch, 2);
}

TEST(DitShardFlagsTest, BadValuesNameTheFlag) {
  for (const char* bad : {"0", "-1", "x", "1.5", ""}) {
    const absl::Status s = ParseDitShard("true", bad, DitOffload()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message().rfind("--dit-shard-prefetch: ", 0), 0u) << bad << ": " << s;
  }
  const absl::Status weights = ParseDitShard("maybe", "1", DitOffload()).status();
  EXPECT_EQ(weights.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(weights.message().rfind("--dit-shard-weights: ", 0), 0u) << weights;

  // With layerwise offload: refused, naming both.
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok());
  const absl::Status both = ParseDitShard("true", "1", *offload).status();
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(both.message().rfind("--dit-shard-weights: ", 0), 0u) << both;
  EXPECT_TRUE(Mentions(both, "--dit-offload layerwise")) << both;
  EXPECT_TRUE(ParseDitShard("false", "1", *offload).ok());  // Offload alone is fine.

  // In a group of one.
  absl::StatusOr<DitShard> on = ParseDitShard("true", "1", DitOffload());
  ASSERT_TRUE(on.ok());
  const absl::Status alone = CheckDitShardGroup(*on, 1);
  EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(alone.message().rfind("--dit-shard-weights: ", 0), 0u) << alone;
}

// A block's worth of tensors: float32 and bfloat16 (two buffers), two views of one storage (as
// fused and split projections can be), a transposed view, an empty tensor and an undefined one.
std::vector<at::Tensor> MixedBlock() {
  at::manual_seed(3);
  const at::Tensor qkv = at::randn({3 * 5, 7});
  return {
      qkv.narrow(0, 0, 5),                  // Views of one storage...
      qkv.narrow(0, 10, 5),                 // ...with a gap between them.
      at::randn({11}).to(at::kBFloat16),    // Another dtype.
      at::randn({4, 6}).t(),                // Non-contiguous.
      at::Tensor(),                         // Undefined.
      at::randn({3}),                       // Odd length (padding).
      at::empty({0, 4}),                    // Empty.
      at::randn({2, 9}).to(at::kBFloat16),  // bfloat16 again: same buffer.
  };
}

TEST(ShardedBlocksPackingTest, RoundTripKeepsValuesShapesStridesAndViews) {
  const std::vector<at::Tensor> block = MixedBlock();
  for (int parts : {1, 2, 3, 4}) {
    const ShardedBlocks::Packing packing = ShardedBlocks::Pack(block, parts);
    ASSERT_EQ(packing.buffers.size(), 2u) << "one buffer per dtype";
    EXPECT_EQ(packing.buffers[0].scalar_type(), at::kFloat);
    EXPECT_EQ(packing.buffers[1].scalar_type(), at::kBFloat16);
    for (const at::Tensor& b : packing.buffers) {
      EXPECT_EQ(b.dim(), 1);
      EXPECT_EQ(b.numel() % parts, 0) << "padded to a multiple of the parts";
    }
    const std::vector<at::Tensor> back = ShardedBlocks::Unpack(packing.buffers, packing.views);
    ASSERT_EQ(back.size(), block.size());
    for (size_t k = 0; k < block.size(); ++k) {
      ASSERT_EQ(back[k].defined(), block[k].defined()) << k;
      if (!block[k].defined()) continue;
      EXPECT_EQ(back[k].scalar_type(), block[k].scalar_type()) << k;
      EXPECT_EQ(back[k].sizes(), block[k].sizes()) << k;
      EXPECT_EQ(back[k].strides(), block[k].strides()) << k;
      EXPECT_TRUE(at::equal(back[k], block[k])) << k;
      // At the original's alignment (64-byte boundaries, as the allocator hands out).
      if (block[k].numel() == 0) continue;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(back[k].data_ptr()) % 64,
                reinterpret_cast<uintptr_t>(block[k].data_ptr()) % 64)
          << k;
    }
    // The two views of one storage are views of one buffer, the 3-row gap between them kept.
    EXPECT_TRUE(back[0].storage().is_alias_of(back[1].storage()));
    EXPECT_EQ(back[1].storage_offset() - back[0].storage_offset(), 10 * 7);
    // The storage's span once: 15 * 7 floats; the rest, 4 * 6 + 3 floats and 11 + 18 bfloat16.
    EXPECT_EQ(packing.content_bytes, (15 * 7 + 24 + 3) * 4 + (11 + 18) * 2);
  }
}

TEST(ShardedBlocksPackingTest, ShardsConcatenateToThePackingAndSplitTheBytes) {
  const int size = 3;
  std::vector<at::Tensor> shards_of_rank[size];
  int64_t kept = 0;
  for (int rank = 0; rank < size; ++rank) {
    absl::StatusOr<std::shared_ptr<const ShardedBlocks>> sharded =
        ShardedBlocks::Create({MixedBlock(), MixedBlock()}, rank, size, 1, at::Device(at::kCPU));
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    EXPECT_EQ((*sharded)->num_blocks(), 2);
    shards_of_rank[rank] = (*sharded)->shards(1);
    kept += (*sharded)->kept_bytes();
    EXPECT_EQ((*sharded)->tensor_options(0, 2).dtype(), at::kBFloat16);
  }
  const ShardedBlocks::Packing packing = ShardedBlocks::Pack(MixedBlock(), size);
  int64_t packed = 0;
  for (size_t b = 0; b < packing.buffers.size(); ++b) {
    std::vector<at::Tensor> parts;
    for (int rank = 0; rank < size; ++rank) {
      EXPECT_EQ(shards_of_rank[rank][b].numel(), packing.buffers[b].numel() / size);
      parts.push_back(shards_of_rank[rank][b]);
    }
    EXPECT_TRUE(at::equal(at::cat(parts), packing.buffers[b])) << b;
    packed += static_cast<int64_t>(packing.buffers[b].nbytes());
  }
  EXPECT_EQ(kept, 2 * packed);  // Every rank keeps its third of both blocks, nothing more.
}

TEST(ShardedBlocksPackingTest, CreateRefusesBadGroupsNamingTheFlag) {
  const at::Device cpu(at::kCPU);
  const absl::Status one = ShardedBlocks::Create({MixedBlock()}, 0, 1, 1, cpu).status();
  EXPECT_EQ(one.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(one, "--dit-shard-weights")) << one;
  EXPECT_EQ(ShardedBlocks::Create({MixedBlock()}, 2, 2, 1, cpu).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status prefetch = ShardedBlocks::Create({MixedBlock()}, 0, 2, 0, cpu).status();
  EXPECT_EQ(prefetch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(prefetch, "--dit-shard-prefetch")) << prefetch;
}

DitShard Shard(int rank, int size) {
  DitShard shard;
  shard.weights = true;
  shard.rank = rank;
  shard.size = size;
  return shard;
}

TEST(ShardBlocksTest, ModelsRefuseAGroupOfOneOffloadAndASecondCall) {
  std::unique_ptr<FluxTransformer2DModel> plain = testing::TinyFluxModel();
  ASSERT_NE(plain, nullptr);
  FluxTransformer2DModel flux = *plain;
  const absl::Status alone = flux.ShardBlocks("cpu", Shard(0, 1));
  EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(alone.message().rfind("--dit-shard-weights: ", 0), 0u) << alone;
  EXPECT_EQ(flux.sharded(), nullptr);
  EXPECT_TRUE(flux.ShardBlocks("cpu", DitShard()).ok());  // Off: nothing happens.
  EXPECT_EQ(flux.sharded(), nullptr);

  ASSERT_TRUE(flux.ShardBlocks("cpu", Shard(1, 2)).ok());
  ASSERT_NE(flux.sharded(), nullptr);
  EXPECT_EQ(flux.sharded()->num_blocks(),
            plain->config().num_layers + plain->config().num_single_layers);
  EXPECT_EQ(flux.ShardBlocks("cpu", Shard(1, 2)).code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok());
  EXPECT_EQ(flux.OffloadBlocks("cpu", *offload).code(), absl::StatusCode::kInvalidArgument);

  FluxTransformer2DModel offloaded = *plain;
  ASSERT_TRUE(offloaded.OffloadBlocks("cpu", *offload).ok());
  const absl::Status both = offloaded.ShardBlocks("cpu", Shard(0, 2));
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(both, "--dit-offload layerwise")) << both;

  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(testing::TinyWanVariant::kT2V);
  ASSERT_NE(p.transformer, nullptr);
  WanTransformer3DModel wan = *p.transformer;
  EXPECT_EQ(wan.ShardBlocks("cpu", Shard(0, 1)).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(wan.ShardBlocks("cpu", Shard(0, 2)).ok());
  EXPECT_EQ(wan.sharded()->num_blocks(), p.transformer->config().num_layers);
  EXPECT_EQ(wan.ShardBlocks("cpu", Shard(0, 2)).code(), absl::StatusCode::kInvalidArgument);
}

// The tiny FLUX checkpoint of the e2e tests (scripts/setup.sh writes .dgrid/tiny-flux): Load with
// the flag in a process alone is refused before anything is read.
TEST(ShardBlocksTest, LoadInAProcessAloneIsRefused) {
  const char* source = std::getenv("DGRID_SOURCE_DIR");
  const std::string root = std::string(source != nullptr ? source : ".") + "/.dgrid/tiny-flux";
  if (!std::filesystem::exists(root + "/transformer/config.json")) {
    GTEST_SKIP() << "no .dgrid/tiny-flux (scripts/setup.sh makes it)";
  }
  LoadOptions load;
  load.floating_dtype = "float32";
  load.dit_shard = Shard(0, 1);
  const absl::Status alone = FluxTransformer2DModel::Load(root + "/transformer", load).status();
  EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument) << alone;
  EXPECT_EQ(alone.message().rfind("--dit-shard-weights: ", 0), 0u) << alone;
  // In a group of two the load shards (rank 1's half).
  load.dit_shard = Shard(1, 2);
  absl::StatusOr<FluxTransformer2DModel> model =
      FluxTransformer2DModel::Load(root + "/transformer", load);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_NE(model->sharded(), nullptr);
  EXPECT_EQ(model->sharded()->rank(), 1);
}

}  // namespace
}  // namespace dgrid
