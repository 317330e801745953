#!/usr/bin/env python3
"""Reference data for vae_tiling_test: diffusers' own tiled and sliced AutoencoderKL decode.

Writes under $DGRID_BUILD_DIR/parity/decoder_tiling/:
  <case>/config.json + diffusion_pytorch_model.safetensors   (save_pretrained)
  <case>.ref.safetensors   float32 CPU, the reloaded model:
    latents [2, C, h, w]          random latents of a picture several tiles wide and high
    plain                         vae.decode(latents), no tiling
    tiled                         vae.enable_tiling(); vae.decode(latents)
    sliced_tiled                  and vae.enable_slicing(): one sample at a time
    denoised [1, C, h, w]         FluxPipeline-style: decode(denoised / scaling_factor + shift)
    denoised_tiled                ... tiled
    tile_size [1] (int64)         the tile's side in pixels (tile_sample_min_size)

Cases:
  tiling_flux   FLUX-like (16 latent channels, shift_factor, no quant convs), 3 levels (4 pixels per
                latent), sample_size 32: diffusers' default tile (32 px = 8 latents, stride 6
                latents, 8 px blended); latents 19 x 25, so the last row and column of tiles are
                thinner than the blend.
  tiling_quant  quant / post-quant convs, two resnets per block, sample_size 64 but tiles set to 16
                px (4 latents, stride 3, 4 px blended) as a caller of enable_tiling() would set them.
  tiling_wan    AutoencoderKLWan (Wan2.1 layout, 8 px per latent), enable_tiling(32, 32, 24, 24):
                tiles of 4 latents every 3; latents [2, 4, 2 frames, 7, 9].
  tiling_wan22  Wan2.2 TI2V-5B's layout (patch 2, 16 px per latent), enable_tiling(64, 64, 48, 48):
                blended in the patchified space; latents [1, 6, 2 frames, 5, 6].
  (Wan's .ref.safetensors have latents, plain, tiled, sliced_tiled and tile_size.)
"""
import os
import sys

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan
from safetensors.torch import save_file

from make_vae_fixtures import random_vae  # the same random, perturbed, saved and reloaded VAEs


def out_dir():
    build = os.environ.get("DGRID_BUILD_DIR")
    if not build:
        sys.exit("DGRID_BUILD_DIR is not set (run through ctest)")
    path = os.path.join(build, "parity", "decoder_tiling")
    os.makedirs(path, exist_ok=True)
    return path


def save_case(root, name, out):
    assert out["tiled"].shape == out["plain"].shape, (out["tiled"].shape, out["plain"].shape)
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(root, name + ".ref.safetensors"))
    diff = (out["tiled"] - out["plain"]).norm() / out["plain"].norm()
    print(f"{name}: tiles of {int(out['tile_size'])} px, tiled vs plain rel err {diff:.3e}")


def make_case(root, name, seed, latent_hw, tile_size=None, **config):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = random_vae(AutoencoderKL, root, name, g, **config)

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if tile_size is not None:
        vae.tile_sample_min_size = tile_size
        vae.tile_latent_min_size = tile_size // scale
    c = vae.config.latent_channels
    h, w = latent_hw
    latents = torch.randn(2, c, h, w, generator=g)
    denoised = torch.randn(1, c, h, w, generator=g)
    out = {"latents": latents, "denoised": denoised,
           "tile_size": torch.tensor([vae.tile_sample_min_size], dtype=torch.int64)}
    with torch.no_grad():
        out["plain"] = vae.decode(latents).sample
        vae.enable_tiling()
        out["tiled"] = vae.decode(latents).sample
        z = denoised / vae.config.scaling_factor
        if vae.config.shift_factor is not None:
            z = z + vae.config.shift_factor
        out["denoised_tiled"] = vae.decode(z).sample
        vae.enable_slicing()
        out["sliced_tiled"] = vae.decode(latents).sample
    save_case(root, name, out)


def make_wan_case(root, name, seed, latent_shape, tile_size, **config):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = random_vae(AutoencoderKLWan, root, name, g, **config)
    latents = torch.randn(*latent_shape, generator=g)
    out = {"latents": latents, "tile_size": torch.tensor([tile_size], dtype=torch.int64)}
    stride = tile_size * 3 // 4
    with torch.no_grad():
        out["plain"] = vae.decode(latents).sample
        vae.enable_tiling(tile_size, tile_size, stride, stride)
        out["tiled"] = vae.decode(latents).sample
        vae.enable_slicing()
        out["sliced_tiled"] = vae.decode(latents).sample
    save_case(root, name, out)


def main():
    root = out_dir()
    make_case(root, "tiling_flux", seed=21, latent_hw=(19, 25),
              in_channels=3, out_channels=3,
              down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
              block_out_channels=[16, 32, 32], layers_per_block=1, latent_channels=16,
              norm_num_groups=8, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
              use_quant_conv=False, use_post_quant_conv=False)
    make_case(root, "tiling_quant", seed=22, latent_hw=(10, 7), tile_size=16,
              in_channels=3, out_channels=3,
              down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
              block_out_channels=[16, 32, 32], layers_per_block=2, latent_channels=4,
              norm_num_groups=16, sample_size=64, scaling_factor=0.18215)
    make_wan_case(root, "tiling_wan", seed=23, latent_shape=(2, 4, 2, 7, 9), tile_size=32,
                  base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                  latents_std=[1.0] * 4)
    make_wan_case(root, "tiling_wan22", seed=24, latent_shape=(1, 6, 2, 5, 6), tile_size=64,
                  base_dim=8, z_dim=6, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                  in_channels=12, out_channels=12, scale_factor_spatial=16,
                  latents_mean=[0.0] * 6, latents_std=[1.0] * 6)
    print("decoder tiling fixtures written to", root)


if __name__ == "__main__":
    main()
