#!/usr/bin/env python3
"""One job of a resumable training run of the default model's transformer and text encoders (the
VAE and both tokenizers stay those of the starting model, --init). A run is a sequence of such
jobs, each at most one device call long, none relying on an earlier job's machine: everything a
job needs to continue lives in the files it writes to OUT, which the next job reads back with
--state.

    train_job.py OUT [--state DIR] [--init models/dgrid-shapes] [--stop-at UNIX_TIME]
                 [--precision bf16|fp32] [--compile] [--batch 1024] [--lr 6e-4] [--decay-frac 0.3]

The run's state (OUT/state.json + OUT/state-X.NN, chunks of at most 15 MiB):
  * state.json: step, samples, seconds trained, job number, loss EMA, the settings of every job
    (precision, batch, learning rate, steps/s, card) and the chunk list with its sha256;
  * the chunks: torch.save of {"params": float32 parameters, "ema": float16 parameter EMA} by name.
The Adam moments are not kept (they would not fit the device tool's 64 MiB of carried and returned
files next to the repository): every job starts a fresh AdamW (bias-corrected, so its first steps
are unbiased) with a short learning-rate re-warm-up (--rewarm steps). The EMA is kept in float32
during a job and rounded to float16 (the exported precision) between jobs.

Each job draws a new data set (160 000 scenes by default, data seed 1000 + job number), encodes it
with the frozen VAE and keeps it on the GPU; the noise/timestep generator is seeded from the job
number too. Learning rate: linear warm-up over --warmup steps at the run's start (--rewarm at a
later job's), then constant, then a linear decay to lr/20 over the last --decay-frac of this job's
training time (warmup-stable-decay: every job ends with an exportable, annealed EMA).

--export MODEL_DIR instead writes the state's EMA as the Diffusers pipeline folder (float16, via
export.py) with --init's VAE, tokenizers, scheduler and dgrid.json.
"""
import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402

CHUNK = 15 * 2**20
DEFAULT_INIT = os.path.normpath(os.path.join(HERE, "..", "..", "models", "dgrid-shapes"))


# ---------------------------------------------------------------------------------------------
# state files


def read_state(state_dir):
    """(meta, tensors) of the state in state_dir, or (None, None) when there is none."""
    import torch
    path = os.path.join(state_dir or "", "state.json")
    if not state_dir or not os.path.exists(path):
        return None, None
    with open(path) as f:
        meta = json.load(f)
    data = b"".join(open(os.path.join(state_dir, c), "rb").read() for c in meta["chunks"])
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise SystemExit(f"{state_dir}: state chunks do not match state.json's sha256")
    return meta, torch.load(io.BytesIO(data), weights_only=True)


