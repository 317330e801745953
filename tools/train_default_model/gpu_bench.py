#!/usr/bin/env python3
"""Measures the default model's training step on the GPU, and reproduces the reduced-precision
cuBLAS failure of the earlier runs (a development aid for the device machine; results go to stdout
as JSON lines).

    gpu_bench.py repro [--variants a,b,...]   each variant in its own child process
    gpu_bench.py time PRECISION [--batches 1024,2048] [--blas cublaslt]
    gpu_bench.py ceilings                      matrix-product rate and copy bandwidth

repro variants (bf16 autocast unless named otherwise; a forward + backward of the real model
shapes, batch 1024, CUDA_LAUNCH_BLOCKING=1, autograd anomaly mode so that a failure in the backward
names its forward line): full, full_cublaslt, full_workspace (CUBLAS_WORKSPACE_CONFIG=:4096:8),
transformer_only, text_only, bf16_weights (no autocast: the models cast to bfloat16), b64, fp16;
full_no_cudnn and fp16_no_cudnn: full and fp16 with scaled-dot-product attention kept off the cuDNN
backend (torch.backends.cuda.enable_cudnn_sdp(False)), whose backward is where full fails.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402
import train_job  # noqa: E402

VARIANTS = ["full", "full_cublaslt", "full_workspace", "transformer_only", "text_only",
            "bf16_weights", "b64", "fp16", "full_no_cudnn", "fp16_no_cudnn"]


def random_models(device):
    t5, clip, _, transformer = train.make_models(train._ProbeTokenizer(312),
                                                 train._ProbeTokenizer(668))
    for m in (t5, clip, transformer):
        m.to(device)
    return t5, clip, transformer


def random_inputs(n, device, gen=None):
    import torch
    return (torch.randn(n, 64, 64, device=device), torch.randn(n, 64, 64, device=device),
            torch.rand(n, device=device), torch.randint(0, 312, (n, train.T5_LEN), device=device),
            torch.randint(0, 666, (n, train.CLIP_LEN), device=device))


def repro_child(variant):
    import torch
    device = torch.device("cuda")
    if variant == "full_cublaslt":
        torch.backends.cuda.preferred_blas_library("cublaslt")
    if variant.endswith("_no_cudnn"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.autograd.set_detect_anomaly(True)
    t5, clip, transformer = random_models(device)
    n = 64 if variant == "b64" else 1024
    dtype = torch.float16 if variant.startswith("fp16") else torch.bfloat16
    if variant == "bf16_weights":
        for m in (t5, clip, transformer):
            m.to(torch.bfloat16)
    x0, noise, sigma, tids, cids = random_inputs(n, device)
    ids, txt_ids = train.image_ids(8, 8, device), torch.zeros(train.T5_LEN, 3, device=device)
    text_amp = variant not in ("transformer_only", "bf16_weights")
    tr_amp = variant not in ("text_only", "bf16_weights")
    wdtype = torch.bfloat16 if variant == "bf16_weights" else torch.float32
    for it in range(3):
        with torch.autocast("cuda", dtype=dtype, enabled=text_amp):
            pooled = clip(cids).pooler_output
            text = t5(tids)[0]
        with torch.autocast("cuda", dtype=dtype, enabled=tr_amp):
            xt = (x0 * (1 - sigma[:, None, None]) + noise * sigma[:, None, None]).to(wdtype)
            pred = transformer(hidden_states=xt, encoder_hidden_states=text.to(wdtype),
                               pooled_projections=pooled.to(wdtype), timestep=sigma.to(wdtype),
                               img_ids=ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        pred.float().square().mean().backward()
        torch.cuda.synchronize()
        print(f"iteration {it} ok", flush=True)
    print("ok")


def repro(variants):
    """All variants at once, each in its own child (a failed cuBLAS call can leave a process's
    CUDA context unusable); only whether each fails, and where, is wanted, not its speed."""
    env0 = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONUNBUFFERED="1")
    t0, procs, results = time.time(), {}, {}
    for v in variants:
        env = dict(env0)
        if v == "full_workspace":
            env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        procs[v] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "repro-child", v],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
    for v, proc in procs.items():
        try:
            out = proc.communicate(timeout=max(10, 180 - (time.time() - t0)))[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0] + "\n(timed out)"
        rc = proc.returncode
        ok = rc == 0 and out.rstrip().endswith("ok")
        results[v] = ok
        # the anomaly-mode forward trace and the error: the lines that name files and the error
        lines = [ln for ln in out.splitlines() if ln.strip()]
        keep = [ln for ln in lines if ("File " in ln and ("site-packages" in ln or HERE in ln))
                or "Error" in ln or "CUBLAS" in ln or "iteration" in ln]
        print(json.dumps({"stage": "repro", "variant": v, "ok": ok, "rc": rc,
                          "seconds": round(time.time() - t0, 1), "trace": keep[-40:],
                          "tail": lines[-6:]}), flush=True)
    print(json.dumps({"stage": "repro_summary", **results}), flush=True)


def time_precision(precision, batches, blas, sdpa="any"):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if blas:
        torch.backends.cuda.preferred_blas_library(blas)
    if sdpa == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    t5, clip, transformer = random_models(device)
    trainer = train_job.Trainer(t5, clip, transformer, precision, False, 1e-4, 0.999, device)
    pool = random_inputs(8192, device)
    gen = torch.Generator(device=device).manual_seed(0)
    for b in batches:
        def make_batch():
            idx = torch.randint(0, 8192, (b,), device=device, generator=gen)
            return tuple(t[idx] for t in pool)
        if b == batches[0]:
            flops = FlopCounterMode(display=False)
            with flops:
                trainer.forward_loss(*make_batch()).backward()
            print(json.dumps({"stage": "flops", "batch": b,
                              "tflop_per_step": round(flops.get_total_flops() / 1e12, 3)}))
        for _ in range(5):
            trainer.step(make_batch(), 1e-4)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0, n = time.time(), 20
        for _ in range(n):
            trainer.step(make_batch(), 1e-4)
        torch.cuda.synchronize()
        dt = (time.time() - t0) / n
        print(json.dumps({"stage": "time", "precision": precision, "blas": blas, "sdpa": sdpa, "batch": b,
                          "compiled": False, "steps_per_s": round(1 / dt, 2),
                          "samples_per_s": round(b / dt),
                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}),
              flush=True)
        if b == batches[0]:
            train_job.profile_steps(trainer, make_batch, 1e-4, 3,
                                    lambda r: print(json.dumps(r), flush=True),
                                    f"{precision} eager b{b}")


def ceilings():
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = True
    out = {}
    for name, x in (("bf16", a), ("tf32", a.float())):
        for _ in range(3):
            x @ x
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(10):
            x @ x
        torch.cuda.synchronize()
        out[name + "_tflops"] = round(10 * 2 * 8192 ** 3 / (time.time() - t0) / 1e12)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    out["copy_gbps_read_plus_write"] = round(10 * 2 * 2 ** 30 / (time.time() - t0) / 1e9)
    print(json.dumps({"stage": "ceilings", **out}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["repro", "repro-child", "time", "ceilings"])
    p.add_argument("arg", nargs="?")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batches", default="1024,2048")
    p.add_argument("--blas", choices=["cublas", "cublaslt"])
    p.add_argument("--sdpa", choices=["any", "no-cudnn"], default="any")
    a = p.parse_args()
    if a.what == "repro":
        repro(a.variants.split(","))
    elif a.what == "repro-child":
        repro_child(a.arg)
    elif a.what == "time":
        time_precision(a.arg, [int(b) for b in a.batches.split(",")], a.blas, a.sdpa)
    else:
        ceilings()


if __name__ == "__main__":
    main()
