#!/usr/bin/env python3
"""Trains dgrid's default model (a tiny FLUX.1: T5 + CLIP text encoders, AutoencoderKL,
FluxTransformer2DModel) on the procedural shapes of shapes.py, and saves each component with
save_pretrained into OUT/components/ (export.py turns that into the Diffusers pipeline folder).

    train.py OUT [--images 120000] [--vae-steps 2000] [--minutes 6] [--batch 256] [--lr 4e-4]
                 [--precision bf16,fp16,fp32] [--stop-at UNIX_TIME] [--device cuda]

Stages, all with fixed seeds:
 1. data: N scenes drawn in memory (worker processes), one training-template caption each; 30% of
    the one-shape captions get made-up filler words (shapes.add_filler_words);
 2. tokenizers trained on template captions (tokenizers_build.py);
 3. the VAE alone (L1 + MSE reconstruction weighted up next to colour changes, a small KL term;
    16 latent channels); its latent mean/std become shift_factor / scaling_factor as in FLUX.1's
    VAE config;
 4. the transformer and both text encoders jointly, rectified flow as FLUX trains it: x_t = (1 - s)
    x0 + s noise, target noise - x0, s = the scheduler's time shift (exp(mu), mu from the image
    sequence length, FlowMatchEulerDiscreteScheduler's dynamic shifting) of a logit-normal draw
    (10% uniform draws); no guidance embedding (FLUX.1-schnell style), captions dropped 10% of the
    time; the exported weights are the parameters' EMA. --precision lists the autocast precisions
    to try (each probed in a child process first) before float32 with TF32 matmuls.
Writes OUT/log.jsonl (losses) and OUT/summary.json (settings, times, final losses).
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402
import tokenizers_build  # noqa: E402

T5_LEN = 48  # dgrid.json max_sequence_length: the T5 prompt is padded to this
CLIP_LEN = 77
LATENT_CHANNELS = 16  # as FLUX.1's VAE; 8 rounded the stars' notches (README)
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096)


def _make_chunk(args):
    seed, n, filler_p = args
    rng = np.random.default_rng(seed)
    images, captions = np.empty((n, shapes.SIZE, shapes.SIZE, 3), np.uint8), []
    for i in range(n):
        scene = shapes.sample_scene(rng)
        images[i] = shapes.render(scene)
        text = shapes.caption(scene, rng)
        if len(scene["shapes"]) == 1 and rng.random() < filler_p:
            text = shapes.add_filler_words(text, rng)
        captions.append(text)
    return images, captions


def make_data(n, seed, workers, filler_p=0.0):
    chunk = 2000
    jobs = [(seed * 100003 + k, min(chunk, n - k * chunk), filler_p)
            for k in range((n + chunk - 1) // chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_make_chunk, jobs)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def make_models(t5_tok, clip_tok, latent_channels=LATENT_CHANNELS):
    import transformers
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_LEN, hidden_act="quick_gelu",
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id, projection_dim=64))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(t5_tok), d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
        relative_attention_num_buckets=16, relative_attention_max_distance=64,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
        pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64],
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=16,
        scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=2, num_single_layers=4,
        attention_head_dim=32, num_attention_heads=6, joint_attention_dim=64,
        pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=[8, 12, 12])
    return t5, clip, vae, transformer


def load_models(comp):
    """The (t5, clip, vae, transformer) a run saved in comp/ (save_pretrained folders)."""
    import transformers
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    return (transformers.T5EncoderModel.from_pretrained(os.path.join(comp, "text_encoder_2")),
            transformers.CLIPTextModel.from_pretrained(os.path.join(comp, "text_encoder")),
            AutoencoderKL.from_pretrained(os.path.join(comp, "vae")),
            FluxTransformer2DModel.from_pretrained(os.path.join(comp, "transformer")))


def to_pixels(images_u8, device):
    import torch
    x = torch.from_numpy(images_u8).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def edge_weight(x, weight):
    """1 + weight on pixels next to a colour change (the 3x3 neighbourhood differs): a shape is its
    outline, which covers few pixels, so a plain pixel loss lets the VAE round a star's notches and
    a square's corners while the mean error stays small."""
    import torch.nn.functional as F
    diff = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    vert = F.pad(diff, (0, 0, 0, 1)) + F.pad(diff, (0, 0, 1, 0))
    diff = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    horiz = F.pad(diff, (0, 1, 0, 0)) + F.pad(diff, (1, 0, 0, 0))
    edge = (F.max_pool2d(vert + horiz, 3, stride=1, padding=1) > 0.05).float()
    return 1.0 + weight * edge


