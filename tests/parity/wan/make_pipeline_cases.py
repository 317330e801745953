#!/usr/bin/env python3
"""Reference data for the Wan sampling-loop parity test (tests/parity/wan/wan_pipeline_parity_test.cc).

Runs diffusers 0.42.1 WanPipeline (output_type="latent", from prompt_embeds / negative_prompt_embeds,
no VAE or text encoder: the pipeline then uses the Wan VAE's factors 4 and 8) on tiny random
WanTransformer3DModels with Wan's UniPC scheduler config, a seeded CPU generator, and records the
final latents for
  t2v_cfg        Wan2.1 T2V: classifier-free guidance 5.0 against a negative prompt, 4 steps,
                 9 frames, a non-square size;
  t2v_nocfg_1    guidance 1.0 (one pass a step), 1 step, 1 frame;
  a14b           Wan2.2 A14B: transformer_2 below boundary_ratio 0.875 x 1000, guidance 4.0 / 3.0,
                 6 steps;
  ti2v           Wan2.2 TI2V-5B's expand_timesteps (a timestep per token), 3 steps, flow_shift 5;
  bf16           t2v_cfg with the transformer in bfloat16 (diffusers' float32 modules kept);
  euler_*        the same loop with FlowMatchEulerDiscreteScheduler (float timesteps, the sample
                 cast to the model's dtype after each step): CFG, A14B, TI2V and bfloat16.
It also records FlowMatchEulerDiscreteScheduler's schedule as WanPipeline sets it
(set_timesteps(num_inference_steps), no sigmas) for 1, 4, 30 and 50 steps and several shifts.
Everything goes under $DGRID_BUILD_DIR/parity/wan_pipeline with a manifest.json.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from diffusers import (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline,
                       WanTransformer3DModel)
from wan_models import as_loaded, perturb

CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
              out_channels=4, text_dim=24, freq_dim=32, ffn_dim=40, num_layers=2,
              cross_attn_norm=True, eps=1e-6, rope_max_seq_len=32)
SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                 flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True,
                 lower_order_final=True, final_sigmas_type="zero")
CASES = [
    dict(name="t2v_cfg", steps=4, frames=9, height=48, width=80, guidance=5.0, seed=11),
    dict(name="t2v_nocfg_1", steps=1, frames=1, height=32, width=32, guidance=1.0, seed=12),
    dict(name="a14b", steps=6, frames=5, height=32, width=48, guidance=4.0, guidance_2=3.0,
         boundary_ratio=0.875, seed=13),
    dict(name="ti2v", steps=3, frames=5, height=48, width=32, guidance=5.0, expand=True,
         flow_shift=5.0, seed=14),
    dict(name="bf16", steps=4, frames=9, height=48, width=80, guidance=5.0, seed=11,
         dtype="bfloat16"),
    dict(name="euler_cfg", steps=4, frames=9, height=48, width=80, guidance=5.0, seed=21,
         euler=True),
    dict(name="euler_a14b", steps=6, frames=5, height=32, width=48, guidance=4.0, guidance_2=3.0,
         boundary_ratio=0.875, seed=23, euler=True),
    dict(name="euler_ti2v", steps=3, frames=5, height=48, width=32, guidance=5.0, expand=True,
         flow_shift=5.0, seed=24, euler=True),
    dict(name="euler_bf16", steps=4, frames=9, height=48, width=80, guidance=5.0, seed=21,
         dtype="bfloat16", euler=True),
]
# FlowMatchEulerDiscreteScheduler configs whose WanPipeline schedules are recorded.
EULER_SCHEDULES = [dict(num_train_timesteps=1000, shift=s) for s in (1.0, 3.0, 5.0, 12.0)] + [
    dict(num_train_timesteps=1000, shift=5.0, shift_terminal=0.1)]


def make_transformer(seed, folder):
    torch.manual_seed(seed)
    model = perturb(WanTransformer3DModel(**CONFIG).eval(), seed + 1)
    model.save_pretrained(folder)
    return model


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = os.path.join(os.environ.get("DGRID_BUILD_DIR", "build"), "parity", "wan_pipeline")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    models = {"transformer": make_transformer(0, os.path.join(root, "transformer")),
              "transformer_2": make_transformer(5, os.path.join(root, "transformer_2"))}
    g = torch.Generator().manual_seed(99)
    embeds = {"prompt_embeds": torch.randn(1, 7, CONFIG["text_dim"], generator=g),
              "negative_prompt_embeds": torch.randn(1, 5, CONFIG["text_dim"], generator=g)}
    save_file(embeds, os.path.join(root, "embeds.safetensors"))
    manifest = {"cases": []}
    results = {}
    for case in CASES:
        dtype = getattr(torch, case.get("dtype", "float32"))
        two = "boundary_ratio" in case
        if case.get("euler"):
            scheduler_config = dict(num_train_timesteps=1000, shift=case.get("flow_shift", 3.0))
            scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_config)
        else:
            scheduler_config = dict(SCHEDULER, flow_shift=case.get("flow_shift", 3.0))
            scheduler = UniPCMultistepScheduler(**scheduler_config)
        pipe = WanPipeline(
            tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
            transformer=as_loaded(models["transformer"], dtype),
            transformer_2=as_loaded(models["transformer_2"], dtype) if two else None,
            boundary_ratio=case.get("boundary_ratio"), expand_timesteps=case.get("expand", False))
        with torch.no_grad():
            latents = pipe(prompt_embeds=embeds["prompt_embeds"],
                           negative_prompt_embeds=embeds["negative_prompt_embeds"],
                           height=case["height"], width=case["width"], num_frames=case["frames"],
                           num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                           guidance_scale_2=case.get("guidance_2"),
                           generator=torch.Generator("cpu").manual_seed(case["seed"]),
                           output_type="latent", return_dict=False)[0]
        results[case["name"]] = latents.contiguous()
        manifest["cases"].append(
            dict(case, scheduler=dict(scheduler_config, _class_name=type(scheduler).__name__)))
        print(f"wan pipeline case {case['name']}: latents {list(latents.shape)} {latents.dtype}",
              flush=True)
    save_file(results, os.path.join(root, "latents.safetensors"))
    manifest["euler_schedules"] = []
    for config in EULER_SCHEDULES:
        for steps in (1, 4, 30, 50):
            if config.get("shift_terminal") and steps == 1:
                continue  # diffusers divides by zero there (dgrid refuses it)
            scheduler = FlowMatchEulerDiscreteScheduler(**config)
            scheduler.set_timesteps(steps)
            manifest["euler_schedules"].append(dict(
                config=dict(config, _class_name="FlowMatchEulerDiscreteScheduler"), steps=steps,
                timesteps=scheduler.timesteps.tolist(), sigmas=scheduler.sigmas.tolist()))
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
