// One rank of a multi-process denoiser group over Gloo (driven by sp_gloo_test.py): runs the tiny
// FLUX sampler with true CFG sequence/CFG-parallel, runs the same request on one rank locally, and
// exits 0 when the two agree within 1e-5 relative (fp32), 1 when they do not, 2 on an error.
//
// Usage: sp_gloo_worker CFG RING ULYSSES RANK HOST:PORT LATENT_HEIGHT LATENT_WIDTH
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/time/time.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

int Fail(int rank, const absl::Status& status) {
  std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
  return 2;
}

int Run(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s CFG RING ULYSSES RANK HOST:PORT HEIGHT WIDTH\n", argv[0]);
    return 2;
  }
  const int cfg = std::atoi(argv[1]), ring = std::atoi(argv[2]), ulysses = std::atoi(argv[3]);
  const int rank = std::atoi(argv[4]);
  at::set_num_threads(1);
  std::unique_ptr<FluxTransformer2DModel> model = testing::TinyFluxModel();
  if (model == nullptr) return Fail(rank, absl::InternalError("tiny model"));
  const FluxSamplerRequest request =
      testing::TinyFluxRequest(std::atoi(argv[6]), std::atoi(argv[7]), /*true_cfg=*/true);
  auto want = RunFluxSampler(*model, testing::TinyFluxScheduler(), request);
  if (!want.ok()) return Fail(rank, want.status());

  auto layout = ParallelLayout::Create(cfg, ring, ulysses, rank);
  if (!layout.ok()) return Fail(rank, layout.status());
  CommunicatorOptions options;
  options.leader_address = argv[5];
  options.rank = rank;
  options.size = layout->size();
  options.timeout = absl::Seconds(60);
  auto world = CreateGlooCommunicator(options);
  if (!world.ok()) return Fail(rank, world.status());
  auto group = SplitSequenceParallelGroup(**world, *layout);
  if (!group.ok()) return Fail(rank, group.status());
  auto got = RunFluxSampler(*model, testing::TinyFluxScheduler(), request, {}, &(*group)->context);
  if (!got.ok()) return Fail(rank, got.status());
  const double error = testing::RelativeError(*got, *want);
  std::printf("%s rank %d: relative error %.3g\n", layout->ToString().c_str(), rank, error);
  return error < 1e-5 ? 0 : 1;
}

}  // namespace
}  // namespace dgrid

int main(int argc, char** argv) { return dgrid::Run(argc, argv); }
