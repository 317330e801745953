// One rank of a Gloo group decoding with ParallelVaeDecode (driven by parallel_vae_gloo_test.py):
// decodes seeded random latents alone and with the group, prints the max abs difference and exits
// 0 when it is within 1e-5, 1 otherwise (or on any error).
//
// argv: VAE_FOLDER RANK SIZE HOST:PORT LATENT_HEIGHT LATENT_WIDTH [FRAMES]
// With FRAMES the folder is an AutoencoderKLWan's and the latents have that many frames.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "services/decoder/parallel_vae.h"

namespace dgrid {
namespace {

int Fail(int rank, const absl::Status& status) {
  std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
  return 1;
}

int Run(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    std::fprintf(stderr,
                 "usage: %s VAE_FOLDER RANK SIZE HOST:PORT LATENT_HEIGHT LATENT_WIDTH [FRAMES]\n",
                 argv[0]);
    return 2;
  }
  const int rank = std::atoi(argv[2]);
  const int64_t height = std::atoll(argv[5]), width = std::atoll(argv[6]);
  std::optional<decoder::AutoencoderKL> vae;
  std::optional<decoder::AutoencoderKLWan> wan;
  at::manual_seed(5);  // the same latents on every rank
  at::Tensor latents;
  if (argc == 8) {
    absl::StatusOr<decoder::AutoencoderKLWan> loaded = decoder::AutoencoderKLWan::Load(argv[1], {});
    if (!loaded.ok()) return Fail(rank, loaded.status());
    wan = *std::move(loaded);
    latents = at::randn({1, wan->config().z_dim, std::atoll(argv[7]), height, width}, at::kFloat);
  } else {
    absl::StatusOr<decoder::AutoencoderKL> loaded = decoder::AutoencoderKL::Load(argv[1], {});
    if (!loaded.ok()) return Fail(rank, loaded.status());
    vae = *std::move(loaded);
    latents = at::randn({2, vae->config().latent_channels, height, width}, at::kFloat);
  }
  absl::StatusOr<at::Tensor> single = wan ? wan->Decode(latents) : vae->Decode(latents);
  if (!single.ok()) return Fail(rank, single.status());

  CommunicatorOptions options;
  options.leader_address = argv[4];
  options.rank = rank;
  options.size = std::atoi(argv[3]);
  options.timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateGlooCommunicator(options);
  if (!comm.ok()) return Fail(rank, comm.status());
  absl::StatusOr<at::Tensor> image = wan ? decoder::ParallelVaeDecode(*wan, **comm, latents)
                                         : decoder::ParallelVaeDecode(*vae, **comm, latents);
  if (!image.ok()) return Fail(rank, image.status());
  if (image->sizes() != single->sizes()) return Fail(rank, absl::InternalError("wrong shape"));
  const double error = (*image - *single).abs().max().item<double>();
  // Wan's decode is clamped to [-1, 1]: the share of values inside shows the check is not on a
  // saturated picture.
  const double inside = (single->abs() < 1).to(at::kFloat).mean().item<double>();
  std::printf(
      "%s, %s x %s latents, %d ranks, rank %d: max abs difference %.3g (%.0f%% of values "
      "inside (-1, 1))\n",
      argv[1], argv[5], argv[6], options.size, rank, error, 100 * inside);
  return error <= 1e-5 ? 0 : 1;
}

}  // namespace
}  // namespace dgrid

int main(int argc, char** argv) { return dgrid::Run(argc, argv); }
