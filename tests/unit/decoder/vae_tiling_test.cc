// vae_tiling_test: AutoencoderKL's tiled and sliced decode against diffusers' own
// (enable_tiling / enable_slicing; reference data from make_vae_tiling_fixtures.py), tiling off
// or not triggered leaving the decode bit for bit as it was, and bad settings naming their flag.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/safetensors.h"
#include "services/decoder/decoder_engine.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "services/decoder/models/vae_tiling.h"

namespace dgrid::decoder {
namespace {

constexpr double kFp32Tolerance = 1e-5;

std::string FixtureDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : ".") + "/parity/decoder_tiling";
}

struct Reference {
  WeightMap map;
  at::Tensor Get(const std::string& name) const {
    auto it = map.tensors().find(name);
    if (it == map.tensors().end()) {
      ADD_FAILURE() << "reference tensor '" << name << "' missing";
      return at::Tensor();
    }
    return it->second;
  }
};

Reference LoadReference(const std::string& name) {
  absl::StatusOr<WeightMap> ref =
      LoadSafetensorsFile(FixtureDir() + "/" + name + ".ref.safetensors", LoadOptions{});
  if (!ref.ok()) {
    ADD_FAILURE() << "reference data missing (run ctest, whose fixture step "
                     "make_vae_tiling_fixtures.py writes it): "
                  << ref.status();
    return {};
  }
  return {*std::move(ref)};
}

double RelError(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

void ExpectClose(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double err = RelError(actual, expected);
  const double max_abs = (actual - expected).abs().max().item<double>();
  std::cout << "[ rel err  ] " << what << ": " << err << " (max abs " << max_abs
            << (at::equal(actual, expected) ? ", bitwise equal" : "") << ")\n";
  EXPECT_LE(err, kFp32Tolerance) << what;
}

// AutoencoderKL or AutoencoderKLWan from the fixture folder `name`, with `options`.
template <typename Vae>
Vae LoadModel(const std::string& name, const VaeDecodeOptions& options) {
  absl::StatusOr<Vae> vae = Vae::Load(FixtureDir() + "/" + name, {});
  if (!vae.ok()) {  // no model to return: the fixture step did not run
    std::cerr << vae.status() << " (the fixture step writes the model)\n";
    std::abort();
  }
  const absl::Status set = vae->SetDecodeOptions(options);
  EXPECT_TRUE(set.ok()) << set;
  return *std::move(vae);
}
AutoencoderKL LoadVae(const std::string& name, const VaeDecodeOptions& options) {
  return LoadModel<AutoencoderKL>(name, options);
}

VaeDecodeOptions Tiled(int64_t tile_size, bool slicing = false) {
  VaeDecodeOptions o;
  o.tiling = VaeTilingMode::kOn;
  o.tile_size = tile_size;
  o.slicing = slicing;
  return o;
}

template <typename Vae>
at::Tensor Decode(const Vae& vae, const at::Tensor& latents) {
  absl::StatusOr<at::Tensor> out = vae.Decode(latents);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : at::Tensor();
}

class VaeTilingParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeTilingParityTest, TiledDecodeMatchesDiffusers) {
  const std::string name = GetParam();
  const Reference ref = LoadReference(name);
  const int64_t tile = ref.Get("tile_size").item<int64_t>();
  const AutoencoderKL vae = LoadVae(name, Tiled(tile));
  ASSERT_TRUE(vae.TilesDecode(ref.Get("latents").size(2), ref.Get("latents").size(3)));
  ExpectClose(Decode(vae, ref.Get("latents")), ref.Get("tiled"), name + " tiled decode");

  absl::StatusOr<at::Tensor> denoised = vae.DecodeDenoised(ref.Get("denoised"));
  ASSERT_TRUE(denoised.ok()) << denoised.status();
  ExpectClose(*denoised, ref.Get("denoised_tiled"), name + " tiled decode of denoiser latents");
}

TEST_P(VaeTilingParityTest, SlicedDecodeMatchesDiffusersAndEachSampleAlone) {
  const std::string name = GetParam();
  const Reference ref = LoadReference(name);
  const int64_t tile = ref.Get("tile_size").item<int64_t>();
  const AutoencoderKL sliced = LoadVae(name, Tiled(tile, /*slicing=*/true));
  const at::Tensor latents = ref.Get("latents");
  ASSERT_EQ(latents.size(0), 2);
  const at::Tensor both = Decode(sliced, latents);
  ExpectClose(both, ref.Get("sliced_tiled"), name + " sliced tiled decode");
  // Slicing is exactly one decode per sample.
  const at::Tensor first = Decode(sliced, latents.slice(0, 0, 1));
  const at::Tensor second = Decode(sliced, latents.slice(0, 1, 2));
  EXPECT_TRUE(at::equal(both, at::cat({first, second})));

  // Slicing without tiling: the plain decode, one sample at a time.
  VaeDecodeOptions only_slicing;
  only_slicing.slicing = true;
  const AutoencoderKL plain_sliced = LoadVae(name, only_slicing);
  ExpectClose(Decode(plain_sliced, latents), ref.Get("plain"), name + " sliced untiled decode");
}

