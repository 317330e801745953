#!/usr/bin/env python3
"""Times diffusers' FluxTransformer2DModel the way the FLUX.1 sampling loop calls it.

Same configuration as dgrid-bench-denoise (bench/denoise.cc): FLUX.1-dev shapes (19 double +
38 single blocks, 24 heads x 128, joint_attention_dim 4096, pooled 768, in_channels 64,
guidance_embeds, axes_dims_rope [16, 56, 56]) with random bf16 weights made on the GPU
(linear weights N(0, 0.02), biases 0, norm scales 1), packed latents, 512 text tokens and a
guidance of 3.5. Each step calls the transformer once with the current latents and timestep and
takes a flow-matching Euler step, as FluxPipeline does; the step time is the transformer call
plus that update, synchronised. Modes: eager, and torch.compile (the first compiled call, which
includes compilation, is reported separately). Writes one JSON report per mode and size in the
fields of bench/report.h.

  python3 bench/diffusers_denoise.py --mode eager --size 1024 --steps 28 --out DIR
"""
import argparse
import datetime
import json
import math
import os
import statistics
import time

import torch


def flux_forward_flops(image_tokens, text_tokens=512, layers=19, single_layers=38, d=3072,
                       in_channels=64, joint_dim=4096, pooled_dim=768):
    """Same count as dgrid::families::flux::FluxForwardFlops (families/flux/flux_family.cc)."""
    lin = lambda rows, i, o: 2.0 * rows * i * o
    n, t = image_tokens, text_tokens
    s, f = n + t, 4 * d
    att = 4.0 * s * s * d
    flops = lin(n, in_channels, d) + lin(t, joint_dim, d)
    flops += 2 * (lin(1, 256, d) + lin(1, d, d)) + lin(1, pooled_dim, d) + lin(1, d, d)
    dbl = 2 * lin(1, d, 6 * d) + att
    for rows in (n, t):
        dbl += 4 * lin(rows, d, d) + 2 * lin(rows, d, f)
    sgl = lin(1, d, 3 * d) + 3 * lin(s, d, d) + lin(s, d, f) + lin(s, d + f, d) + att
    return flops + layers * dbl + single_layers * sgl + lin(1, d, 2 * d) + lin(n, d, in_channels)


def mem_checkpoint(name):
    if not torch.cuda.is_available():
        return {"name": name}
    mib = 1024.0 * 1024.0
    return {"name": name,
            "allocated_mb": torch.cuda.memory_allocated() / mib,
            "peak_allocated_mb": torch.cuda.max_memory_allocated() / mib,
            "reserved_mb": torch.cuda.memory_reserved() / mib,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / mib}


