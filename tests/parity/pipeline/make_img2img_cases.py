#!/usr/bin/env python3
"""Reference outputs for dgrid's image-to-image: diffusers' FluxImg2ImgPipeline on the tiny random
pipeline of tools/make_tiny_pipeline.py and on the embedded default model (models/dgrid-shapes),
for several input images (PNG of the target size, PNG and JPEG of other sizes, gray and RGBA PNGs
turned into RGB as PIL's convert("RGB") does), strengths (1.0 down to one step) and seeds.

Writes ${DGRID_BUILD_DIR}/parity/img2img/:
  tiny-flux/                the tiny pipeline
  <input>.png / .jpg        the input images
  cases.json                the cases (model, input, prompt, size, steps, strength, seed, ...)
  <case>.rgb                the output_type="np" image as uint8 ((x * 255).round())
  <case>.pre.f32            VaeImageProcessor.preprocess(input, height, width): float32 [1, 3, H, W]
  <case>.latents.f32        _encode_vae_image(preprocessed, generator): the image latents, float32
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_tiny_pipeline  # noqa: E402

DEFAULT_MODEL = os.path.join(ROOT, "models", "dgrid-shapes")


def picture(width, height, seed):
    """A smooth picture with edges (gradients, a disc, a bar), plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = np.full_like(x, 90.0)
    disc = (x - width * 0.4) ** 2 + (y - height * 0.55) ** 2 < (min(width, height) * 0.25) ** 2
    r[disc], g[disc], b[disc] = 250, 220, 30
    bar = (x > width * 0.7) & (x < width * 0.8)
    r[bar], g[bar], b[bar] = 20, 30, 200
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def write_inputs(out):
    """name -> (file name, PIL image as diffusers gets it: RGB)."""
    inputs = {}
    same = Image.fromarray(picture(64, 64, 1))
    same.save(os.path.join(out, "rgb64.png"))
    inputs["rgb64"] = "rgb64.png"
    Image.fromarray(picture(80, 56, 2)).save(os.path.join(out, "rgb80x56.png"))
    inputs["rgb80x56"] = "rgb80x56.png"
    Image.fromarray(picture(40, 72, 3)).save(os.path.join(out, "rgb40x72.jpg"), quality=90)
    inputs["jpeg40x72"] = "rgb40x72.jpg"
    Image.fromarray(picture(64, 64, 4)).convert("L").save(os.path.join(out, "gray64.png"))
    inputs["gray64"] = "gray64.png"
    rgba = np.concatenate([picture(72, 64, 5), np.full((64, 72, 1), 128, np.uint8)], -1)
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "rgba72x64.png"))
    inputs["rgba72x64"] = "rgba72x64.png"
    return inputs


TINY_CASES = [
    # name, input, width, height, steps, strength, extra
    ("same_size_s06", "rgb64", 64, 64, 4, 0.6, {}),
    ("full_strength", "rgb64", 64, 64, 4, 1.0, {}),
    ("one_step", "rgb64", 64, 64, 4, 0.25, {}),  # 4 x 0.25 = 1 step
    ("small_strength", "rgb64", 64, 64, 10, 0.12, {}),  # 1 step of 10
    ("resized_down", "rgb80x56", 64, 48, 4, 0.7, {}),
    ("resized_up", "rgb80x56", 96, 80, 3, 0.5, {}),
    ("jpeg", "jpeg40x72", 48, 64, 4, 0.8, {}),
    ("gray", "gray64", 64, 64, 4, 0.6, {}),
    ("rgba", "rgba72x64", 64, 64, 4, 0.6, {}),
    ("true_cfg", "rgb64", 64, 64, 4, 0.75,
     {"negative_prompt": "blurry", "true_cfg_scale": 2.0}),
]

DEFAULT_CASES = [
    ("default_s06", "rgb64", 64, 64, 8, 0.6, {}),
    ("default_s10", "rgb64", 64, 64, 8, 1.0, {}),
    ("default_s02", "rgb80x56", 64, 64, 8, 0.2, {}),
]


def run_cases(pipe, model, cases, inputs, out, seed0, max_sequence_length, prompt):
    manifest = []
    for i, (name, input_name, width, height, steps, strength, extra) in enumerate(cases):
        seed = seed0 + i
        path = os.path.join(out, inputs[input_name])
        image = Image.open(path).convert("RGB")
        case = {"name": name, "model": model, "image": path, "prompt": prompt, "width": width,
                "height": height, "steps": steps, "strength": strength, "seed": seed,
                "guidance_scale": 3.5, "true_cfg_scale": extra.get("true_cfg_scale", 1.0),
                "max_sequence_length": max_sequence_length}
        kwargs = dict(prompt=prompt, image=image, width=width, height=height,
                      num_inference_steps=steps, strength=strength, guidance_scale=3.5,
                      max_sequence_length=max_sequence_length)
        if "negative_prompt" in extra:
            case["negative_prompt"] = extra["negative_prompt"]
            kwargs["negative_prompt"] = extra["negative_prompt"]
            kwargs["true_cfg_scale"] = extra["true_cfg_scale"]
        with torch.no_grad():
            pre = pipe.image_processor.preprocess(image, height=height, width=width)
            pre = pre.to(torch.float32)
            latents = pipe._encode_vae_image(pre, torch.Generator("cpu").manual_seed(seed))
        pre.numpy().astype("<f4").tofile(os.path.join(out, name + ".pre.f32"))
        latents.float().numpy().astype("<f4").tofile(os.path.join(out, name + ".latents.f32"))
        case["latents_shape"] = list(latents.shape)
        result = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed),
                      output_type="np").images[0]
        (result * 255).round().astype("uint8").tofile(os.path.join(out, name + ".rgb"))
        manifest.append(case)
    return manifest


def main():
    build_dir = os.environ.get("DGRID_BUILD_DIR") or sys.argv[1]
    out = os.path.join(os.path.abspath(build_dir), "parity", "img2img")
    os.makedirs(out, exist_ok=True)
    tiny = os.path.join(out, "tiny-flux")
    if not os.path.exists(os.path.join(tiny, "model_index.json")):
        make_tiny_pipeline.build(tiny, seed=0)
    from diffusers import FluxImg2ImgPipeline
    inputs = write_inputs(out)
    manifest = []
    pipe = FluxImg2ImgPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    manifest += run_cases(pipe, tiny, TINY_CASES, inputs, out, 2000, 64,
                          "a red circle on a blue background")
    pipe = FluxImg2ImgPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    manifest += run_cases(pipe, DEFAULT_MODEL, DEFAULT_CASES, inputs, out, 3000, 48,
                          "a yellow triangle on a purple background")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"cases": manifest}, f, indent=1)
    print(f"{len(manifest)} img2img cases -> {out}")


if __name__ == "__main__":
    main()