TEST_P(VaeTilingParityTest, TiledDiffersFromUntiledOnlyAsMuchAsInDiffusers) {
  const std::string name = GetParam();
  const Reference ref = LoadReference(name);
  const int64_t tile = ref.Get("tile_size").item<int64_t>();
  const at::Tensor latents = ref.Get("latents");
  const at::Tensor tiled = Decode(LoadVae(name, Tiled(tile)), latents);
  const at::Tensor plain = Decode(LoadVae(name, {}), latents);
  ExpectClose(plain, ref.Get("plain"), name + " untiled decode");
  const double ours = RelError(tiled, plain);
  const double theirs = RelError(ref.Get("tiled"), ref.Get("plain"));
  std::cout << "[ tiled vs untiled ] " << name << ": dgrid " << ours << ", diffusers " << theirs
            << "\n";
  EXPECT_NEAR(ours, theirs, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VaeTilingParityTest,
                         ::testing::Values("tiling_flux", "tiling_quant"));

// AutoencoderKLWan.tiled_decode: spatial tiles through every frame, blended (Wan2.2: in the
// patchified space).
class WanVaeTilingParityTest : public ::testing::TestWithParam<std::string> {};

AutoencoderKLWan LoadWanVae(const std::string& name, const VaeDecodeOptions& options) {
  return LoadModel<AutoencoderKLWan>(name, options);
}

TEST_P(WanVaeTilingParityTest, TiledAndSlicedDecodeMatchDiffusers) {
  const std::string name = GetParam();
  const Reference ref = LoadReference(name);
  const int64_t tile = ref.Get("tile_size").item<int64_t>();
  const at::Tensor latents = ref.Get("latents");
  const AutoencoderKLWan tiled = LoadWanVae(name, Tiled(tile));
  ASSERT_TRUE(tiled.TilesDecode(latents.size(3), latents.size(4)));
  const at::Tensor ours = Decode(tiled, latents);
  ExpectClose(ours, ref.Get("tiled"), name + " tiled decode");

  const AutoencoderKLWan sliced = LoadWanVae(name, Tiled(tile, /*slicing=*/true));
  const at::Tensor both = Decode(sliced, latents);
  ExpectClose(both, ref.Get("sliced_tiled"), name + " sliced tiled decode");
  std::vector<at::Tensor> each;
  for (const at::Tensor& one : latents.split(1)) each.push_back(Decode(sliced, one));
  EXPECT_TRUE(at::equal(both, at::cat(each)));

  const AutoencoderKLWan plain_vae = LoadWanVae(name, {});
  const at::Tensor plain = Decode(plain_vae, latents);
  ExpectClose(plain, ref.Get("plain"), name + " untiled decode");
  VaeDecodeOptions automatic;  // far below auto's threshold: unchanged, bit for bit
  automatic.tiling = VaeTilingMode::kAuto;
  EXPECT_TRUE(at::equal(Decode(LoadWanVae(name, automatic), latents), plain));
  const double dgrid_diff = RelError(ours, plain);
  const double diffusers_diff = RelError(ref.Get("tiled"), ref.Get("plain"));
  std::cout << "[ tiled vs untiled ] " << name << ": dgrid " << dgrid_diff << ", diffusers "
            << diffusers_diff << "\n";
  EXPECT_NEAR(dgrid_diff, diffusers_diff, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, WanVaeTilingParityTest,
                         ::testing::Values("tiling_wan", "tiling_wan22"));

TEST(VaeTiling, OffAutoBelowTheThresholdAndOneTileLeaveTheDecodeUnchanged) {
  const Reference ref = LoadReference("tiling_flux");
  const at::Tensor latents = ref.Get("latents");
  const at::Tensor before = Decode(LoadVae("tiling_flux", {}), latents);  // the default: off

  VaeDecodeOptions off;
  off.tiling = VaeTilingMode::kOff;
  off.tile_size = 16;
  EXPECT_TRUE(at::equal(Decode(LoadVae("tiling_flux", off), latents), before));

  VaeDecodeOptions automatic;  // 76 x 100 pixels: far below the threshold
  automatic.tiling = VaeTilingMode::kAuto;
  const AutoencoderKL auto_vae = LoadVae("tiling_flux", automatic);
  EXPECT_FALSE(auto_vae.TilesDecode(latents.size(2), latents.size(3)));
  EXPECT_TRUE(at::equal(Decode(auto_vae, latents), before));

  // On, but the latents fit one tile (100 px >= 25 latents x 4): not tiled, as in diffusers.
  const AutoencoderKL one_tile = LoadVae("tiling_flux", Tiled(112));
  EXPECT_FALSE(one_tile.TilesDecode(latents.size(2), latents.size(3)));
  EXPECT_TRUE(at::equal(Decode(one_tile, latents), before));
}

TEST(VaeTiling, AutoTilesAboveItsThreshold) {
  const Reference ref = LoadReference("tiling_flux");
  const at::Tensor latents = ref.Get("latents");
  VaeDecodeOptions automatic;
  automatic.tiling = VaeTilingMode::kAuto;
  automatic.auto_min_pixels = 76 * 100 - 1;  // the picture is 76 x 100
  const AutoencoderKL vae = LoadVae("tiling_flux", automatic);
  EXPECT_TRUE(vae.TilesDecode(latents.size(2), latents.size(3)));
  EXPECT_EQ(vae.tile_sample_size(), 32);  // config sample_size
  EXPECT_TRUE(at::equal(Decode(vae, latents), Decode(LoadVae("tiling_flux", Tiled(32)), latents)));
  automatic.auto_min_pixels = 76 * 100;
  EXPECT_FALSE(LoadVae("tiling_flux", automatic).TilesDecode(latents.size(2), latents.size(3)));
}

TEST(VaeTiling, BlendingTilesOfOnePictureGivesItBack) {
  // A "decoder" that doubles each latent into 2 x 2 pixels: tiles decoded apart and blended back
  // must rebuild the picture (the overlaps hold the same pixels), whatever the tile grid.
  const at::Tensor latents = at::rand({1, 3, 23, 17}, at::kDouble);
  auto upsample = [](const at::Tensor& t) {
    return t.repeat_interleave(2, -2).repeat_interleave(2, -1).contiguous();
  };
  for (const int64_t tile : {4, 8, 12}) {
    VaeTileAxis axis;
    axis.latent_tile = tile;
    axis.latent_stride = tile * 3 / 4;
    axis.blend = 2 * tile / 4;
    axis.keep = 2 * tile - axis.blend;
    const at::Tensor out = DecodeInTiles(latents, axis, axis, upsample);
    ASSERT_EQ(out.sizes(), upsample(latents).sizes()) << tile;
    EXPECT_LT((out - upsample(latents)).abs().max().item<double>(), 1e-12) << tile;
  }
}

TEST(VaeTiling, BadSettingsNameTheirFlag) {
  absl::StatusOr<VaeTilingMode> mode = ParseVaeTilingMode("sometimes", "--vae-tiling");
  ASSERT_FALSE(mode.ok());
  EXPECT_EQ(mode.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mode.status().message().find("--vae-tiling"), std::string::npos) << mode.status();
  EXPECT_EQ(*ParseVaeTilingMode("", "--vae-tiling"), VaeTilingMode::kAuto);
  EXPECT_EQ(*ParseVaeTilingMode("on", "--vae-tiling"), VaeTilingMode::kOn);
  EXPECT_EQ(*ParseVaeTilingMode("off", "--vae-tiling"), VaeTilingMode::kOff);

  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/tiling_flux", {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  for (const int64_t bad : {-16, 8, 30, 33}) {  // this VAE's tiles are multiples of 16 px
    const absl::Status s = vae->SetDecodeOptions(Tiled(bad));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("--vae-tile-size"), std::string::npos) << s;
  }
  EXPECT_EQ(vae->tile_sample_size(), 32);  // a refused setting changes nothing

  absl::StatusOr<AutoencoderKLWan> wan = AutoencoderKLWan::Load(FixtureDir() + "/tiling_wan", {});
  ASSERT_TRUE(wan.ok()) << wan.status();
  EXPECT_EQ(wan->tile_sample_size(), 256);                        // diffusers' default
  const absl::Status wan_bad = wan->SetDecodeOptions(Tiled(48));  // 8 px per latent: 32, 64, ...
  EXPECT_EQ(wan_bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wan_bad.message().find("--vae-tile-size"), std::string::npos) << wan_bad;

  // Through the engine, as the stage and `dgrid generate --local` pass the flags.
  const char* source = std::getenv("DGRID_SOURCE_DIR");
  const std::string model = std::string(source ? source : ".") + "/models/dgrid-shapes";
  DecoderEngineOptions options;
  options.model_path = model;
  options.vae_tiling = "always";
  absl::StatusOr<std::unique_ptr<DecoderEngine>> engine = DecoderEngine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("--vae-tiling"), std::string::npos) << engine.status();
  options.vae_tiling = "on";
  options.vae_tile_size = 100;
  engine = DecoderEngine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("--vae-tile-size"), std::string::npos)
      << engine.status();
}

}  // namespace
}  // namespace dgrid::decoder