def write_state(out, meta, tensors):
    """Writes the chunks under a new prefix, then state.json (os.replace), then removes the old
    prefix's chunks: a job killed at any point leaves a readable state.json and its chunks."""
    import torch
    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    old = None
    if os.path.exists(os.path.join(out, "state.json")):
        with open(os.path.join(out, "state.json")) as f:
            old = json.load(f)
    prefix = "state-b" if old and old["chunks"][0].startswith("state-a") else "state-a"
    chunks = []
    for k in range(0, len(data), CHUNK):
        name = f"{prefix}.{k // CHUNK:02d}"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data[k:k + CHUNK])
        chunks.append(name)
    meta = dict(meta, chunks=chunks, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    with open(os.path.join(out, "state.json.partial"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out, "state.json.partial"), os.path.join(out, "state.json"))
    for name in os.listdir(out):
        if name.startswith("state-") and name not in chunks:
            os.remove(os.path.join(out, name))
    return meta


# ---------------------------------------------------------------------------------------------
# models


def load_init(init, device):
    """(t5, clip, vae, transformer, t5_tok, clip_tok) of a pipeline folder, in float32."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    f32 = torch.float32
    t5 = transformers.T5EncoderModel.from_pretrained(os.path.join(init, "text_encoder_2"),
                                                     torch_dtype=f32)
    clip = transformers.CLIPTextModel.from_pretrained(os.path.join(init, "text_encoder"),
                                                      torch_dtype=f32)
    vae = AutoencoderKL.from_pretrained(os.path.join(init, "vae"), torch_dtype=f32)
    transformer = FluxTransformer2DModel.from_pretrained(os.path.join(init, "transformer"),
                                                         torch_dtype=f32)
    t5_tok = transformers.T5TokenizerFast.from_pretrained(os.path.join(init, "tokenizer_2"))
    clip_tok = transformers.CLIPTokenizerFast.from_pretrained(os.path.join(init, "tokenizer"))
    for m in (t5, clip, vae, transformer):
        m.to(device)
    return t5, clip, vae, transformer, t5_tok, clip_tok


def named_trainables(t5, clip, transformer):
    return ([("transformer." + n, p) for n, p in transformer.named_parameters()] +
            [("t5." + n, p) for n, p in t5.named_parameters()] +
            [("clip." + n, p) for n, p in clip.named_parameters()])


class Trainer:
    """The training step: forward (optionally autocast and torch.compile'd), backward, clip,
    fused AdamW, parameter EMA."""

    def __init__(self, t5, clip, transformer, precision, compile_, lr, ema_decay, device):
        import torch
        self.t5, self.clip, self.transformer = t5, clip, transformer
        self.named = named_trainables(t5, clip, transformer)
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99),
                                     fused=device.type == "cuda")
        self.ema = [p.detach().clone().float() for p in self.params]
        self.ema_decay = ema_decay
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.device = device
        self.ids = train.image_ids(8, 8, device)
        self.txt_ids = torch.zeros(train.T5_LEN, 3, device=device)
        for m in (t5, clip, transformer):
            m.train()
        self.eager = self.forward_loss
        self.loss_fn = torch.compile(self.forward_loss) if compile_ else self.forward_loss

    def forward_loss(self, x0, noise, sigma, tids, cids):
        import torch
        s = sigma[:, None, None]
        xt = (1 - s) * x0 + s * noise
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                            enabled=self.amp is not None):
            pooled = self.clip(cids).pooler_output
            text = self.t5(tids)[0]
            pred = self.transformer(hidden_states=xt, encoder_hidden_states=text,
                                    pooled_projections=pooled, timestep=sigma, img_ids=self.ids,
                                    txt_ids=self.txt_ids, guidance=None, return_dict=False)[0]
        return ((pred.float() - (noise - x0)) ** 2).mean()

    def step(self, batch, lr, ema_decay=None):
        import torch
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.loss_fn(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1 - (ema_decay or self.ema_decay))
        return loss


def random_batch(gen, latents, t5_ids, clip_ids, empty, batch, mu, device):
    """A training batch: latents [N, 64, 4C] (packed), caption ids; 10% of captions dropped."""
    import torch
    idx = torch.randint(0, len(latents), (batch,), device=device, generator=gen)
    x0, tids, cids = latents[idx], t5_ids[idx], clip_ids[idx]
    drop = torch.rand(batch, device=device, generator=gen) < 0.1
    tids = torch.where(drop[:, None], empty[0][None], tids)
    cids = torch.where(drop[:, None], empty[1][None], cids)
    sigma = train.sample_sigmas(batch, mu, gen, device)
    noise = torch.randn(x0.shape, device=device, generator=gen)
    return x0, noise, sigma, tids, cids


def profile_steps(trainer, make_batch, lr, n, log, label):
    """torch.profiler over n training steps: kernels per step, GPU-busy share, top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    t0 = time.time()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            trainer.step(make_batch(), lr)
        torch.cuda.synchronize()
    wall = time.time() - t0
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    count = sum(e.count for e in kernels)
    log({"stage": "profile", "label": label, "steps": n, "wall_s_per_step": round(wall / n, 4),
         "gpu_kernel_s_per_step": round(busy / n, 4), "gpu_busy": round(busy / wall, 3),
         "kernels_per_step": round(count / n)})
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]
    for e in top:
        log({"stage": "profile_top", "label": label, "kernel": e.key[:90], "calls": e.count // n,
             "ms_per_step": round(e.self_device_time_total / 1e3 / n, 3)})


# ---------------------------------------------------------------------------------------------
# data


def make_latents(vae, t5_tok, clip_tok, n, seed, workers, device, log):
    import torch
    t0 = time.time()
    images, captions = train.make_data(n, seed, workers, filler_p=0.3)
    t1 = time.time()
    t5_ids = t5_tok(captions, padding="max_length", max_length=train.T5_LEN, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    clip_ids = clip_tok(captions, padding="max_length", max_length=train.CLIP_LEN,
                        truncation=True, return_tensors="pt").input_ids.to(device)
    t2 = time.time()
    raw = train.encode_latents(vae, images, device)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    latents = train.pack((raw - shift) * scale).contiguous()
    if device.type == "cuda":
        torch.cuda.synchronize()
    log({"stage": "data", "images": n, "seed": seed, "draw_s": round(t1 - t0, 1),
         "tokenize_s": round(t2 - t1, 1), "encode_s": round(time.time() - t2, 1),
         "example": captions[:2]})
    empty = (t5_tok([""], padding="max_length", max_length=train.T5_LEN, return_tensors="pt")
             .input_ids[0].to(device),
             clip_tok([""], padding="max_length", max_length=train.CLIP_LEN, return_tensors="pt")
             .input_ids[0].to(device))
    return latents, t5_ids, clip_ids, empty


# ---------------------------------------------------------------------------------------------
# export


def export_state(state_dir, init, model_dir):
    """The state's EMA as a pipeline folder: init's components with the EMA's weights, through
    export.py (float16)."""
    import tempfile

    import torch
    import export
    meta, tensors = read_state(state_dir)
    t5, clip, vae, transformer, t5_tok, clip_tok = load_init(init, torch.device("cpu"))
    with torch.no_grad():
        for name, p in named_trainables(t5, clip, transformer):
            p.copy_(tensors["ema"][name].float())
    run = tempfile.mkdtemp()
    for name, m in (("text_encoder", clip), ("text_encoder_2", t5), ("vae", vae),
                    ("transformer", transformer)):
        m.save_pretrained(os.path.join(run, "components", name))
    shutil.copytree(os.path.join(init, "tokenizer"), os.path.join(run, "tokenizers", "clip"))
    shutil.copytree(os.path.join(init, "tokenizer_2"), os.path.join(run, "tokenizers", "t5"))
    export.export(run, os.path.abspath(model_dir))
    shutil.rmtree(run)
    return meta


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--state", help="folder with the previous job's state.json and chunks")
    p.add_argument("--init", default=DEFAULT_INIT,
                   help="pipeline folder: VAE, tokenizers, and the weights a new run starts from")
    p.add_argument("--export", metavar="MODEL_DIR", help="write --state's EMA as a pipeline folder")
    p.add_argument("--stop-at", type=float, help="time.time() at which training stops")
    p.add_argument("--max-steps", type=int, default=10 ** 9, help="steps in this job, at most")
    p.add_argument("--images", type=int, default=160000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps at a run's start")
    p.add_argument("--rewarm", type=int, default=150, help="warm-up steps at a later job's start")
    p.add_argument("--decay-frac", type=float, default=0.3,
                   help="share of this job's training time over which the lr decays to lr/20")
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--blas", choices=["cublas", "cublaslt"],
                   help="torch.backends.cuda.preferred_blas_library")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward + loss")
    p.add_argument("--sdpa", choices=["any", "no-cudnn"], default="any",
                   help="no-cudnn: keep scaled-dot-product attention off the cuDNN backend (its "
                        "backward fails in bf16/fp16 at this model's shapes on torch 2.11 + cu130)")
    p.add_argument("--save-every", type=float, default=150.0, help="seconds between state saves")
    p.add_argument("--profile-at", type=int, default=60,
                   help="profile a few steps once this job has run this many (0: never)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    a = p.parse_args()
    if a.export:
        meta = export_state(a.state, a.init, a.export)
        print(json.dumps({k: meta[k] for k in ("step", "samples", "job", "loss_ema")}))
        return

    import torch
    t_start = time.time()
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if a.blas:
        torch.backends.cuda.preferred_blas_library(a.blas)
    if a.sdpa == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    os.makedirs(a.out, exist_ok=True)
    log_file = open(os.path.join(a.out, "train_job.jsonl"), "a")

    def log(record):
        record["t"] = round(time.time() - t_start, 1)
        print(json.dumps(record), flush=True)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    meta, tensors = read_state(a.state)
    job = 0 if meta is None else meta["job"] + 1
    cache = os.path.join(a.state or "", "compile_cache.bin")
    if a.compile and a.state and os.path.exists(cache):
        try:  # the previous job's compiled kernels (torch.compiler's portable cache)
            with open(cache, "rb") as f:
                torch.compiler.load_cache_artifacts(f.read())
            print(json.dumps({"stage": "compile_cache_loaded", "bytes": os.path.getsize(cache)}))
        except Exception as e:  # noqa: BLE001 (a cache is an optimisation only)
            print(json.dumps({"stage": "compile_cache_failed", "error": repr(e)[:500]}))
    t5, clip, vae, transformer, t5_tok, clip_tok = load_init(a.init, device)
    trainer = Trainer(t5, clip, transformer, a.precision, a.compile, a.lr, a.ema, device)
    if tensors is not None:
        with torch.no_grad():
            for (name, p), e in zip(trainer.named, trainer.ema):
                p.copy_(tensors["params"][name])
                e.copy_(tensors["ema"][name].float())
        del tensors
    run_step = 0 if meta is None else meta["step"]
    meta = meta or {"step": 0, "samples": 0, "seconds": 0.0, "loss_ema": None, "jobs": [],
                    "init": os.path.relpath(a.init, os.path.join(HERE, "..", ".."))}
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    log({"stage": "start", "job": job, "step": run_step, "card": card, "torch": torch.__version__,
         "cuda": torch.version.cuda, "precision": a.precision, "compile": a.compile,
         "blas": a.blas, "sdpa": a.sdpa, "batch": a.batch, "lr": a.lr, "params": len(trainer.params),
         "numel": sum(p.numel() for p in trainer.params)})
    vae.requires_grad_(False)
    latents, t5_ids, clip_ids, empty = make_latents(vae, t5_tok, clip_tok, a.images,
                                                    1000 + job, a.workers, device, log)
    del vae
    gen = torch.Generator(device=device).manual_seed(2 + 7919 * job)
    mu = train.time_shift_mu(64)

    def make_batch():
        return random_batch(gen, latents, t5_ids, clip_ids, empty, a.batch, mu, device)

    warm = a.warmup if run_step == 0 else a.rewarm
    stop_at = a.stop_at or (time.time() + 60)
    t_train = time.time()
    decay_start = stop_at - a.decay_frac * (stop_at - t_train)
    job_rec = {"job": job, "card": card, "precision": a.precision, "compile": a.compile,
               "blas": a.blas, "sdpa": a.sdpa, "batch": a.batch, "lr": a.lr, "start_step": run_step,
               "decay_frac": a.decay_frac, "images": a.images, "data_seed": 1000 + job}
    loss_ema, last_save, n = meta["loss_ema"], time.time(), 0
    t_window, n_window, first_steps = time.time(), 0, []

    def save(final):
        rec = dict(job_rec, steps=n, end_step=run_step + n,
                   seconds=round(time.time() - t_train, 1),
                   steps_per_s=round(n_window / max(time.time() - t_window, 1e-9), 2),
                   first_steps_s=first_steps, final=final)
        m = dict(meta, step=run_step + n, samples=meta["samples"] + n * a.batch,
                 seconds=meta["seconds"] + time.time() - t_train, loss_ema=loss_ema, job=job,
                 jobs=meta["jobs"] + [rec])
        t0 = time.time()
        with torch.no_grad():
            m = write_state(a.out, m, {
                "params": {k: p.detach().float().cpu() for k, p in trainer.named},
                "ema": {k: e.half().cpu() for (k, _), e in zip(trainer.named, trainer.ema)}})
        log({"stage": "saved", "step": run_step + n, "bytes": m["bytes"],
             "save_s": round(time.time() - t0, 1), "final": final})

    while n < a.max_steps and time.time() < stop_at:
        now = time.time()
        lr = a.lr * min(1.0, (n + 1) / warm)
        if now > decay_start:
            lr = min(lr, a.lr * (1 - 0.95 * (now - decay_start) / max(stop_at - decay_start, 1)))
        t0 = time.time()
        try:
            loss = trainer.step(make_batch(), lr)
        except Exception as e:  # compile failures: go on eagerly (a cuBLAS failure is not caught
            if n > 0 or trainer.loss_fn is trainer.eager:  # here: it ends the process)
                raise
            log({"stage": "compile_failed", "error": repr(e)[:2000]})
            trainer.loss_fn = trainer.eager
            job_rec["compile"] = False
            loss = trainer.step(make_batch(), lr)
        if n < 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            first_steps.append(round(time.time() - t0, 2))
            if n == 4:
                log({"stage": "first_steps", "seconds": first_steps})
                t_window, n_window = time.time(), -1
        n += 1
        n_window += 1
        if n % 20 == 0:
            v = loss.item()
            loss_ema = v if loss_ema is None else 0.9 * loss_ema + 0.1 * v
        if n % 500 == 0:
            log({"stage": "train", "step": run_step + n, "loss": round(loss.item(), 5),
                 "loss_ema": round(loss_ema, 5), "lr": lr,
                 "steps_per_s": round(n_window / (time.time() - t_window), 2),
                 "seconds": round(time.time() - t_train, 1)})
        if a.profile_at and n == a.profile_at and device.type == "cuda":
            profile_steps(trainer, make_batch, lr, 5, log,
                          f"{a.precision}{' compiled' if job_rec['compile'] else ''} b{a.batch}")
            n, n_window = n + 5, n_window + 5  # they trained too
        if time.time() - last_save > a.save_every:
            save(False)
            last_save = time.time()
    if device.type == "cuda":
        torch.cuda.synchronize()
    log({"stage": "end", "steps": n, "step": run_step + n, "loss_ema": loss_ema,
         "steps_per_s": round(n_window / max(time.time() - t_window, 1e-9), 2),
         "samples_per_s": round(n_window * a.batch / max(time.time() - t_window, 1e-9)),
         "seconds": round(time.time() - t_train, 1)})
    save(True)
    if job_rec["compile"]:
        try:  # for the next job, on another machine: torch.compiler's portable cache
            data = torch.compiler.save_cache_artifacts()
            size = len(data[0]) if data else 0
            if 0 < size <= 8 * 2**20:
                with open(os.path.join(a.out, "compile_cache.bin"), "wb") as f:
                    f.write(data[0])
            log({"stage": "compile_cache", "bytes": size, "kept": 0 < size <= 8 * 2**20})
        except Exception as e:  # noqa: BLE001
            log({"stage": "compile_cache", "error": repr(e)[:500]})


if __name__ == "__main__":
    main()