def train_vae(vae, images, steps, batch, device, log, edge=0.0):
    import torch
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(1)
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen).numpy()
        x = to_pixels(images[idx], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample.float()
        kl = post.kl().mean() / (x[0].numel())
        w = edge_weight(x, edge)
        err = rec - x
        loss = (w * (err.abs() + err ** 2)).mean() / w.mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log({"stage": "vae", "step": step, "loss": loss.item(), "kl": kl.item()})
    vae.eval()


def encode_latents(vae, images, device, batch=1024):
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(to_pixels(images[i:i + batch], device)).latent_dist.mean.float())
    return torch.cat(out)


def pack(latents):
    """[B, C, H, W] -> [B, H/2 * W/2, 4C], as FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h2, w2, device):
    import torch
    ids = torch.zeros(h2, w2, 3, device=device)
    ids[..., 1] = torch.arange(h2, device=device)[:, None]
    ids[..., 2] = torch.arange(w2, device=device)[None, :]
    return ids.reshape(-1, 3)


def time_shift_mu(seq_len):
    s = SCHEDULER
    m = (s["max_shift"] - s["base_shift"]) / (s["max_image_seq_len"] - s["base_image_seq_len"])
    return seq_len * m + s["base_shift"] - m * s["base_image_seq_len"]


def sample_sigmas(n, mu, gen, device, uniform_p=0.1):
    """Training noise levels: a logit-normal draw (SD3/FLUX) put through the scheduler's time shift
    for this image size, with a fraction drawn uniformly instead so that the ends (sigma near 1,
    where the layout and outline of the shape are decided) are not starved."""
    import torch
    u = torch.sigmoid(torch.randn(n, device=device, generator=gen))
    flat = torch.rand(n, device=device, generator=gen)
    u = torch.where(torch.rand(n, device=device, generator=gen) < uniform_p, flat, u)
    return math.exp(mu) / (math.exp(mu) + (1 / u.clamp(1e-4, 1 - 1e-4) - 1))


def train_flux(models, latents, t5_ids, clip_ids, empty, a, device, log, stop_at=None, state=None):
    """Rectified-flow training of (t5, clip, transformer) for a.minutes in all (the learning-rate
    schedule spans them), stopping early at stop_at (a time.time() value); `state` (from an earlier
    call's return value) continues a stopped run. a.precision is "fp32" (TF32 matmuls), "bf16" or
    "fp16" (autocast, fp16 with a GradScaler). Leaves the parameters' EMA in the models and returns
    (steps, loss EMA, state to resume from)."""
    import torch
    t5, clip, transformer = models
    params = list(transformer.parameters()) + list(t5.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema_params = [p.detach().clone().float() for p in params]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=a.precision == "fp16")
    warm = 300
    gen = torch.Generator(device=device).manual_seed(2)
    b, c, h, w = latents.shape
    ids = image_ids(h // 2, w // 2, device)
    txt_ids = torch.zeros(T5_LEN, 3, device=device)
    mu = time_shift_mu((h // 2) * (w // 2))
    for m in (t5, clip, transformer):
        m.train()
    start, step, ema, done = time.time(), 0, None, 0.0  # done: seconds trained by earlier calls
    if state is not None:
        with torch.no_grad():
            for p, v, e, ev in zip(params, state["params"], ema_params, state["ema"]):
                p.copy_(v)
                e.copy_(ev)
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["gen"])
        step, ema, done = state["step"], state["loss_ema"], state["seconds"]
    total = a.minutes * 60
    end = start + max(0.0, total - done)
    if stop_at is not None:
        end = min(end, stop_at)
    batch = a.batch
    while step < a.max_steps and time.time() < end:
        frac = (done + time.time() - start) / total
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = max(lr, a.lr / 20)
        idx = torch.randint(0, b, (batch,), device=device, generator=gen)
        x0 = pack(latents[idx])
        tids, cids = t5_ids[idx], clip_ids[idx]
        drop = torch.rand(batch, device=device, generator=gen) < 0.1
        tids = torch.where(drop[:, None], empty[0][None], tids)
        cids = torch.where(drop[:, None], empty[1][None], cids)
        sigma = sample_sigmas(batch, mu, gen, device)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pooled = clip(cids).pooler_output
            text = t5(tids)[0]
            pred = transformer(hidden_states=xt, encoder_hidden_states=text,
                               pooled_projections=pooled, timestep=sigma, img_ids=ids,
                               txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        loss = ((pred.float() - (noise - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        # Parameter EMA (what is exported): decay ramps up to a.ema so early steps don't linger.
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach().float() for p in params], 1 - decay)
        if step % 200 == 0:
            ema = loss.item() if ema is None else ema
            log({"stage": "flux", "step": step, "loss": loss.item(), "ema": ema, "lr": lr,
                 "seconds": round(time.time() - start, 1)})
        if step % 20 == 0:
            ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        step += 1
    log({"stage": "flux", "step": step, "ema": ema, "final": True, "samples": step * batch,
         "seconds": round(time.time() - start, 1)})
    state = {"params": [p.detach().cpu().clone() for p in params],
             "ema": [e.cpu() for e in ema_params], "opt": opt.state_dict(),
             "scaler": scaler.state_dict(), "gen": gen.get_state(), "step": step,
             "loss_ema": ema, "seconds": done + time.time() - start}
    with torch.no_grad():
        for p, e in zip(params, ema_params):
            p.copy_(e.to(p.dtype))
    for m in (t5, clip, transformer):
        m.eval()
    return step, ema, state


def start_precision_probes(wanted, latent_channels, batch):
    """Starts one child process per reduced precision in `wanted` ("bf16", "fp16"), each running an
    autocast forward + backward of the real model shapes; pick_precision() reads them. A child,
    because a failed cuBLAS call (an earlier run's bf16 backward ended in
    CUBLAS_STATUS_EXECUTION_FAILED) can leave the CUDA context of its process unusable. They run
    while the data set is drawn."""
    import subprocess
    return [(p, None if p == "fp32" else subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--probe", p, "--latent-channels",
         str(latent_channels), "--batch", str(batch), "unused"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for p in wanted]


def pick_precision(probes, log):
    """The first of the probed precisions whose child succeeded (fp32 needs no probe)."""
    import subprocess
    chosen = None
    for p, proc in probes:
        if proc is None:
            ok, out = True, ""
        else:
            try:
                out = proc.communicate(timeout=120)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0] + "\n(timed out)"
            ok = proc.returncode == 0
        log({"stage": "precision_probe", "precision": p, "ok": ok, "output": out[-600:]})
        if ok and chosen is None:
            chosen = p
    return chosen or "fp32"


class _ProbeTokenizer:
    """Stands in for a tokenizer in make_models (the probe needs only vocabulary sizes and ids)."""

    def __init__(self, n):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, n - 2, n - 1, 0

    def __len__(self):
        return self.n


def run_probe(precision, latent_channels, n):
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t5, clip, _, transformer = make_models(_ProbeTokenizer(312), _ProbeTokenizer(668),
                                           latent_channels)
    for m in (t5, clip, transformer):
        m.to(device).train()
    params = [p for m in (t5, clip, transformer) for p in m.parameters()]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for _ in range(3):
        with torch.autocast(device.type, dtype=amp):
            pooled = clip(torch.randint(0, 668, (n, CLIP_LEN), device=device)).pooler_output
            text = t5(torch.randint(0, 312, (n, T5_LEN), device=device))[0]
            pred = transformer(hidden_states=torch.randn(n, 64, 4 * latent_channels, device=device),
                               encoder_hidden_states=text, pooled_projections=pooled,
                               timestep=torch.rand(n, device=device),
                               img_ids=image_ids(8, 8, device),
                               txt_ids=torch.zeros(T5_LEN, 3, device=device), guidance=None,
                               return_dict=False)[0]
        pred.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    print("ok")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--images", type=int, default=120000)
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-batch", type=int, default=128)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--max-steps", type=int, default=10 ** 9)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() - 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.999, help="decay of the exported parameter EMA")
    p.add_argument("--precision", default="fp32",
                   help="transformer stage: fp32 (TF32 matmuls), bf16, fp16, or a comma list "
                        "(bf16,fp16,fp32): the first that passes a child-process probe is used")
    p.add_argument("--latent-channels", type=int, default=LATENT_CHANNELS)
    p.add_argument("--vae-edge-weight", type=float, default=4.0,
                   help="extra VAE loss weight on pixels next to a colour change")
    p.add_argument("--filler-p", type=float, default=0.3,
                   help="share of single-shape captions given made-up filler words")
    p.add_argument("--stop-at", type=float,
                   help="time.time() by which the transformer stage stops, whatever --minutes says")
    p.add_argument("--resume", action="store_true",
                   help="continue the transformer stage of the run in OUT (its tokenizers, models "
                        "and flux_state.pt; same --images/--seed/--minutes): --minutes is the "
                        "whole stage's length, so runs longer than one call can be split. Without "
                        "flux_state.pt (a run that came back without it), training restarts from "
                        "the saved weights (the EMA) with a new optimizer and a new --minutes "
                        "schedule")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.probe:
        return run_probe(a.probe, a.latent_channels, a.batch)

    import torch
    import transformers
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device(a.device)
    wanted = a.precision.split(",") if device.type == "cuda" else ["fp32"]
    probes = start_precision_probes(wanted, a.latent_channels, a.batch)
    os.makedirs(a.out, exist_ok=True)
    log_file = open(os.path.join(a.out, "log.jsonl"), "a" if a.resume else "w")
    t_start = time.time()

    def log(record):
        record["t"] = round(time.time() - t_start, 1)
        print(json.dumps(record), flush=True)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    images, captions = make_data(a.images, a.seed, a.workers, a.filler_p)
    log({"stage": "data", "images": len(images), "example": captions[:4]})
    comp = os.path.join(a.out, "components")
    tok_dir = os.path.join(a.out, "tokenizers")
    if a.resume:
        t5_dir, clip_dir = os.path.join(tok_dir, "t5"), os.path.join(tok_dir, "clip")
    else:  # from template captions only (the filler words are random letters, not language)
        corpus = shapes.corpus(min(20000, a.images), seed=a.seed)
        t5_dir = tokenizers_build.build_t5(tok_dir, corpus)
        clip_dir = tokenizers_build.build_clip(tok_dir, corpus)
    t5_tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    clip_tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    t5_ids = t5_tok(captions, padding="max_length", max_length=T5_LEN, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    clip_ids = clip_tok(captions, padding="max_length", max_length=CLIP_LEN, truncation=True,
                        return_tensors="pt").input_ids.to(device)
    empty = (t5_tok([""], padding="max_length", max_length=T5_LEN, return_tensors="pt")
             .input_ids[0].to(device),
             clip_tok([""], padding="max_length", max_length=CLIP_LEN, return_tensors="pt")
             .input_ids[0].to(device))
    assert int(t5_ids.max()) < len(t5_tok) and int(clip_ids.max()) < len(clip_tok)
    lengths = (t5_ids != t5_tok.pad_token_id).sum(1)
    log({"stage": "tokenizers", "t5_vocab": len(t5_tok), "clip_vocab": len(clip_tok),
         "t5_max_len": int(lengths.max()), "t5_truncated": int((lengths >= T5_LEN).sum())})

    torch.manual_seed(a.seed)
    t5, clip, vae, transformer = (load_models(comp) if a.resume else
                                  make_models(t5_tok, clip_tok, a.latent_channels))
    for m in (t5, clip, vae, transformer):
        m.to(device)
    log({"stage": "params", **{n: sum(p.numel() for p in m.parameters()) for n, m in
                               (("t5", t5), ("clip", clip), ("vae", vae),
                                ("transformer", transformer))}})
    if a.resume:
        raw = encode_latents(vae, images, device)
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    else:
        train_vae(vae, images, a.vae_steps, a.vae_batch, device, log, a.vae_edge_weight)
        raw = encode_latents(vae, images, device)
        shift = raw.mean().item()
        scale = 1.0 / (raw - shift).std().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (raw - shift) * scale
    with torch.no_grad():  # reconstruction error of the final VAE, in pixel units
        x = to_pixels(images[:512], device)
        rec = vae.decode(latents[:512] / scale + shift).sample.clamp(-1, 1)
        rec_err = ((rec - x).abs().mean() * 127.5).item()
    log({"stage": "vae_done", "shift_factor": shift, "scaling_factor": scale,
         "recon_mae_pixels": rec_err})
    del images
    a.precision = pick_precision(probes, log)
    state_path = os.path.join(a.out, "flux_state.pt")
    state = None
    if a.resume and os.path.exists(state_path):
        state = torch.load(state_path, weights_only=False)
    elif a.resume:
        log({"stage": "restart", "from": comp, "note": "no flux_state.pt: the saved weights, a new "
             "optimizer and learning-rate schedule"})
    steps, ema, state = train_flux((t5, clip, transformer), latents, t5_ids, clip_ids, empty, a,
                                   device, log, a.stop_at, state)
    torch.save(state, state_path + ".partial")
    os.replace(state_path + ".partial", state_path)
    os.makedirs(comp, exist_ok=True)
    for name, m in (("text_encoder", clip), ("text_encoder_2", t5), ("vae", vae),
                    ("transformer", transformer)):
        m.to("cpu").save_pretrained(os.path.join(comp, name))
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "seconds": round(time.time() - t_start, 1), "flux_steps": steps, "flux_loss_ema": ema,
               "vae_recon_mae_pixels": rec_err, "args": vars(a)}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log({"stage": "done", **summary})


if __name__ == "__main__":
    main()