def flux_sigmas(steps, image_tokens):
    # FluxPipeline: linspace(1, 1/n, n), exponential time shift with mu from the token count
    # (FLUX.1-dev scheduler: base 0.5 @ 256 tokens, max 1.15 @ 4096 tokens).
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (image_tokens - 256)
    sig = [1.0 - i * (1.0 - 1.0 / steps) / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    sig = [math.exp(mu) / (math.exp(mu) + (1 / x - 1)) for x in sig]
    return sig + [0.0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--card", default="")
    ap.add_argument("--commit", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model on the CPU, to check the script runs (numbers meaningless)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("diffusers_denoise.py: no CUDA device; this benchmark needs a GPU")
    import diffusers
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(args.seed)
    dev, dt = torch.device("cpu" if args.smoke else "cuda"), torch.bfloat16
    cuda = dev.type == "cuda"
    shape = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
    if args.smoke:
        shape = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                     joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    with torch.device(dev):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=True, **shape)
        torch.set_default_dtype(prev)
    model = model.to(dev, dt).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    sync()
    build_ms = (time.perf_counter() - t0) * 1e3
    checkpoints = [mem_checkpoint("after_weights")]

    h = w = args.size // 16  # packed latent grid (VAE /8, then 2x2 patches)
    n_img = h * w
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    img_ids = ids.reshape(n_img, 3).to(dev, dt)
    txt_ids = torch.zeros(512, 3, device=dev, dtype=dt)
    embeds = torch.randn(1, 512, shape["joint_attention_dim"], device=dev, dtype=dt)
    pooled = torch.randn(1, shape["pooled_projection_dim"], device=dev, dtype=dt)
    guidance = torch.full((1,), 3.5, device=dev, dtype=torch.float32)
    sigmas = flux_sigmas(args.steps, n_img)

    fwd = torch.compile(model) if args.mode == "compile" else model

    def step(latents, i):
        t = torch.full((1,), sigmas[i], device=dev, dtype=dt)  # timestep / 1000
        noise = fwd(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                    timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                    return_dict=False)[0]
        return (latents.float() + (sigmas[i + 1] - sigmas[i]) * noise.float()).to(dt)

    phases = [{"name": "build_random_weights", "duration_ms": build_ms}]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        # Made inside inference mode like every later latent, so a compiled graph sees one kind of
        # input tensor (a plain tensor first, then inference tensors, would recompile once).
        latents = torch.randn(1, n_img, 64, device=dev, dtype=dt)
        first_ms = None
        if args.mode == "compile":
            sync()
            t0 = time.perf_counter()
            step(latents, 0)
            sync()
            first_ms = (time.perf_counter() - t0) * 1e3
            phases.append({"name": "first_compiled_call", "duration_ms": first_ms})
            print(f"first compiled call: {first_ms:.0f} ms", flush=True)
        t0 = time.perf_counter()
        warm = latents
        for i in range(args.warmup):
            warm = step(warm, i % args.steps)
        sync()
        phases.append({"name": "warmup", "duration_ms": (time.perf_counter() - t0) * 1e3})
        step_ms = []
        start = time.perf_counter()
        for i in range(args.steps):
            s0 = time.perf_counter()
            latents = step(latents, i)
            sync()
            step_ms.append((time.perf_counter() - s0) * 1e3)
        total_ms = (time.perf_counter() - start) * 1e3
        finite = bool(torch.isfinite(latents).all().item())
    phases.append({"name": "denoise", "duration_ms": total_ms})
    checkpoints.append(mem_checkpoint("after_denoise"))

    # The card's bf16 matmul rate in the same process.
    mm = 8192 if cuda else 256
    a = torch.randn(mm, mm, device=dev, dtype=dt)
    b = torch.randn(mm, mm, device=dev, dtype=dt)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(20):
        sync()
        s0 = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * mm ** 3 / (time.perf_counter() - s0) / 1e12)
    matmul = statistics.median(rates)

    flops = flux_forward_flops(n_img)
    med = statistics.median(step_ms)
    tflops = flops / (med * 1e-3) / 1e12
    report = {
        "tool": f"diffusers-{args.mode}",
        "card": args.card or (torch.cuda.get_device_name() if cuda else "cpu (smoke)"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": args.commit,
        "config": {"model": "FLUX.1-dev shape, random bf16 weights", "height": args.size,
                   "width": args.size, "num_inference_steps": args.steps,
                   "warmup_steps": args.warmup, "text_tokens": 512, "image_tokens": n_img,
                   "guidance_scale": 3.5, "dtype": "bfloat16",
                   "diffusers": diffusers.__version__, "torch": torch.__version__,
                   "step_timing": "transformer call + Euler update, synchronised per step"},
        "total_duration_ms": total_ms,
        "steps": phases,
        "denoise_steps_ms": step_ms,
        "memory_checkpoints": checkpoints,
        "median_step_ms": med,
        "flops_per_step": flops,
        "achieved_tflops": tflops,
        "matmul_tflops": matmul,
        "matmul_size": mm,
        "fraction_of_matmul": tflops / matmul,
        "arithmetic_floor_ms": flops / (matmul * 1e12) * 1e3,
        "peak_memory_mb": checkpoints[-1].get("peak_allocated_mb", 0.0),
        "output_finite": finite,
    }
    if first_ms is not None:
        report["first_compiled_call_ms"] = first_ms
    if args.out:
        path = os.path.join(args.out, f"diffusers-{args.mode}-{args.size}.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    print(f"diffusers-{args.mode} {args.size}x{args.size} x{args.steps}: median step {med:.1f} ms, "
          f"total {total_ms:.0f} ms, {tflops:.0f} TFLOP/s ({tflops / matmul:.2f} of {matmul:.0f}), "
          f"peak {report['peak_memory_mb']:.0f} MiB, finite={finite}", flush=True)


if __name__ == "__main__":
    main()
