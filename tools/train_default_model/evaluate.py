#!/usr/bin/env python3
"""Grades a shapes model on the 50 held-out captions with diffusers' FluxPipeline and the checker
(a development aid; the CI test runs the same captions through dgrid itself).

    evaluate.py MODEL_DIR [--device cuda] [--steps 16] [--true-cfg 4] [--grid grid.png]
                [--vae-roundtrip 300]

--vae-roundtrip N also grades N generator pictures (one shape, plain background) after a VAE
encode/decode: the most the transformer can reach through this VAE.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checker  # noqa: E402
import shapes  # noqa: E402


def vae_roundtrip(vae, n, device):
    """Colour and shape accuracy of the checker on n generator pictures after vae encode/decode."""
    import torch
    rng = np.random.default_rng(5)
    scenes = [shapes.sample_scene(rng, two_shapes_p=0.0) for _ in range(n)]
    images = np.stack([shapes.render(s) for s in scenes])
    with torch.no_grad():
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 100]).latent_dist.mean).sample
                         for i in range(0, n, 100)])
    rec = ((rec.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    colour_ok = shape_ok = 0
    for s, r in zip(scenes, rec):
        got = checker.check(r)
        colour_ok += got["colour"] == s["shapes"][0]["colour"]
        shape_ok += got["shape"] == s["shapes"][0]["shape"]
    return {"n": n, "colour": colour_ok / n, "shape": shape_ok / n}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--true-cfg", type=float, default=1.0, help="> 1: true CFG, empty negative")
    p.add_argument("--grid")
    p.add_argument("--vae-roundtrip", type=int, default=0)
    a = p.parse_args()
    import torch
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(a.model_dir, torch_dtype=getattr(torch, a.dtype))
    pipe.to(a.device)
    pipe.set_progress_bar_config(disable=True)
    if a.vae_roundtrip:
        print(json.dumps({"vae_roundtrip": vae_roundtrip(pipe.vae, a.vae_roundtrip, a.device)}))
    cases = shapes.held_out()
    images, colour_ok, shape_ok, rows = [], 0, 0, []
    for i, (text, shape, colour, _) in enumerate(cases):
        gen = torch.Generator("cpu").manual_seed(i)
        cfg = dict(true_cfg_scale=a.true_cfg, negative_prompt="") if a.true_cfg > 1 else {}
        img = pipe(text, height=64, width=64, num_inference_steps=a.steps, generator=gen,
                   max_sequence_length=48, output_type="np", **cfg).images[0]
        img = (img * 255).round().astype(np.uint8)
        images.append(img)
        r = checker.check(img)
        colour_ok += r["colour"] == colour
        shape_ok += r["shape"] == shape
        rows.append({"caption": text, "want": [colour, shape], "got": [r["colour"], r["shape"]]})
    result = {"colour": colour_ok / len(cases), "shape": shape_ok / len(cases), "cases": rows}
    print(json.dumps({k: result[k] for k in ("colour", "shape")}))
    for r in rows:
        if r["want"] != r["got"]:
            print("miss:", r)
    if a.grid:
        from PIL import Image
        images += [np.zeros_like(images[0])] * (-len(images) % 10)
        grid = np.concatenate([np.concatenate(images[k:k + 10], 1)
                               for k in range(0, len(images), 10)])
        Image.fromarray(grid).save(a.grid)
        with open(os.path.splitext(a.grid)[0] + ".json", "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
