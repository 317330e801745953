#!/usr/bin/env python3
"""Reference data for the Wan transformer parity test (tests/parity/wan/wan_transformer_parity_test.cc).

Builds tiny random diffusers WanTransformer3DModels (fixed seeds; norm weights and biases perturbed
so that they matter), saves them with save_pretrained (single-file and sharded safetensors), and
records diffusers 0.42.1 forward outputs on random latents [B, C, frames, H, W] (non-square, odd
frame counts) and text embeddings:
  fp32 / fp32_sharded  float32 model and inputs, one timestep per sample (int64, as WanPipeline
                       passes scheduler.timesteps);
  bf16                 the fp32 model in bfloat16 as from_pretrained(torch_dtype=bfloat16) loads
                       it (the time embedder, the scale-shift tables and block norms stay
                       float32, diffusers' _keep_in_fp32_modules);
  per_token            a [B, tokens] timestep (Wan2.2 TI2V's expand_timesteps).
Everything goes under $DGRID_BUILD_DIR/parity/wan_transformer with a manifest.json.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from diffusers import WanTransformer3DModel
from wan_models import as_loaded, perturb

MODELS = [
    dict(name="fp32", sharded=False, config=dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=24, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
        eps=1e-6, rope_max_seq_len=32)),
    dict(name="fp32_sharded", sharded=True, config=dict(
        patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=16, in_channels=8,
        out_channels=6, text_dim=20, freq_dim=16, ffn_dim=36, num_layers=3, cross_attn_norm=False,
        eps=1e-6, rope_max_seq_len=16)),
]
# (model, case name, dtype, batch, latent frames, height, width, text length, per-token timestep)
CASES = [
    ("fp32", "fp32", "float32", 2, 3, 6, 10, 7, False),
    ("fp32", "bf16", "bfloat16", 1, 3, 6, 10, 7, False),
    ("fp32", "per_token", "float32", 2, 2, 4, 6, 5, True),
    ("fp32_sharded", "fp32_sharded", "float32", 1, 5, 8, 4, 9, False),
]


def make_model(spec, folder):
    torch.manual_seed(0)
    model = perturb(WanTransformer3DModel(**spec["config"]).eval(), 1)
    model.save_pretrained(folder, max_shard_size="20KB" if spec["sharded"] else "10GB")
    files = os.listdir(folder)
    assert any(f.endswith(".index.json") for f in files) == spec["sharded"], files
    return model


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = os.path.join(os.environ.get("DGRID_BUILD_DIR", "build"), "parity", "wan_transformer")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    manifest = {"cases": []}
    # The saved models themselves are run (from_pretrained of a Wan model needs accelerate, which
    # the test environment does not install; save_pretrained wrote exactly these parameters).
    models = {spec["name"]: make_model(spec, os.path.join(root, spec["name"])) for spec in MODELS}
    for i, (model_name, case, dtype, batch, frames, height, width, text_len,
            per_token) in enumerate(CASES):
        torch_dtype = getattr(torch, dtype)
        model = as_loaded(models[model_name], torch_dtype)
        cfg = model.config
        g = torch.Generator().manual_seed(100 + i)
        latents = torch.randn(batch, cfg.in_channels, frames, height, width, generator=g)
        text = torch.randn(batch, text_len, cfg.text_dim, generator=g)
        tokens = frames // cfg.patch_size[0] * (height // cfg.patch_size[1]) * (
            width // cfg.patch_size[2])
        shape = (batch, tokens) if per_token else (batch,)
        timestep = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        with torch.no_grad():
            out = model(hidden_states=latents.to(torch_dtype), timestep=timestep,
                        encoder_hidden_states=text.to(torch_dtype), return_dict=False)[0]
        save_file({"latents": latents.to(torch_dtype).contiguous(),
                   "text": text.to(torch_dtype).contiguous(), "timestep": timestep,
                   "output": out.contiguous()}, os.path.join(root, case + ".safetensors"))
        manifest["cases"].append(dict(name=case, model=model_name, dtype=dtype))
        print(f"wan transformer case {case}: output {list(out.shape)}", flush=True)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
