#!/usr/bin/env python3
"""Reference data for the UniPC scheduler parity test (tests/parity/wan/unipc_parity_test.cc).

For each scheduler config (Wan2.1's and Wan2.2's scheduler_config.json keys, and variants that reach
every branch of the solver: orders 1-3, bh1, no lower-order final steps, disabled correctors,
sigma_min final sigma, dynamic shifting, shift_terminal) and 1, 4, 30 and 50 steps, diffusers 0.42.1
UniPCMultistepScheduler records
  (a) the timesteps and sigmas set_timesteps sets,
  (b) a whole run of step(): the sample after every step, starting from seeded noise, with model
      outputs the test can draw itself (torch.randn from a CPU generator seeded with 1000 + step,
      as flux::SeededNoise draws them), in float32 and, for the Wan config, bfloat16 model outputs
      on float32 latents (WanPipeline's mix: a bfloat16 transformer, float32 latents).
Everything goes under $DGRID_BUILD_DIR/parity/wan_unipc with a manifest.json describing the cases.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from diffusers import UniPCMultistepScheduler

# The keys Wan2.1-T2V's scheduler_config.json sets (flow_shift 3.0 for 480p; 5.0 for 720p).
WAN = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
           flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True,
           lower_order_final=True, final_sigmas_type="zero", beta_schedule="linear",
           beta_start=0.0001, beta_end=0.02, timestep_spacing="linspace")
CONFIGS = [
    ("wan_480p", WAN),
    ("wan_720p", dict(WAN, flow_shift=5.0)),
    ("order1", dict(WAN, solver_order=1)),
    # bh1 (B(h) = h) is infinite on the step to a zero sigma: diffusers samples NaN there.
    ("order3_bh1", dict(WAN, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min")),
    # Without lower-order final steps only order 2 with a sigma_min end stays finite in diffusers
    # (order 3, or a zero final sigma, divides by a zero or infinite step there).
    ("order2_full", dict(WAN, lower_order_final=False, final_sigmas_type="sigma_min")),
    ("corrector_off", dict(WAN, disable_corrector=[0, 2, 5])),
    ("sigma_min", dict(WAN, final_sigmas_type="sigma_min", flow_shift=1.0)),
    ("dynamic_exp", dict(WAN, use_dynamic_shifting=True)),
    ("dynamic_linear", dict(WAN, use_dynamic_shifting=True, time_shift_type="linear")),
    ("terminal", dict(WAN, shift_terminal=0.1)),
]
MU = 0.8
SHAPE = (1, 4, 3, 6, 8)  # [B, C, frames, H, W] latents


def seeded(shape, seed, dtype):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = os.path.join(os.environ.get("DGRID_BUILD_DIR", "build"), "parity", "wan_unipc")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    manifest = {"shape": list(SHAPE), "mu": MU, "cases": []}
    tensors = {}
    for name, config in CONFIGS:
        dtypes = ("float32", "bfloat16") if name == "wan_480p" else ("float32",)
        for steps in (1, 4, 30, 50):
            if steps == 1 and "shift_terminal" in config:
                continue  # diffusers divides by zero there; dgrid answers INVALID_ARGUMENT
            for dtype in dtypes:
                sched = UniPCMultistepScheduler(**config)
                dynamic = config.get("use_dynamic_shifting", False)
                sched.set_timesteps(steps, mu=MU if dynamic else None)
                case = f"{name}_{steps}_{dtype}"
                sample = seeded(SHAPE, 7, torch.float32)
                for i, t in enumerate(sched.timesteps):
                    out = seeded(SHAPE, 1000 + i, getattr(torch, dtype))
                    sample = sched.step(out, t, sample, return_dict=False)[0]
                    tensors[f"{case}/{i}"] = sample.contiguous()
                manifest["cases"].append(dict(
                    name=case, config_name=name, config=config, steps=steps, dtype=dtype,
                    mu=MU if dynamic else None,
                    timesteps=[int(x) for x in sched.timesteps],
                    sigmas=[float(x) for x in sched.sigmas]))
    save_file(tensors, os.path.join(root, "trajectories.safetensors"))
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {root}: {len(manifest['cases'])} cases, {len(tensors)} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
