#!/usr/bin/env python3
"""Reference data for decoder_test: tiny random diffusers AutoencoderKL models and image postprocessing.

Writes under $DGRID_BUILD_DIR/parity/decoder/:
  <case>/config.json + diffusion_pytorch_model.safetensors   (save_pretrained)
  <case>.ref.safetensors   latents -> decoded, denoiser latents -> FluxPipeline-style decode,
                           images -> encoder mean / logvar (float32 CPU, reloaded model)
  postprocess.ref.safetensors   VAE-like outputs (float32 and bfloat16) and the uint8 pixels of
                           VaeImageProcessor.postprocess(output_type="pil")

Cases: vae_flux (FLUX-like: 16 latent channels, shift_factor, no quant convs) and vae_quant (quant and
post-quant convs, no shift_factor, three levels, two resnets per block).
"""
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file


def out_dir():
    build = os.environ.get("DGRID_BUILD_DIR")
    if not build:
        sys.exit("DGRID_BUILD_DIR is not set (run through ctest)")
    path = os.path.join(build, "parity", "decoder")
    os.makedirs(path, exist_ok=True)
    return path


def random_vae(cls, root, name, g, **config):
    """A random `cls` (AutoencoderKL, AutoencoderKLWan) saved to root/name and loaded back; its
    norm scales, shifts and biases (which start at 1 and 0) perturbed with `g` so that they matter."""
    vae = cls(**config).eval()
    with torch.no_grad():
        for pname, p in vae.named_parameters():
            if p.dim() == 1 or pname.endswith("gamma"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    folder = os.path.join(root, name)
    vae.save_pretrained(folder)
    return cls.from_pretrained(folder).eval()


def make_vae(root, name, seed, image_size, **config):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = random_vae(AutoencoderKL, root, name, g, **config)

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = image_size // scale
    c = vae.config.latent_channels
    latents = torch.randn(2, c, latent, latent + scale, generator=g)  # non-square on purpose
    denoised = torch.randn(2, c, latent, latent, generator=g)
    images = torch.rand(2, vae.config.in_channels, image_size, image_size, generator=g) * 2 - 1
    with torch.no_grad():
        decoded = vae.decode(latents, return_dict=False)[0]
        # FluxPipeline.__call__: latents / scaling_factor + shift_factor, then decode.
        z = denoised / vae.config.scaling_factor
        if vae.config.shift_factor is not None:
            z = z + vae.config.shift_factor
        decoded_denoised = vae.decode(z, return_dict=False)[0]
        dist = vae.encode(images).latent_dist
    save_file({"latents": latents, "decoded": decoded.contiguous(), "denoised": denoised,
               "decoded_denoised": decoded_denoised.contiguous(), "images": images,
               "mean": dist.mean.contiguous(), "logvar": dist.logvar.contiguous()},
              os.path.join(root, name + ".ref.safetensors"))


def make_postprocess(root):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 9, 13, generator=g) * 0.7
    # Values on the clamp edges and on exact half-way points of the 255 grid (x = 2 * k / 510 - 1 is
    # (k / 2) / 255 after denormalisation, so odd k lands half-way between two codes).
    k = torch.arange(0, 511, dtype=torch.float32)
    edge = (k / 255.0 - 1.0)[: 3 * 9 * 13].reshape(3, 9, 13)
    x[1] = edge
    x[1, 0, 0, :4] = torch.tensor([-1.5, 1.5, -1.0, 1.0])
    processor = VaeImageProcessor(vae_scale_factor=8)
    tensors = {}
    for tag, t in (("f32", x), ("bf16", x.to(torch.bfloat16))):
        pils = processor.postprocess(t, output_type="pil")
        tensors["x_" + tag] = t.contiguous()
        tensors["u8_" + tag] = torch.from_numpy(np.stack([np.asarray(p) for p in pils]))
    save_file(tensors, os.path.join(root, "postprocess.ref.safetensors"))


def main():
    root = out_dir()
    make_vae(root, "vae_flux", seed=11, image_size=16,
             in_channels=3, out_channels=3,
             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
             block_out_channels=[32, 64], layers_per_block=1, latent_channels=16,
             norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False)
    make_vae(root, "vae_quant", seed=12, image_size=16,
             in_channels=3, out_channels=3,
             down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
             block_out_channels=[16, 32, 32], layers_per_block=2, latent_channels=4,
             norm_num_groups=16, scaling_factor=0.18215)
    make_postprocess(root)
    print("decoder fixtures written to", root)


if __name__ == "__main__":
    main()
