#!/usr/bin/env python3
"""Reference data for the Wan VAE decoder parity test (tests/parity/wan/wan_vae_parity_test.cc).

Builds tiny random diffusers AutoencoderKLWans (fixed seeds; RMS-norm gammas perturbed so that
they matter), saves them with save_pretrained (single-file and sharded), and records
  decode     vae.decode(z) on random latents (odd frame counts, non-square), float32;
  denoised   WanPipeline's decode path: z / (1 / latents_std) + latents_mean, then vae.decode;
  bf16       the float32 model cast to bfloat16 (no float32 modules in this VAE);
  encode*    vae.encode(video).latent_dist's mean and log-variance for videos of 4k + 1 frames,
             and the mean normalised as the Wan image-to-video pipelines do it;
  *22        the same on Wan2.2 TI2V-5B's layout (is_residual: DupUp3D / AvgDown3D shortcuts,
             channel-keeping resamplers; patch_size 2: 12 patchified channels, 16x per side).
Everything goes under $DGRID_BUILD_DIR/parity/wan_vae with a manifest.json.
"""
import copy
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKLWan
from wan_models import perturb

MODELS = [
    dict(name="vae_a", sharded=False, config=dict(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.05],
        latents_std=[1.5, 0.8, 2.0, 1.1])),
    dict(name="vae_b", sharded=True, config=dict(
        base_dim=8, decoder_base_dim=12, z_dim=3, dim_mult=[1, 2, 2], num_res_blocks=2,
        temperal_downsample=[True, False], latents_mean=[0.0, 0.5, -0.5],
        latents_std=[1.0, 2.0, 0.5])),
    # Wan2.2 TI2V-5B's layout, tiny: residual blocks, patch 2 (3 x 2 x 2 = 12 channels in and out).
    dict(name="vae_22", sharded=False, config=dict(
        base_dim=8, z_dim=6, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
        out_channels=12, scale_factor_spatial=16, latents_mean=[0.1, -0.2, 0.3, 0.05, 0.0, 0.2],
        latents_std=[1.5, 0.8, 2.0, 1.1, 0.9, 1.3])),
]
# (model, case, dtype, latent shape [B, z, F, h, w], through the pipeline's scaling)
CASES = [
    ("vae_a", "decode", "float32", (1, 4, 3, 4, 6), False),
    ("vae_a", "denoised", "float32", (1, 4, 2, 5, 3), True),
    ("vae_a", "bf16", "bfloat16", (1, 4, 2, 4, 4), False),
    ("vae_b", "decode_b", "float32", (2, 3, 3, 3, 5), False),
    ("vae_22", "decode22", "float32", (1, 6, 3, 3, 5), False),
    ("vae_22", "denoised22", "float32", (1, 6, 2, 2, 2), True),
    ("vae_22", "bf16_22", "bfloat16", (1, 6, 2, 2, 3), False),
]
# (model, case, dtype, video shape [B, 3, F, H, W])
ENCODE_CASES = [
    ("vae_a", "encode", "float32", (1, 3, 9, 32, 48)),
    ("vae_a", "encode_1", "float32", (1, 3, 1, 16, 24)),
    ("vae_a", "encode_bf16", "bfloat16", (1, 3, 5, 16, 16)),
    ("vae_b", "encode_b", "float32", (2, 3, 5, 12, 20)),
    ("vae_22", "encode22", "float32", (1, 3, 9, 32, 48)),
    ("vae_22", "encode22_1", "float32", (1, 3, 1, 16, 32)),
]


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = os.path.join(os.environ.get("DGRID_BUILD_DIR", "build"), "parity", "wan_vae")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    models = {}
    for spec in MODELS:
        torch.manual_seed(0)
        vae = perturb(AutoencoderKLWan(**spec["config"]).eval(), 1)
        folder = os.path.join(root, spec["name"])
        vae.save_pretrained(folder, max_shard_size="20KB" if spec["sharded"] else "10GB")
        assert os.path.exists(os.path.join(
            folder, "diffusion_pytorch_model.safetensors.index.json")) == spec["sharded"]
        models[spec["name"]] = vae
    manifest = {"cases": []}
    for i, (model, case, dtype, shape, denoised) in enumerate(CASES):
        torch_dtype = getattr(torch, dtype)
        vae = copy.deepcopy(models[model]).to(torch_dtype)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            latents = z.to(torch_dtype)
            if denoised:  # WanPipeline.__call__, output_type != "latent"
                mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(
                    latents.device, latents.dtype)
                std = 1.0 / torch.tensor(vae.config.latents_std).view(
                    1, vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
                latents = latents / std + mean
            video = vae.decode(latents, return_dict=False)[0]
        save_file({"latents": z.to(torch_dtype).contiguous(), "video": video.contiguous()},
                  os.path.join(root, case + ".safetensors"))
        manifest["cases"].append(dict(name=case, model=model, dtype=dtype, denoised=denoised))
        print(f"wan vae case {case}: video {list(video.shape)}", flush=True)
    for i, (model, case, dtype, shape) in enumerate(ENCODE_CASES):
        torch_dtype = getattr(torch, dtype)
        vae = copy.deepcopy(models[model]).to(torch_dtype)
        video = torch.rand(shape, generator=torch.Generator().manual_seed(50 + i)) * 2 - 1
        with torch.no_grad():
            dist = vae.encode(video.to(torch_dtype)).latent_dist
            mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(
                dist.mean.device, dist.mean.dtype)
            std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
                dist.mean.device, dist.mean.dtype)
            normalised = (dist.mean - mean) * std
        save_file({"video": video.to(torch_dtype).contiguous(), "mean": dist.mean.contiguous(),
                   "logvar": dist.logvar.contiguous(), "normalised": normalised.contiguous()},
                  os.path.join(root, case + ".safetensors"))
        manifest["cases"].append(dict(name=case, model=model, dtype=dtype, encode=True))
        print(f"wan vae case {case}: latents {list(dist.mean.shape)}", flush=True)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
