// One rank of a Gloo group decoding with ParallelVaeDecode (driven by parallel_vae_gloo_test.py):
// decodes seeded random latents alone and with the group, prints the max abs difference and exits
// 0 when it is within 1e-5, 1 otherwise (or on any error).
//
// argv: VAE_FOLDER RANK SIZE HOST:PORT LATENT_HEIGHT LATENT_WIDTH
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/parallel_vae.h"

namespace dgrid {
namespace {

int Fail(int rank, const absl::Status& status) {
  std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
  return 1;
}

int Run(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s VAE_FOLDER RANK SIZE HOST:PORT LATENT_HEIGHT LATENT_WIDTH\n",
                 argv[0]);
    return 2;
  }
  const int rank = std::atoi(argv[2]);
  absl::StatusOr<decoder::AutoencoderKL> vae = decoder::AutoencoderKL::Load(argv[1], {});
  if (!vae.ok()) return Fail(rank, vae.status());
  at::manual_seed(5);  // the same latents on every rank
  const at::Tensor latents = at::randn(
      {2, vae->config().latent_channels, std::atoll(argv[5]), std::atoll(argv[6])}, at::kFloat);
  absl::StatusOr<at::Tensor> single = vae->Decode(latents);
  if (!single.ok()) return Fail(rank, single.status());

  CommunicatorOptions options;
  options.leader_address = argv[4];
  options.rank = rank;
  options.size = std::atoi(argv[3]);
  options.timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateGlooCommunicator(options);
  if (!comm.ok()) return Fail(rank, comm.status());
  absl::StatusOr<at::Tensor> image = decoder::ParallelVaeDecode(*vae, **comm, latents);
  if (!image.ok()) return Fail(rank, image.status());
  if (image->sizes() != single->sizes()) return Fail(rank, absl::InternalError("wrong shape"));
  const double error = (*image - *single).abs().max().item<double>();
  std::printf("%s, %s x %s latents, %d ranks, rank %d: max abs difference %.3g\n", argv[1], argv[5],
              argv[6], options.size, rank, error);
  return error <= 1e-5 ? 0 : 1;
}

}  // namespace
}  // namespace dgrid

int main(int argc, char** argv) { return dgrid::Run(argc, argv); }
