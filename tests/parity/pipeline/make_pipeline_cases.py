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
    components = component_cases(model, out)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"model": model, "cases": manifest, "component_cases": components}, f, indent=1)
    print(f"{len(manifest)} pipeline cases, {len(components)} component cases -> {out}")


# Text encoders or the VAE in another precision than the transformer (dgrid's
# --text-encoder-precision / --vae-precision). FluxPipeline runs every component in one dtype, so
# the reference takes the steps a mixed pipeline must take by hand, as dgrid takes them: the text
# embeddings cast to the transformer's dtype before the sampler (which draws the noise in that
# dtype), and the final latents cast to the VAE's dtype before its scaling and decode.
COMPONENT_CASES = [
    {"name": "text_encoders_bf16_64x64", "prompt": "a red circle on a blue background",
     "text_encoder_precision": "bfloat16"},
    {"name": "vae_bf16_64x64", "prompt": "a red circle on a blue background",
     "vae_precision": "bfloat16"},
]


def component_cases(model, out):
    from diffusers import FluxPipeline
    manifest = []
    for i, case in enumerate(COMPONENT_CASES):
        # A fresh float32 pipeline per case: casting a component to bfloat16 and back would leave
        # its weights rounded.
        pipe = FluxPipeline.from_pretrained(model, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        case = dict(case, width=64, height=64, steps=4, guidance_scale=3.5, true_cfg_scale=1.0,
                    negative_prompt="", max_sequence_length=64, seed=2000 + i)
        te_dtype = torch.bfloat16 if case.get("text_encoder_precision") else torch.float32
        vae_dtype = torch.bfloat16 if case.get("vae_precision") else torch.float32
        pipe.text_encoder.to(te_dtype)
        pipe.text_encoder_2.to(te_dtype)
        pipe.vae.to(vae_dtype)
        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(prompt=case["prompt"], prompt_2=None,
                                                   max_sequence_length=case["max_sequence_length"])
            latents = pipe(prompt_embeds=embeds.to(torch.float32),
                           pooled_prompt_embeds=pooled.to(torch.float32),
                           width=case["width"], height=case["height"],
                           num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                           generator=torch.Generator("cpu").manual_seed(case["seed"]),
                           output_type="latent").images
            latents = pipe._unpack_latents(latents, case["height"], case["width"],
                                           pipe.vae_scale_factor).to(vae_dtype)
            latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            image = pipe.vae.decode(latents, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type="np")[0]
        rgb = (image * 255).round().astype("uint8")
        rgb.tofile(os.path.join(out, case["name"] + ".rgb"))
        manifest.append(case)
    return manifest


if __name__ == "__main__":
    main()
