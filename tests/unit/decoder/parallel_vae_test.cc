// parallel_vae_test: the AutoencoderKL and AutoencoderKLWan decodes split over 1, 2 and 4 ranks of
// an in-process thread communicator (test seam) equal the single-rank decode within 1e-5 (max abs,
// float32, CPU), with even and uneven row splits, on the tiny random VAEs of make_vae_fixtures.py
// and make_vae_tiling_fixtures.py.
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "services/decoder/parallel_vae.h"
#include "tests/unit/parallel/sp_thread_communicator.h"

namespace dgrid::decoder {
namespace {

constexpr double kFp32Tolerance = 1e-5;

// The folders of make_vae_fixtures.py ("decoder", the decoder_fixtures step) and
// make_vae_tiling_fixtures.py ("decoder_tiling").
std::string FixtureDir(const std::string& which = "decoder") {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : ".") + "/parity/" + which;
}

TEST(VaeRowBands, SplitsRowsInOrderWithTheRemainderFirst) {
  EXPECT_EQ(VaeRowBands(8, 2), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(VaeRowBands(7, 4), (std::vector<int64_t>{2, 2, 2, 1}));
  EXPECT_EQ(VaeRowBands(5, 1), (std::vector<int64_t>{5}));
  EXPECT_EQ(VaeRowBands(4, 4), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_TRUE(VaeRowBands(3, 4).empty());
  EXPECT_TRUE(VaeRowBands(3, 0).empty());
}

// Decodes `latents` with `vae` alone and with every rank of a `ranks`-thread group, and expects
// every rank's picture within kFp32Tolerance (max abs) of the single-rank one.
template <typename Vae>
void ExpectEveryRankDecodesAsOne(const Vae& vae, int ranks, const at::Tensor& latents,
                                 const std::string& what) {
  absl::StatusOr<at::Tensor> single = vae.Decode(latents);
  ASSERT_TRUE(single.ok()) << single.status();
  std::mutex mu;
  std::vector<absl::StatusOr<at::Tensor>> images(ranks, absl::UnknownError("not run"));
  dgrid::testing::RunOnThreadGroup(ranks, [&](int rank, Communicator& comm) {
    absl::StatusOr<at::Tensor> image = ParallelVaeDecode(vae, comm, latents);
    std::lock_guard<std::mutex> lock(mu);
    images[rank] = std::move(image);
  });
  for (int rank = 0; rank < ranks; ++rank) {
    ASSERT_TRUE(images[rank].ok()) << "rank " << rank << ": " << images[rank].status();
    ASSERT_EQ(images[rank]->sizes(), single->sizes()) << "rank " << rank;
    const double err = (*images[rank] - *single).abs().max().item<double>();
    std::cout << "[ max abs  ] " << what << ", " << ranks << " ranks, rank " << rank << ": " << err
              << "\n";
    EXPECT_LE(err, kFp32Tolerance) << what << ", rank " << rank;
  }
}

// (fixture VAE, ranks, latent height, latent width)
using Case = std::tuple<std::string, int, int64_t, int64_t>;

class ParallelVaeDecodeTest : public ::testing::TestWithParam<Case> {};

TEST_P(ParallelVaeDecodeTest, EqualsTheSingleRankDecode) {
  const auto& [name, ranks, height, width] = GetParam();
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/" + name, {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const at::Tensor latents = at::randn({2, vae->config().latent_channels, height, width},
                                       at::TensorOptions().dtype(at::kFloat))
                                 .mul_(1.5);
  ExpectEveryRankDecodesAsOne(*vae, ranks, latents,
                              absl::StrCat(name, ", ", height, "x", width, " latents"));
}

INSTANTIATE_TEST_SUITE_P(Splits, ParallelVaeDecodeTest,
                         ::testing::Values(Case{"vae_flux", 1, 6, 5}, Case{"vae_flux", 2, 8, 6},
                                           Case{"vae_flux", 2, 7, 6}, Case{"vae_flux", 4, 8, 5},
                                           Case{"vae_flux", 4, 7, 6}, Case{"vae_flux", 4, 4, 3},
                                           Case{"vae_quant", 2, 9, 4}, Case{"vae_quant", 4, 6, 4}));

// Wan's video VAE split along h: (fixture VAE, ranks, frames, latent height, latent width).
using WanCase = std::tuple<std::string, int, int64_t, int64_t, int64_t>;

class ParallelWanVaeDecodeTest : public ::testing::TestWithParam<WanCase> {};

TEST_P(ParallelWanVaeDecodeTest, EqualsTheSingleRankDecode) {
  const auto& [name, ranks, frames, height, width] = GetParam();
  absl::StatusOr<AutoencoderKLWan> vae =
      AutoencoderKLWan::Load(FixtureDir("decoder_tiling") + "/" + name, {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const at::Tensor latents =
      at::randn({1, vae->config().z_dim, frames, height, width}, at::kFloat).mul_(1.5);
  ExpectEveryRankDecodesAsOne(
      *vae, ranks, latents,
      absl::StrCat(name, ", ", frames, " frames of ", height, "x", width, " latents"));
}

// tiling_wan: Wan2.1's layout; tiling_wan22: Wan2.2 TI2V's (residual blocks, patch 2).
INSTANTIATE_TEST_SUITE_P(Splits, ParallelWanVaeDecodeTest,
                         ::testing::Values(WanCase{"tiling_wan", 2, 3, 6, 5},
                                           WanCase{"tiling_wan", 2, 3, 7, 5},
                                           WanCase{"tiling_wan", 4, 2, 7, 4},
                                           WanCase{"tiling_wan22", 2, 2, 5, 4},
                                           WanCase{"tiling_wan22", 4, 2, 4, 3}));

TEST(ParallelVaeDecode, FewerRowsThanRanksIsInvalid) {
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const at::Tensor latents = at::randn({1, vae->config().latent_channels, 3, 4});
  std::mutex mu;
  std::vector<absl::Status> statuses(4);
  dgrid::testing::RunOnThreadGroup(4, [&](int rank, Communicator& comm) {
    absl::Status status = ParallelVaeDecode(*vae, comm, latents).status();
    std::lock_guard<std::mutex> lock(mu);
    statuses[rank] = status;
  });
  for (const absl::Status& s : statuses) EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

// A rank that never comes: the others get the communicator's error, not an exception or a hang.
TEST(ParallelVaeDecode, AMissingRankGivesTheCommunicatorsError) {
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const at::Tensor latents = at::randn({1, vae->config().latent_channels, 4, 4});
  absl::Status status;
  dgrid::testing::RunOnThreadGroup(
      2,
      [&](int rank, Communicator& comm) {
        if (rank == 0) status = ParallelVaeDecode(*vae, comm, latents).status();
      },
      absl::Milliseconds(200));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("parallel VAE decode"), std::string::npos) << status;
}

}  // namespace
}  // namespace dgrid::decoder
