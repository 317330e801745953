#!/usr/bin/env python3
"""Step caching's quality on the default model (issue #21 item 4, CPU part).

Runs the default model's held-out captions (tools/train_default_model/shapes.py, seed = caption
index, as the default_model_acceptance test does) through `dgrid generate --local` once without
caching and once per cache setting, and reports for each setting: the steps skipped (the CLI's
own count), PSNR of the 64x64 8-bit image against the uncached one (peak 255; identical images
count as inf) and its SSIM (Gaussian window, per channel), the held-out colour and shape scores
(tools/train_default_model/checker.py), and the denoise wall time the CLI prints. That time is
one process on whatever machine runs this, with everything else it runs: it is recorded, not a
speed-up claim (docs/performance.md).

  .venv/bin/python bench/step_cache_quality.py --captions 10 \\
      --settings fbcache:0.08,fbcache:0.2,teacache:0.25,teacache:0.4 --out report.json

Writes the JSON report to --out and prints a Markdown table.
"""
import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(SOURCE, "tools", "train_default_model"))
import checker  # noqa: E402
import shapes  # noqa: E402


def generate(dgrid, model, caption, seed, cache, out):
    cmd = [dgrid, "generate", "--local", "--model", model, "--seed", str(seed), "-o", out]
    if cache != "none":
        cmd += ["--cache", cache]
    run = subprocess.run(cmd + [caption], check=True, capture_output=True, text=True)
    denoise = re.search(r"denoise ([0-9.]+) ms", run.stdout)
    skipped = re.search(r"step cache \S+: (\d+) steps skipped", run.stdout)
    return {
        "denoise_ms": float(denoise.group(1)) if denoise else None,
        "skipped_steps": int(skipped.group(1)) if skipped else 0,
        "pixels": np.asarray(Image.open(out).convert("RGB")),
    }


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_blur(x, sigma=1.5, radius=5):
    """Separable Gaussian filter (11 taps, sigma 1.5) of a 2-D array, 'valid' region only."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-t ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, x)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, rows)


def ssim(a, b):
    """Mean SSIM (Wang et al. 2004: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, L 255),
    computed per RGB channel and averaged."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(a.shape[2]):
        x = a[:, :, ch].astype(np.float64)
        y = b[:, :, ch].astype(np.float64)
        mx, my = _gaussian_blur(x), _gaussian_blur(y)
        sxx = _gaussian_blur(x * x) - mx * mx
        syy = _gaussian_blur(y * y) - my * my
        sxy = _gaussian_blur(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        values.append(m.mean())
    return float(np.mean(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dgrid", default=os.path.join(SOURCE, "build", "cli", "dgrid"))
    parser.add_argument("--model", default=os.path.join(SOURCE, "models", "dgrid-shapes"))
    parser.add_argument("--captions", type=int, default=50, help="first N held-out captions")
    parser.add_argument("--settings", default="fbcache:0.08,fbcache:0.2,teacache:0.25,teacache:0.4")
    parser.add_argument("--out", default="step_cache_quality.json")
    args = parser.parse_args()

    held = shapes.held_out()[: args.captions]
    settings = ["none"] + [s for s in args.settings.split(",") if s and s != "none"]
    work = tempfile.mkdtemp()
    results = {s: [] for s in settings}
    for i, (caption, shape, colour, _) in enumerate(held):
        for s in settings:
            r = generate(args.dgrid, args.model, caption, i, s,
                         os.path.join(work, f"{i}-{s.replace(':', '_')}.png"))
            got = checker.check(r["pixels"])
            r["colour_ok"] = got["colour"] == colour
            r["shape_ok"] = got["shape"] == shape
            results[s].append(r)
        print(f"caption {i + 1}/{len(held)} done", file=sys.stderr)

    rows = []
    for s in settings:
        rs = results[s]
        values = [psnr(r["pixels"], base["pixels"]) for r, base in zip(rs, results["none"])]
        finite = [v for v in values if math.isfinite(v)]
        ssims = [ssim(r["pixels"], base["pixels"]) for r, base in zip(rs, results["none"])]
        times = [r["denoise_ms"] for r in rs if r["denoise_ms"] is not None]
        rows.append({
            "setting": s,
            "images": len(rs),
            "mean_skipped_steps": float(np.mean([r["skipped_steps"] for r in rs])),
            "psnr_db_mean_finite": float(np.mean(finite)) if finite else None,
            "psnr_db_min": float(min(values)) if values else None,
            "identical_images": sum(1 for v in values if not math.isfinite(v)),
            "ssim_mean": float(np.mean(ssims)) if ssims else None,
            "ssim_min": float(min(ssims)) if ssims else None,
            "colour_ok": sum(r["colour_ok"] for r in rs),
            "shape_ok": sum(r["shape_ok"] for r in rs),
            "denoise_ms_median": float(np.median(times)) if times else None,
        })
    report = {
        "benchmark": "step_cache_quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "-C", SOURCE, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "model": os.path.relpath(args.model, SOURCE),
        "captions": len(held),
        "note": "denoise_ms is one CLI process's wall time on the machine that ran this, "
                "with whatever else it ran; not a speed-up measurement",
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("| setting | skipped steps (mean) | PSNR vs uncached, dB (mean of non-identical / min) "
          "| SSIM (mean / min) | identical images | colour ok | shape ok | denoise ms (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mean = "-" if r["psnr_db_mean_finite"] is None else f"{r['psnr_db_mean_finite']:.1f}"
        low = "inf" if r["psnr_db_min"] is None or math.isinf(r["psnr_db_min"]) \
            else f"{r['psnr_db_min']:.1f}"
        ms = "-" if r["denoise_ms_median"] is None else f"{r['denoise_ms_median']:.0f}"
        print(f"| {r['setting']} | {r['mean_skipped_steps']:.1f} | {mean} / {low} | "
              f"{r['ssim_mean']:.4f} / {r['ssim_min']:.4f} | "
              f"{r['identical_images']}/{r['images']} | {r['colour_ok']}/{r['images']} | "
              f"{r['shape_ok']}/{r['images']} | {ms} |")


if __name__ == "__main__":
    main()
