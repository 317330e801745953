#!/usr/bin/env python3
"""Where the time of one FLUX.1-dev-shaped denoising step goes, on the GPU (a development tool).

Profiles diffusers' FluxTransformer2DModel in eager mode (the same ATen kernels dgrid's LibTorch
model calls; the two were within 1% of each other per step, docs/perf-notes.md) with
torch.profiler, groups the CUDA kernels into GEMM / attention / norm / elementwise / copy, and
times the candidate replacements the optimisation pass considers: each SDPA backend at the
attention shape, the GEMM shapes of one block at the measured rate, and cuBLASLt's fused
bias+GELU epilogue against a GEMM followed by GELU.

    python3 bench/profile_step.py --size 1024 --out OUT_DIR
Writes OUT_DIR/profile_step.json and prints tables.
"""
import argparse
import json
import time
from collections import defaultdict

import torch
import torch.nn.functional as F


def bench(fn, iters=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def category(name):
    n = name.lower()
    if "flash" in n or "fmha" in n or "attention" in n or "cudnn" in n and "sdpa" in n:
        return "attention"
    if "gemm" in n or "cutlass" in n or "sm90_xmma" in n or "nvjet" in n or "cublas" in n:
        return "gemm"
    if "layer_norm" in n or "layernorm" in n or "rms" in n or "norm" in n:
        return "norm"
    if "copy" in n or "cat" in n or "memcpy" in n or "memset" in n:
        return "copy"
    if "gelu" in n:
        return "gelu"
    return "elementwise"


def build_model(dt):
    from diffusers import FluxTransformer2DModel
    shape = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
    with torch.device("cuda"):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=True, **shape)
        torch.set_default_dtype(prev)
    model = model.to("cuda", dt).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model


def profile_step(size, dt, report):
    model = build_model(dt)
    h = w = size // 16
    n_img = h * w
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    kw = dict(hidden_states=torch.randn(1, n_img, 64, device="cuda", dtype=dt),
              encoder_hidden_states=torch.randn(1, 512, 4096, device="cuda", dtype=dt),
              pooled_projections=torch.randn(1, 768, device="cuda", dtype=dt),
              timestep=torch.full((1,), 0.5, device="cuda", dtype=dt),
              img_ids=ids.reshape(n_img, 3).to("cuda", dt),
              txt_ids=torch.zeros(512, 3, device="cuda", dtype=dt),
              guidance=torch.full((1,), 3.5, device="cuda", dtype=torch.float32),
              return_dict=False)
    with torch.no_grad():
        step_ms = bench(lambda: model(**kw), iters=5, warmup=2)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**kw)
            torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name][0] += e.device_time_total / 1e3
            per_kernel[e.name][1] += 1
    cats = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        cats[category(name)] += ms
    total = sum(cats.values())
    print(f"\ndiffusers eager {size}^2: {step_ms:.1f} ms/step (events); kernels sum {total:.1f} ms")
    for c, ms in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<12}{ms:8.1f} ms  {ms / total:5.1%}")
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    print("  top kernels:")
    for name, (ms, n) in top:
        print(f"  {ms:8.2f} ms {n:5d}x  {category(name):<11} {name[:110]}")
    report["eager_step_ms"] = step_ms
    report["categories_ms"] = dict(cats)
    report["top_kernels"] = [{"name": n, "ms": ms, "count": c} for n, (ms, c) in top]
    del model
    torch.cuda.empty_cache()


def attention_backends(size, dt, report):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    s = (size // 16) ** 2 + 512
    q, k, v = (torch.randn(1, 24, s, 128, device="cuda", dtype=dt) for _ in range(3))
    flops = 4 * s * s * 128 * 24
    ref = None
    rows = {}
    print(f"\nSDPA at [1, 24, {s}, 128] {dt}:")
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
               SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(be):
                out = F.scaled_dot_product_attention(q, k, v)
                ms = bench(lambda: F.scaled_dot_product_attention(q, k, v))
            if ref is None:
                ref = out.float()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            rows[be.name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err_vs_flash": err}
            print(f"  {be.name:<22}{ms:7.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s  rel err {err:.1e}")
        except Exception as e:  # a backend that refuses the shape
            rows[be.name] = {"error": str(e)[:200]}
            print(f"  {be.name:<22} unavailable: {str(e)[:100]}")
    with torch.no_grad():
        ms = bench(lambda: F.scaled_dot_product_attention(q, k, v))
    rows["default"] = {"ms": ms}
    print(f"  {'default choice':<22}{ms:7.3f} ms")
    report["attention"] = rows


def gemms(size, dt, report):
    m = (size // 16) ** 2
    rows = []
    print(f"\nGEMMs of one block at M={m} (+512 text rows where joint):")
    shapes = [("qkv fused", m, 3 * 3072, 3072), ("q or k or v", m, 3072, 3072),
              ("mlp up", m, 12288, 3072), ("mlp down", m, 3072, 12288),
              ("single fused in", m + 512, 3 * 3072 + 12288, 3072),
              ("single out", m + 512, 3072, 15360)]
    for name, mm, n, k in shapes:
        a = torch.randn(mm, k, device="cuda", dtype=dt)
        wt = torch.randn(n, k, device="cuda", dtype=dt)
        bias = torch.randn(n, device="cuda", dtype=dt)
        ms = bench(lambda: F.linear(a, wt, bias))
        tf = 2 * mm * n * k / ms / 1e9
        row = {"name": name, "m": mm, "n": n, "k": k, "ms": ms, "tflops": tf}
        if name == "mlp up":
            sep = bench(lambda: F.gelu(F.linear(a, wt, bias), approximate="tanh"))
            fused = bench(lambda: torch._addmm_activation(bias, a, wt.t(), use_gelu=True))
            row.update(linear_then_gelu_ms=sep, addmm_gelu_epilogue_ms=fused)
            print(f"  linear+gelu {sep:.3f} ms, cublasLt GELU epilogue {fused:.3f} ms")
        rows.append(row)
        print(f"  {name:<16} [{mm}x{k}]x[{k}x{n}] {ms:7.3f} ms {tf:6.0f} TFLOP/s")
    a = torch.randn(8192, 8192, device="cuda", dtype=dt)
    b = torch.randn(8192, 8192, device="cuda", dtype=dt)
    ms = bench(lambda: a @ b)
    report["matmul_8192_tflops"] = 2 * 8192 ** 3 / ms / 1e9
    print(f"  8192^3 matmul {report['matmul_8192_tflops']:.0f} TFLOP/s")
    report["gemms"] = rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args()
    dt = torch.bfloat16
    report = {"tool": "profile_step", "card": torch.cuda.get_device_name(), "size": args.size,
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    attention_backends(args.size, dt, report)
    gemms(args.size, dt, report)
    if not args.skip_model:
        profile_step(args.size, dt, report)
    with open(f"{args.out}/profile_step.json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
