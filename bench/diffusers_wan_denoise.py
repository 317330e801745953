#!/usr/bin/env python3
"""Times diffusers' WanTransformer3DModel the way WanPipeline runs a denoising step.

Same configuration as dgrid-bench-wan-denoise (bench/wan_denoise.cc): the Wan2.1-T2V-1.3B or
-14B transformer config with random weights made on the GPU (tensors of two or more dimensions
N(0, 0.02), biases 0, norm scales 1), bf16 except the modules diffusers keeps in float32
(_keep_in_fp32_modules: rope, time_embedder, scale_shift_table, norm1-3), 832x480 and 81 frames
(latents [1, 16, 21, 60, 104], 32 760 tokens), 512 text tokens for the prompt and the negative
prompt. A step is WanPipeline's: the transformer on the prompt, then on the negative prompt
(guidance 5.0), the guidance combination, and UniPCMultistepScheduler.step (flow prediction,
flow_shift 3.0: Wan2.1's 480p scheduler config), synchronised. Modes: eager, and torch.compile of
the whole transformer (the first compiled call, one step including compilation, is reported
separately). Writes one JSON report in the fields of bench/report.h.

  python3 bench/diffusers_wan_denoise.py --mode eager --shape wan2.1-14b --steps 4 --out DIR

--hold-file PATH waits, after the warm-up and before the timed steps, until PATH exists (so a
build running beside the compilation is finished before anything is timed). --profile (eager)
adds the CUDA kernels of one transformer pass grouped as in bench/profile_step.py.
"""
import argparse
import datetime
import json
import os
import statistics
import time

import torch

SHAPES = {
    # transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers and -1.3B-Diffusers.
    "wan2.1-14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
    "wan2.1-1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
}


def wan_forward_flops(image_tokens, text_tokens, layers, heads, ffn, head_dim=128, in_ch=16,
                      text_dim=4096, freq_dim=256):
    """Same count as dgrid::families::wan::WanForwardFlops (families/wan/wan_family.cc)."""
    lin = lambda rows, i, o: 2.0 * rows * i * o
    n, t, d = image_tokens, text_tokens, heads * head_dim
    patch = in_ch * 4
    flops = lin(n, patch, d) + lin(t, text_dim, d) + lin(t, d, d)
    flops += lin(1, freq_dim, d) + lin(1, d, d) + lin(1, d, 6 * d)
    block = 4 * lin(n, d, d) + 4.0 * n * n * d
    block += 2 * lin(n, d, d) + 2 * lin(t, d, d) + 4.0 * n * t * d
    block += lin(n, d, ffn) + lin(n, ffn, d)
    return flops + layers * block + lin(n, d, patch)


def attention_flops(image_tokens, text_tokens, layers, heads, head_dim=128):
    d = heads * head_dim
    return layers * (4.0 * image_tokens ** 2 * d + 4.0 * image_tokens * text_tokens * d)


def mem_checkpoint(name):
    if not torch.cuda.is_available():
        return {"name": name}
    mib = 1024.0 * 1024.0
    return {"name": name,
            "allocated_mb": torch.cuda.memory_allocated() / mib,
            "peak_allocated_mb": torch.cuda.max_memory_allocated() / mib,
            "reserved_mb": torch.cuda.memory_reserved() / mib,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / mib}


