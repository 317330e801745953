#!/usr/bin/env python3
"""Reference data for the FLUX.1 denoiser parity test (tests/parity/flux/flux_parity_test.cc).

Builds tiny random diffusers FluxTransformer2DModels (fixed torch.manual_seed), saves them with
save_pretrained (single-file and sharded safetensors, float32 and bfloat16, with and without
guidance_embeds), and records diffusers 0.42.1 outputs for
  (a) one transformer forward on random inputs,
  (b) a whole sampling loop run by diffusers' own FluxPipeline (output_type="latent", no VAE or
      text encoders: the loop starts from prompt_embeds), incl. true CFG for one case,
  (c) FlowMatchEulerDiscreteScheduler timesteps/sigmas as FluxPipeline sets them,
  (d) torch.randn from a seeded CPU generator (the sampler's initial noise).
Everything goes under $DGRID_BUILD_DIR/parity/flux with a manifest.json describing the cases.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

# FLUX.1-dev and FLUX.1-schnell scheduler configs (the keys their scheduler_config.json set).
DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)

# Tiny transformer shapes: inner dim = heads * head_dim = 32.
MODELS = [
    dict(name="fp32_guidance_sharded", dtype="float32", sharded=True, scheduler=DEV_SCHEDULER,
         config=dict(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
                     guidance_embeds=True, axes_dims_rope=[4, 6, 6]),
         forward=dict(batch=1, rows=4, cols=6, text_len=7),
         loop=dict(height=64, width=96, steps=4, seed=1234, guidance_scale=3.5)),
    dict(name="fp32_plain_single", dtype="float32", sharded=False, scheduler=SCHNELL_SCHEDULER,
         config=dict(in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=8,
                     num_attention_heads=4, joint_attention_dim=16, pooled_projection_dim=12,
                     guidance_embeds=False, axes_dims_rope=[2, 2, 4]),
         forward=dict(batch=2, rows=3, cols=5, text_len=5),
         loop=dict(height=80, width=48, steps=4, seed=7, guidance_scale=0.0)),
    dict(name="fp32_guidance_truecfg", dtype="float32", sharded=False, scheduler=DEV_SCHEDULER,
         config=dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
                     guidance_embeds=True, axes_dims_rope=[4, 6, 6]),
         forward=dict(batch=1, rows=5, cols=5, text_len=6),
         loop=dict(height=64, width=64, steps=4, seed=99, guidance_scale=2.0, true_cfg_scale=4.0)),
    dict(name="bf16_guidance_single", dtype="bfloat16", sharded=False, scheduler=DEV_SCHEDULER,
         config=dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
                     guidance_embeds=True, axes_dims_rope=[4, 6, 6]),
         forward=dict(batch=1, rows=4, cols=6, text_len=7),
         loop=dict(height=96, width=64, steps=4, seed=42, guidance_scale=3.5)),
    dict(name="bf16_plain_sharded", dtype="bfloat16", sharded=True, scheduler=SCHNELL_SCHEDULER,
         config=dict(in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
                     guidance_embeds=False, axes_dims_rope=[4, 6, 6]),
         forward=dict(batch=1, rows=2, cols=3, text_len=4),
         loop=dict(height=48, width=80, steps=4, seed=3, guidance_scale=0.0)),
]

SCHEDULER_CASES = [("dev", DEV_SCHEDULER), ("schnell", SCHNELL_SCHEDULER),
                   ("dev_linear_terminal", dict(DEV_SCHEDULER, time_shift_type="linear",
                                                shift_terminal=0.1))]


def make_model(spec):
    torch.manual_seed(len(spec["name"]) * 1000 + 17)
    model = FluxTransformer2DModel(patch_size=1, **spec["config"])
    with torch.no_grad():
        # Default init leaves every RMSNorm weight at 1; perturb them so that loading them matters.
        for name, p in model.named_parameters():
            if "norm_" in name and p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model.to(getattr(torch, spec["dtype"])).eval()


def forward_case(model, spec, out_dir):
    cfg, f = spec["config"], spec["forward"]
    dtype = getattr(torch, spec["dtype"])
    g = torch.Generator("cpu").manual_seed(2024)
    b, n, s = f["batch"], f["rows"] * f["cols"], f["text_len"]
    inputs = {
        "hidden_states": torch.randn(b, n, cfg["in_channels"], generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(b, s, cfg["joint_attention_dim"], generator=g).to(dtype),
        "pooled_projections": torch.randn(b, cfg["pooled_projection_dim"], generator=g).to(dtype),
        "timestep": torch.rand(b, generator=g).to(dtype),
        "img_ids": FluxPipeline._prepare_latent_image_ids(b, f["rows"], f["cols"], "cpu", dtype),
        # Non-zero text ids so that the order of the joint sequence matters.
        "txt_ids": torch.randint(0, 4, (s, 3), generator=g).to(dtype),
    }
    if cfg["guidance_embeds"]:
        inputs["guidance"] = (1.0 + 4.0 * torch.rand(b, generator=g)).to(dtype)
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "output": out.contiguous()},
              os.path.join(out_dir, "forward.safetensors"))


def loop_case(model, spec, out_dir):
    cfg, lp = spec["config"], spec["loop"]
    dtype = getattr(torch, spec["dtype"])
    g = torch.Generator("cpu").manual_seed(77)
    tensors = {
        "prompt_embeds": torch.randn(1, spec["forward"]["text_len"], cfg["joint_attention_dim"],
                                     generator=g).to(dtype),
        "pooled_prompt_embeds": torch.randn(1, cfg["pooled_projection_dim"], generator=g).to(dtype),
    }
    kwargs = {}
    if "true_cfg_scale" in lp:
        tensors["negative_prompt_embeds"] = torch.randn(
            1, spec["forward"]["text_len"], cfg["joint_attention_dim"], generator=g).to(dtype)
        tensors["negative_pooled_prompt_embeds"] = torch.randn(
            1, cfg["pooled_projection_dim"], generator=g).to(dtype)
        kwargs["true_cfg_scale"] = lp["true_cfg_scale"]
    scheduler = FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    scheduler.save_pretrained(os.path.join(out_dir, "scheduler"))
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    with torch.no_grad():
        packed = pipe(**tensors, **kwargs, height=lp["height"], width=lp["width"],
                      num_inference_steps=lp["steps"], guidance_scale=lp["guidance_scale"],
                      generator=torch.Generator("cpu").manual_seed(lp["seed"]),
                      output_type="latent", return_dict=False)[0]
    latents = FluxPipeline._unpack_latents(packed, lp["height"], lp["width"], pipe.vae_scale_factor)
    tensors["latents"] = latents.contiguous()
    save_file(tensors, os.path.join(out_dir, "loop.safetensors"))


def scheduler_cases():
    cases = []
    for name, config in SCHEDULER_CASES:
        for steps in (1, 4, 28, 50):
            if steps == 1 and "shift_terminal" in config:
                continue  # diffusers divides 0 by 0 there (one sigma, already at 1 after shifting)
            for image_seq_len in (256, 1024, 4096, 6):
                sched = FlowMatchEulerDiscreteScheduler(**config)
                sigmas = np.linspace(1.0, 1 / steps, steps)
                mu = calculate_shift(image_seq_len, sched.config.get("base_image_seq_len", 256),
                                     sched.config.get("max_image_seq_len", 4096),
                                     sched.config.get("base_shift", 0.5),
                                     sched.config.get("max_shift", 1.15))
                sched.set_timesteps(sigmas=sigmas, mu=mu)
                cases.append(dict(config_name=name, config=config, steps=steps,
                                  image_seq_len=image_seq_len, mu=mu,
                                  timesteps=[float(x) for x in sched.timesteps],
                                  sigmas=[float(x) for x in sched.sigmas]))
    return cases


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = os.path.join(os.environ.get("DGRID_BUILD_DIR", "build"), "parity", "flux")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    manifest = {"models": [], "scheduler_cases": scheduler_cases(), "noise": []}

    noise = {}
    for i, (shape, seed, dtype) in enumerate([((1, 16, 128, 128), 0, "float32"),
                                              ((1, 4, 8, 12), 1234, "float32"),
                                              ((1, 16, 6, 10), 5, "bfloat16"),
                                              ((1, 4, 3, 2), 9, "float32")]):
        name = f"noise_{i}"
        noise[name] = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed),
                                  dtype=getattr(torch, dtype))
        manifest["noise"].append(dict(name=name, shape=list(shape), seed=seed, dtype=dtype))
    save_file(noise, os.path.join(root, "noise.safetensors"))

    for spec in MODELS:
        out_dir = os.path.join(root, spec["name"])
        model = make_model(spec)
        model.save_pretrained(os.path.join(out_dir, "transformer"),
                              max_shard_size="40KB" if spec["sharded"] else "10GB")
        files = os.listdir(os.path.join(out_dir, "transformer"))
        assert any(f.endswith(".index.json") for f in files) == spec["sharded"], files
        forward_case(model, spec, out_dir)
        loop_case(model, spec, out_dir)
        manifest["models"].append({k: spec[k] for k in ("name", "dtype", "sharded", "config",
                                                        "forward", "loop")})
        print(f"flux parity case {spec['name']}: {len(files)} files", flush=True)

    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
