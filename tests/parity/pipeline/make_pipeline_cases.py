#!/usr/bin/env python3
"""Reference images for dgrid's single-process pipeline: diffusers' FluxPipeline on the tiny random
pipeline of tools/make_tiny_pipeline.py, for several prompts, sizes and options.

Writes ${DGRID_BUILD_DIR}/parity/pipeline/{tiny-flux/, cases.json, <case>.rgb, <case>.png}:
<case>.rgb is the output_type="np" image as uint8 (VaeImageProcessor's (x * 255).round()),
<case>.png the output_type="pil" image saved as PNG.
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_tiny_pipeline  # noqa: E402

LONG = " ".join(["a watercolor painting of a lighthouse on a rocky coast at dusk"] * 12)
PROMPTS = [("red", "a red circle on a blue background"),
           ("unicode", "Ein Hund im Schnee, Ölgemälde 🐕 犬"),
           ("long", LONG)]  # past CLIP's 77 tokens and the 64-token T5 budget: truncated
SIZES = [(64, 64), (96, 48)]
CASES = [{"name": f"{tag}_{w}x{h}", "prompt": prompt, "width": w, "height": h}
         for tag, prompt in PROMPTS for w, h in SIZES] + [
    {"name": "cfg_64x64", "prompt": "a green triangle", "negative_prompt": "blurry, dark",
     "true_cfg_scale": 2.5, "width": 64, "height": 64},
    # negative_prompt="" is a negative prompt: FluxPipeline runs true CFG against "".
    {"name": "cfg_empty_negative_64x64", "prompt": "a green triangle", "negative_prompt": "",
     "negative_given": True, "true_cfg_scale": 2.5, "width": 64, "height": 64},
    {"name": "guidance_48x80", "prompt": "two yellow stars", "width": 48, "height": 80,
     "guidance_scale": 7.0, "steps": 3},
]


def main():
    build_dir = os.environ.get("DGRID_BUILD_DIR") or sys.argv[1]
    out = os.path.join(os.path.abspath(build_dir), "parity", "pipeline")
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "tiny-flux")
    if not os.path.exists(os.path.join(model, "model_index.json")):
        make_tiny_pipeline.build(model, seed=0)
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    manifest = []
    for i, case in enumerate(CASES):
        case = dict(case)
        case.setdefault("negative_prompt", "")
        case.setdefault("true_cfg_scale", 1.0)
        case.setdefault("guidance_scale", 3.5)
        case.setdefault("steps", 4)
        case["seed"] = 1000 + i
        case["max_sequence_length"] = 64
        kwargs = dict(prompt=case["prompt"], width=case["width"], height=case["height"],
                      num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                      true_cfg_scale=case["true_cfg_scale"],
                      max_sequence_length=case["max_sequence_length"])
        if case["negative_prompt"] or case.get("negative_given"):
            kwargs["negative_prompt"] = case["negative_prompt"]
        gen = lambda: torch.Generator("cpu").manual_seed(case["seed"])  # noqa: E731
        image = pipe(**kwargs, generator=gen(), output_type="np").images[0]
        rgb = (image * 255).round().astype("uint8")
        rgb.tofile(os.path.join(out, case["name"] + ".rgb"))
        pil = pipe(**kwargs, generator=gen(), output_type="pil").images[0]
        pil.save(os.path.join(out, case["name"] + ".png"))
        assert np.array_equal(np.asarray(pil), rgb), "np and pil outputs disagree"
        manifest.append(case)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"model": model, "cases": manifest}, f, indent=1)
    print(f"{len(manifest)} pipeline cases -> {out}")


if __name__ == "__main__":
    main()
