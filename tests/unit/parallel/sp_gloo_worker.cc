// One rank of a multi-process denoiser group over Gloo (driven by sp_gloo_test.py): runs a tiny
// model's whole sampler loop sequence/CFG-parallel, runs the same request on one rank locally, and
// exits 0 when the two agree within 1e-5 relative (fp32), 1 when they do not, 2 on an error.
//   FLUX (true CFG):  sp_gloo_worker CFG RING ULYSSES RANK HOST:PORT LATENT_HEIGHT LATENT_WIDTH
//   Wan (guidance 5): sp_gloo_worker --wan t2v|a14b|ti2v|euler CFG RING ULYSSES RANK HOST:PORT
//                     NUM_FRAMES HEIGHT WIDTH
// With a leading "--shard PREFETCH" (either family) the group runs twice, with whole weights and
// with this rank's shard of the blocks (--dit-shard-weights, the blocks gathered over the group);
// the two must be equal bit for bit, and the sharded run within 1e-5 of the one-rank run.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/time/time.h"
#include "common/status.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

// `sharded`: run with the models whose blocks Shard sharded.
using Sampler =
    std::function<absl::StatusOr<at::Tensor>(const SequenceParallelContext* sp, bool sharded)>;
// Makes the sharded models for `rank` of `size` (ShardBlocks on copies of the whole models).
using Shard = std::function<absl::Status(int rank, int size)>;

// --shard's prefetch depth; 0 without --shard.
int64_t g_shard_prefetch = 0;

DitShard ShardOf(int rank, int size) {
  DitShard shard;
  shard.weights = true;
  shard.rank = rank;
  shard.size = size;
  shard.prefetch = g_shard_prefetch;
  return shard;
}

int Fail(int rank, const absl::Status& status) {
  std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
  return 2;
}

// argv: CFG RING ULYSSES RANK HOST:PORT. Runs `sampler` on one rank and on the group.
int RunGroup(char** argv, const std::string& what, const Sampler& sampler, const Shard& shard) {
  const int cfg = std::atoi(argv[0]), ring = std::atoi(argv[1]), ulysses = std::atoi(argv[2]);
  const int rank = std::atoi(argv[3]);
  auto want = sampler(nullptr, false);
  if (!want.ok()) return Fail(rank, want.status());
  auto layout = ParallelLayout::Create(cfg, ring, ulysses, rank);
  if (!layout.ok()) return Fail(rank, layout.status());
  CommunicatorOptions options;
  options.leader_address = argv[4];
  options.rank = rank;
  options.size = layout->size();
  options.timeout = absl::Seconds(60);
  auto world = CreateGlooCommunicator(options);
  if (!world.ok()) return Fail(rank, world.status());
  auto group = SplitSequenceParallelGroup(**world, *layout);
  if (!group.ok()) return Fail(rank, group.status());
  auto got = sampler(&(*group)->context, false);
  if (!got.ok()) return Fail(rank, got.status());
  const double error = testing::RelativeError(*got, *want);
  std::printf("%s%s rank %d: relative error %.3g\n", what.c_str(), layout->ToString().c_str(), rank,
              error);
  if (g_shard_prefetch == 0) return error < 1e-5 ? 0 : 1;
  if (absl::Status s = shard(rank, layout->size()); !s.ok()) return Fail(rank, s);
  auto sharded = sampler(&(*group)->context, true);
  if (!sharded.ok()) return Fail(rank, sharded.status());
  const double sharded_error = testing::RelativeError(*sharded, *want);
  const bool same = at::equal(*sharded, *got);
  std::printf(
      "%s%s rank %d, sharded weights (prefetch %d): relative error %.3g, %s the "
      "whole-weight group's\n",
      what.c_str(), layout->ToString().c_str(), rank, static_cast<int>(g_shard_prefetch),
      sharded_error, same ? "bitwise equal to" : "DIFFERENT from");
  return error < 1e-5 && sharded_error < 1e-5 && same ? 0 : 1;
}

int Run(int argc, char** argv) {
  at::set_num_threads(1);
  if (argc > 2 && std::strcmp(argv[1], "--shard") == 0) {
    g_shard_prefetch = std::atoi(argv[2]);
    if (g_shard_prefetch < 1) {
      std::fprintf(stderr, "--shard %s: the prefetch depth must be >= 1\n", argv[2]);
      return 2;
    }
    argv[2] = argv[0];  // Drop the two arguments.
    argv += 2;
    argc -= 2;
  }
  if (argc == 11 && std::strcmp(argv[1], "--wan") == 0) {
    testing::TinyWanVariant variant;
    if (!testing::ParseTinyWanVariant(argv[2], &variant)) {
      std::fprintf(stderr, "unknown Wan variant %s\n", argv[2]);
      return 2;
    }
    const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(variant);
    if (p.transformer == nullptr) return Fail(-1, absl::InternalError("tiny Wan model"));
    const WanSamplerRequest request = testing::TinyWanRequest(
        variant, std::atoi(argv[8]), std::atoi(argv[9]), std::atoi(argv[10]), /*cfg=*/true);
    std::unique_ptr<WanTransformer3DModel> sharded, sharded_2;
    return RunGroup(
        argv + 3, std::string("wan ") + argv[2] + " ",
        [&](const SequenceParallelContext* sp, bool use_sharded) {
          return use_sharded ? RunWanSampler(*sharded, sharded_2.get(), p.pipeline, p.scheduler,
                                             request, {}, sp)
                             : RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline,
                                             p.scheduler, request, {}, sp);
        },
        [&](int rank, int size) -> absl::Status {
          sharded = std::make_unique<WanTransformer3DModel>(*p.transformer);
          RETURN_IF_ERROR(sharded->ShardBlocks("cpu", ShardOf(rank, size)));
          if (p.transformer_2 == nullptr) return absl::OkStatus();
          sharded_2 = std::make_unique<WanTransformer3DModel>(*p.transformer_2);
          return sharded_2->ShardBlocks("cpu", ShardOf(rank, size));
        });
  }
  if (argc != 8) {
    std::fprintf(stderr,
                 "usage: %s [--shard PREFETCH] CFG RING ULYSSES RANK HOST:PORT HEIGHT WIDTH\n"
                 "       %s [--shard PREFETCH] --wan VARIANT CFG RING ULYSSES RANK HOST:PORT "
                 "FRAMES HEIGHT WIDTH\n",
                 argv[0], argv[0]);
    return 2;
  }
  std::unique_ptr<FluxTransformer2DModel> model = testing::TinyFluxModel();
  if (model == nullptr) return Fail(-1, absl::InternalError("tiny model"));
  const FluxSamplerRequest request =
      testing::TinyFluxRequest(std::atoi(argv[6]), std::atoi(argv[7]), /*true_cfg=*/true);
  std::unique_ptr<FluxTransformer2DModel> sharded;
  return RunGroup(
      argv + 1, "",
      [&](const SequenceParallelContext* sp, bool use_sharded) {
        return RunFluxSampler(use_sharded ? *sharded : *model, testing::TinyFluxScheduler(),
                              request, {}, sp);
      },
      [&](int rank, int size) {
        sharded = std::make_unique<FluxTransformer2DModel>(*model);
        return sharded->ShardBlocks("cpu", ShardOf(rank, size));
      });
}

}  // namespace
}  // namespace dgrid

int main(int argc, char** argv) { return dgrid::Run(argc, argv); }