def build_model(config, dev, dt):
    """WanTransformer3DModel with random weights, in the dtypes from_pretrained(torch_dtype=dt)
    gives (the float32 modules kept)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
    with torch.device(dev):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        model = WanTransformer3DModel(**config)
        torch.set_default_dtype(prev)
        # The RoPE tables as a float32 construction makes them (not rounded through bf16).
        model.rope = WanRotaryPosEmbed(config.get("attention_head_dim", 128),
                                       config.get("patch_size", (1, 2, 2)),
                                       config.get("rope_max_seq_len", 1024))
    keep = set(model._keep_in_fp32_modules or [])
    model = model.eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(dev, torch.float32 if keep & set(name.split(".")) else dt)
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model


def profile_pass(fwd, kwargs):
    """CUDA kernel time of one transformer pass, grouped like bench/profile_step.py."""
    from collections import defaultdict
    from torch.profiler import ProfilerActivity, profile
    from profile_step import category
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwd(**kwargs)
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name][0] += e.device_time_total / 1e3
            per_kernel[e.name][1] += 1
    cats = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        cats[category(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:20]
    return {"pass": "conditional transformer pass (one of the step's two)",
            "kernels_ms": sum(cats.values()),
            "categories_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:160], "ms": ms, "count": c} for n, (ms, c) in top]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="wan2.1-14b")
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--flow-shift", type=float, default=3.0)
    ap.add_argument("--out", default="")
    ap.add_argument("--card", default="")
    ap.add_argument("--commit", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hold-file", default="", help="wait for this file before the timed steps")
    ap.add_argument("--hold-max-s", type=float, default=600)
    ap.add_argument("--profile", action="store_true", help="profile one pass after the timing")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model and video on the CPU, to check the script runs (numbers "
                         "meaningless)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("diffusers_wan_denoise.py: no CUDA device; this benchmark needs a GPU")
    import diffusers
    from diffusers import UniPCMultistepScheduler

    torch.manual_seed(args.seed)
    dev, dt = torch.device("cpu" if args.smoke else "cuda"), torch.bfloat16
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    config = dict(SHAPES[args.shape])
    text_dim = 4096
    if args.smoke:
        config = dict(num_attention_heads=2, ffn_dim=64, num_layers=2, attention_head_dim=12,
                      text_dim=32)
        text_dim = 32
        args.height, args.width, args.frames, args.text_tokens = 64, 64, 5, 16
    head_dim = config.get("attention_head_dim", 128)
    t0 = time.perf_counter()
    model = build_model(config, dev, dt)
    sync()
    build_ms = (time.perf_counter() - t0) * 1e3
    checkpoints = [mem_checkpoint("after_weights")]

    latent_frames = (args.frames - 1) // 4 + 1
    lh, lw = args.height // 8, args.width // 8
    n_img = latent_frames * (lh // 2) * (lw // 2)
    embeds = torch.randn(1, args.text_tokens, text_dim, device=dev, dtype=dt)
    neg_embeds = torch.randn(1, args.text_tokens, text_dim, device=dev, dtype=dt)
    # Wan2.1's scheduler_config.json (480p).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=args.flow_shift,
                                        solver_order=2, solver_type="bh2")
    fwd = torch.compile(model) if args.mode == "compile" else model
    cfg = args.guidance > 1.0

    def step(latents, t):
        x = latents.to(dt)
        timestep = t.expand(latents.shape[0])
        noise = fwd(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds,
                    return_dict=False)[0]
        if cfg:
            uncond = fwd(hidden_states=x, timestep=timestep, encoder_hidden_states=neg_embeds,
                         return_dict=False)[0]
            noise = uncond + args.guidance * (noise - uncond)
        return scheduler.step(noise, t, latents, return_dict=False)[0]

    def run(latents, steps, step_ms=None):
        scheduler.set_timesteps(steps, device=dev)
        for t in scheduler.timesteps:
            s0 = time.perf_counter()
            latents = step(latents, t)
            if step_ms is not None:
                sync()
                step_ms.append((time.perf_counter() - s0) * 1e3)
        return latents

    phases = [{"name": "build_random_weights", "duration_ms": build_ms}]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator("cpu").manual_seed(args.seed)
    profile = None
    with torch.inference_mode():
        noise = torch.randn(1, 16, latent_frames, lh, lw, generator=g, dtype=torch.float32)
        noise = noise.to(dev)
        first_ms = None
        if args.mode == "compile":
            sync()
            t0 = time.perf_counter()
            run(noise, 1)
            sync()
            first_ms = (time.perf_counter() - t0) * 1e3
            phases.append({"name": "first_compiled_call", "duration_ms": first_ms})
            print(f"first compiled call (one step): {first_ms:.0f} ms", flush=True)
        t0 = time.perf_counter()
        if args.warmup > 0:
            run(noise, args.warmup)
        sync()
        phases.append({"name": "warmup", "duration_ms": (time.perf_counter() - t0) * 1e3})
        if args.hold_file:
            t0 = time.perf_counter()
            while not os.path.exists(args.hold_file) and time.perf_counter() - t0 < args.hold_max_s:
                time.sleep(0.5)
            held = os.path.exists(args.hold_file)
            phases.append({"name": "hold_for_file", "duration_ms": (time.perf_counter() - t0) * 1e3,
                           "released_by_file": held})
            print(f"held {time.perf_counter() - t0:.0f} s for {args.hold_file} (found: {held})",
                  flush=True)
        step_ms = []
        sync()
        start = time.perf_counter()
        latents = run(noise, args.steps, step_ms)
        sync()
        total_ms = (time.perf_counter() - start) * 1e3
        finite = bool(torch.isfinite(latents).all().item())
        checkpoints.append(mem_checkpoint("after_denoise"))
        if args.profile and cuda:
            scheduler.set_timesteps(args.steps, device=dev)
            profile = profile_pass(fwd, dict(hidden_states=noise.to(dt),
                                             timestep=scheduler.timesteps[0].expand(1),
                                             encoder_hidden_states=embeds, return_dict=False))
            print(f"profile of one pass: kernels {profile['kernels_ms']:.1f} ms: " +
                  ", ".join(f"{k} {v:.1f}" for k, v in profile["categories_ms"].items()),
                  flush=True)
    phases.append({"name": "denoise", "duration_ms": total_ms})
    del model, fwd

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

    passes = 2 if cfg else 1
    shape = dict(layers=config["num_layers"], heads=config["num_attention_heads"])
    flops = passes * wan_forward_flops(n_img, args.text_tokens, ffn=config["ffn_dim"],
                                       head_dim=head_dim, text_dim=text_dim, **shape)
    att = passes * attention_flops(n_img, args.text_tokens, head_dim=head_dim, **shape)
    med = statistics.median(step_ms)
    tflops = flops / (med * 1e-3) / 1e12
    tag = "wan" + args.shape.rsplit("-", 1)[1]
    report = {
        "tool": f"diffusers-{args.mode}",
        "card": args.card or (torch.cuda.get_device_name() if cuda else "cpu (smoke)"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": args.commit,
        "config": {"model": f"{args.shape} shape, random bf16 weights", "shape": args.shape,
                   "layers": config["num_layers"], "heads": config["num_attention_heads"],
                   "ffn_dim": config["ffn_dim"], "height": args.height, "width": args.width,
                   "num_frames": args.frames, "latent_frames": latent_frames,
                   "num_inference_steps": args.steps, "warmup_steps": args.warmup,
                   "text_tokens": args.text_tokens, "image_tokens": n_img,
                   "guidance_scale": args.guidance, "transformer_passes_per_step": passes,
                   "scheduler": f"UniPCMultistepScheduler flow_shift {args.flow_shift}",
                   "dtype": "bfloat16", "gpus": 1,
                   "diffusers": diffusers.__version__, "torch": torch.__version__,
                   "step_timing": "2 transformer passes + CFG + UniPC step, synchronised per step"},
        "total_duration_ms": total_ms,
        "steps": phases,
        "denoise_steps_ms": step_ms,
        "memory_checkpoints": checkpoints,
        "median_step_ms": med,
        "flops_per_step": flops,
        "attention_flops_per_step": att,
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
    if profile is not None:
        report["profile"] = profile
    if args.out:
        path = os.path.join(args.out, f"diffusers-{args.mode}-{tag}-{args.height}p{args.frames}.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    print(f"diffusers-{args.mode} {tag} {args.width}x{args.height}x{args.frames} x{args.steps}: "
          f"median step {med:.1f} ms, total {total_ms:.0f} ms, {tflops:.0f} TFLOP/s "
          f"({tflops / matmul:.2f} of {matmul:.0f}), peak {report['peak_memory_mb']:.0f} MiB, "
          f"finite={finite}", flush=True)


if __name__ == "__main__":
    main()
