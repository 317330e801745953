#!/usr/bin/env python3
"""`dgrid generate --local` on tiny random Wan pipelines against diffusers' WanPipeline.

Builds whole WanPipeline folders (Wan2.1's layout, Wan2.2 A14B's two experts, Wan2.2 TI2V-5B's
per-token timesteps and 16x residual VAE, and Wan2.1 with the flow-match Euler scheduler in place
of UniPC) with diffusers /
transformers (a SentencePiece tokenizer trained
on the spot, a tiny UMT5EncoderModel, WanTransformer3DModel, AutoencoderKLWan and Wan's UniPC
scheduler config), runs diffusers' own pipeline from the prompt (output_type="np", frames rounded to
8 bits as numpy_to_pil does) and the dgrid CLI on the saved folder, and compares every frame: the
acceptance bar is within 1 of 255 per value. Prompts exercise WanPipeline's prompt cleaning
(HTML entities, runs of whitespace). The first run is also written as an MP4 (checked to be an
H.264 MP4; its pixels are checked by video_io_test's round trip). Every run is repeated with the
UMT5 encoder and the VAE offloaded (--text-encoder-device offload --vae-device offload; on the CPU
the weights are copied CPU to CPU around each use): the frames must be the same bytes.

Then the cluster: `dgrid up` on each folder (encoder, denoiser and decoder processes, once with
tensors inline in gRPC and once over UCX), and every run again through `dgrid generate --server`:
the frames and the MP4 must equal the single-process ones byte for byte. Bad video requests get
INVALID_ARGUMENT naming the field; corrupt checkpoints a status naming the file and tensor, in one
process and from the failing stage of `dgrid up`.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from PIL import Image

from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                       WanPipeline, WanTransformer3DModel)

SOURCE = os.environ.get("DGRID_SOURCE_DIR", os.getcwd())
BUILD = os.environ.get("DGRID_BUILD_DIR", os.path.join(SOURCE, "build"))
sys.path.insert(0, os.path.join(SOURCE, "tests", "unit", "encoder", "tokenizers"))
sys.path.insert(0, os.path.join(SOURCE, "tests", "parity", "wan"))
from make_tokenizer_fixtures import build_t5  # noqa: E402
from wan_models import perturb  # noqa: E402

sys.path.insert(0, os.path.join(SOURCE, "tests", "e2e"))
from conftest import Cluster, tiny_model  # noqa: E402  (`dgrid up` on loopback, as e2e runs it)

RUNS = [
    dict(prompt="a red  circle\n on a &amp;quot;blue&amp;quot; background ", negative="blurry",
         guidance=5.0, frames=5, steps=3, width=48, height=32, seed=7),
    dict(prompt="\tgreen square", negative=None, guidance=4.0, frames=9, steps=2, width=32,
         height=48, seed=3),
    dict(prompt="one frame, no guidance", negative=None, guidance=1.0, frames=1, steps=2, width=32,
         height=32, seed=5),
    # Wan2.2 A14B's layout: transformer_2 below boundary_ratio 0.875, its own guidance scale.
    dict(pipeline="a14b", prompt="a blue star", negative="noise", guidance=4.0, guidance_2=3.0,
         frames=5, steps=6, width=32, height=32, seed=9),
    # Wan2.2 TI2V-5B's layout: per-token timesteps (expand_timesteps) and the residual, patchified
    # VAE that compresses 16x per side (one process only).
    dict(pipeline="ti2v", prompt="a green square", negative="blurry", guidance=5.0, frames=5,
         steps=3, width=64, height=32, seed=4),
    # The same model with FlowMatchEulerDiscreteScheduler in place of UniPC (one process only).
    dict(pipeline="euler", prompt="a red circle", negative="blurry", guidance=5.0, frames=5,
         steps=4, width=48, height=32, seed=7),
]


def build_pipeline(work):
    tok_dir = build_t5(os.path.join(work, "tok"))
    tokenizer = transformers.T5TokenizerFast.from_pretrained(tok_dir)
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id)).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=24, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
        rope_max_seq_len=32).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.05],
                           latents_std=[1.5, 0.8, 2.0, 1.1]).eval()
    perturb(transformer, 1)
    perturb(vae, 2)
    # Wan2.2 TI2V-5B's layout, tiny: a 6-channel latent, the residual VAE with patch 2.
    vae_22 = perturb(AutoencoderKLWan(
        base_dim=8, z_dim=6, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
        out_channels=12, scale_factor_spatial=16,
        latents_mean=[0.1, -0.2, 0.3, 0.05, 0.0, 0.2],
        latents_std=[1.5, 0.8, 2.0, 1.1, 0.9, 1.3]).eval(), 3)
    transformer_22 = perturb(WanTransformer3DModel(
        **dict(transformer.config, in_channels=6, out_channels=6)).eval(), 4)
    torch.manual_seed(5)
    transformer_2 = perturb(WanTransformer3DModel(**transformer.config).eval(), 6)
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True)
    pipes = {
        "t2v": WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                           scheduler=scheduler, transformer=transformer),
        "a14b": WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                            scheduler=scheduler, transformer=transformer,
                            transformer_2=transformer_2, boundary_ratio=0.875),
        "ti2v": WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae_22,
                            scheduler=scheduler, transformer=transformer_22,
                            expand_timesteps=True),
        "euler": WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                             transformer=transformer),
    }
    folders = {}
    for name, pipe in pipes.items():
        folder = folders[name] = os.path.join(work, f"tiny-wan-{name}")
        pipe.save_pretrained(folder)
        # Wan checkpoints carry tokenizer/spiece.model; transformers 5 saves only tokenizer.json.
        if not os.path.exists(os.path.join(folder, "tokenizer", "spiece.model")):
            shutil.copy(os.path.join(tok_dir, "spiece.model"), os.path.join(folder, "tokenizer"))
    return pipes, folders


def run_cli(args, **kw):
    return subprocess.run([os.path.join(BUILD, "cli", "dgrid"), *args], capture_output=True,
                          text=True, timeout=300, **kw)


def local_args(run, folder):
    args = ["--model", folder, "--prompt", run["prompt"], "--width", str(run["width"]),
            "--height", str(run["height"]), "--frames", str(run["frames"]), "--steps",
            str(run["steps"]), "--guidance", str(run["guidance"]), "--seed", str(run["seed"]),
            "--max-sequence-length", "32"]
    if run["negative"] is not None:
        args += ["--negative-prompt", run["negative"]]
    if "guidance_2" in run:
        args += ["--guidance-2", str(run["guidance_2"])]
    return args


OFFLOAD_FLAGS = ["--text-encoder-device", "offload", "--vae-device", "offload"]


def check_offload(i, cmd, out_dir):
    """The run `cmd` (written to out_dir) again with model offload: the same frames, byte for
    byte."""
    offload_dir = out_dir + "_offload"
    proc = subprocess.run([offload_dir if a == out_dir else a for a in cmd] + OFFLOAD_FLAGS,
                          capture_output=True, text=True, timeout=300)
    ok = proc.returncode == 0 and read_tree(offload_dir) == read_tree(out_dir)
    print(f"run {i}: with model offload: "
          f"{'frames equal byte for byte' if ok else 'DIFFER ' + proc.stderr[-300:]}")
    return 0 if ok else 1


def read_tree(path):
    """A file's bytes, or a folder's {name: bytes}."""
    if os.path.isdir(path):
        return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}
    return open(path, "rb").read()


def check_cluster(work, folders):
    """Every run through a cluster (inline and UCX) equals --local byte for byte."""
    failures = 0
    for transport in (["--transport", "inline"],
                      ["--transport", "ucx", "--inline-threshold-bytes", "0"]):
        for pipeline in ("t2v", "a14b"):
            runs = [r for r in RUNS if r.get("pipeline", "t2v") == pipeline]
            try:
                # A deployment bound on frames x width x height (run 1's 9 x 32 x 48 is 13 824).
                bound = ["--max-video-pixels", "20736"] if pipeline == "t2v" else []
                up = Cluster(folders[pipeline], extra=transport + bound)
            except RuntimeError as e:
                print(f"cluster {pipeline} {transport[1]}: {e}")
                failures += 1
                continue
            try:
                for i, run in enumerate(runs):
                    # The animated WebP for the first run only (it is lossless: the frames are
                    # checked against the PNG frames in main()).
                    for out_name in ("frames", "video.mp4") + (("video.webp",) if i == 0 else ()):
                        outs = {}
                        for where in ("local", "cluster"):
                            out = os.path.join(work, f"{where}-{pipeline}-{i}-{out_name}")
                            shutil.rmtree(out, ignore_errors=True)
                            flags = ["--local"] if where == "local" else [
                                "--server", up.grpc_address, "--quiet", "--model",
                                os.path.basename(folders[pipeline])]
                            args = local_args(run, folders[pipeline])
                            if where == "cluster":
                                args = args[2:]  # the cluster names the model by its name
                            proc = run_cli(["generate", *flags, *args, "-o", out])
                            if proc.returncode != 0:
                                print(f"{where} {pipeline} run {i}: {proc.stderr[-600:]}")
                                failures += 1
                                break
                            outs[where] = read_tree(out)
                        if len(outs) == 2:
                            same = outs["local"] == outs["cluster"]
                            print(f"cluster {transport[1]} {pipeline} run {i} {out_name}: "
                                  f"{'equal to --local byte for byte' if same else 'DIFFERS'}")
                            failures += not same
                if pipeline == "t2v":
                    failures += check_python_client(up.grpc_address, folders[pipeline], work)
                    failures += check_bad_requests(up.grpc_address, folders[pipeline])
                    failures += check_http_image(up.http_address, folders[pipeline])
                    failures += check_http_videos(up.http_address, folders[pipeline], work)
            finally:
                up.stop()
    return failures


def check_bad_requests(address, folder):
    """Video requests the model cannot take: INVALID_ARGUMENT naming the field."""
    failures = 0
    base = ["generate", "--server", address, "--quiet", "--model", os.path.basename(folder),
            "--prompt", "x", "--width", "32", "--height", "32", "--steps", "1",
            "--max-sequence-length", "32"]
    cases = [(["--frames", "6"], "num_frames"), (["--width", "40"], "width"),
             (["--frames", "5", "-o", "x.png"], "output_format"),
             (["--frames", "5", "--guidance-2", "2"], "guidance_scale_2"),
             (["--frames", "13", "--width", "48", "--height", "48"],
              "num_frames: 13 frames of 48x48 are 29952 pixels; this server takes at most 20736")]
    for extra, field in cases:
        proc = run_cli(base + extra)
        ok = proc.returncode == 2 and "INVALID_ARGUMENT" in proc.stderr and field in proc.stderr
        print(f"bad request {extra}: {'refused naming ' + field if ok else proc.stderr[-300:]}")
        failures += not ok
    return failures


def check_python_client(address, folder, work):
    """dgrid_client's generate_video: the MP4 of the first run, equal to --local's."""
    sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
    from dgrid_client import Client
    run = RUNS[0]
    with Client(address) as client:
        video = client.generate_video(
            run["prompt"], num_frames=run["frames"], model=os.path.basename(folder),
            negative_prompt=run["negative"], width=run["width"], height=run["height"],
            num_inference_steps=run["steps"], guidance_scale=run["guidance"], seed=run["seed"],
            max_sequence_length=32)
    local = open(os.path.join(work, "local-t2v-0-video.mp4"), "rb").read()
    ok = (video.data == local and video.num_frames == run["frames"] and video.fps == 16
          and (video.width, video.height) == (run["width"], run["height"]))
    print(f"python client generate_video: {video.num_frames} frames {video.width}x{video.height} "
          f"at {video.fps} fps, {'equal to --local' if ok else 'DIFFERS'}")
    return not ok


def check_http_image(http_address, folder):
    """The OpenAI-style images endpoint on a video model: one picture (a one-frame video)."""
    import base64
    import io
    import json
    import urllib.request
    body = json.dumps({"model": os.path.basename(folder), "prompt": "a red circle",
                       "size": "48x32", "num_inference_steps": 2, "seed": 1}).encode()
    req = urllib.request.Request(http_address + "/v1/images/generations", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.loads(r.read())
        picture = Image.open(io.BytesIO(base64.b64decode(reply["data"][0]["b64_json"])))
        ok = picture.format == "PNG" and picture.size == (48, 32)
        print(f"HTTP images endpoint: {picture.format} {picture.size}")
    except Exception as e:  # noqa: BLE001 - any failure is reported and counted
        print(f"HTTP images endpoint: {e}")
        ok = False
    return not ok


def check_two_families(work, wan_folder):
    """One `dgrid up` serving the tiny FLUX pipeline and the tiny Wan2.1 pipeline at once (a set of
    stages each): requests are routed by model, each result equals its model's --local result byte
    for byte, and a request naming no model goes to the first."""
    sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
    from dgrid_client import Client
    flux = tiny_model()
    failures = 0
    up = Cluster(f"{flux},{wan_folder}")
    try:
        with Client(up.grpc_address) as client:
            names = sorted(m.name for m in client.list_models())
        expected = sorted([os.path.basename(flux), os.path.basename(wan_folder)])
        print(f"two families: ListModels {names}")
        failures += names != expected
        image_args = ["--prompt", "a red circle", "--width", "64", "--height", "64", "--steps",
                      "2", "--seed", "3"]
        outs = {}
        for where, flags in (("local", ["--local", "--model", flux]),
                             ("cluster", ["--server", up.grpc_address, "--quiet", "--model",
                                          os.path.basename(flux)]),
                             ("cluster-default", ["--server", up.grpc_address, "--quiet"])):
            out = os.path.join(work, f"two-{where}.png")
            proc = run_cli(["generate", *flags, *image_args, "-o", out])
            outs[where] = open(out, "rb").read() if proc.returncode == 0 else proc.stderr
        ok = outs["local"] == outs["cluster"] == outs["cluster-default"]
        print(f"two families: FLUX image by name and by default "
              f"{'equal to --local' if ok else 'DIFFER'}")
        failures += not ok
        run = RUNS[0]
        out = os.path.join(work, "two-wan.mp4")
        args = local_args(run, wan_folder)[2:]
        proc = run_cli(["generate", "--server", up.grpc_address, "--quiet", "--model",
                        os.path.basename(wan_folder), *args, "-o", out])
        local = open(os.path.join(work, "local-t2v-0-video.mp4"), "rb").read()
        ok = proc.returncode == 0 and open(out, "rb").read() == local
        print(f"two families: Wan video {'equal to --local' if ok else proc.stderr[-300:]}")
        failures += not ok
        # Video fields sent to the image model are refused naming the field.
        proc = run_cli(["generate", "--server", up.grpc_address, "--quiet", "--model",
                        os.path.basename(flux), "--prompt", "x", "--frames", "5"])
        ok = (proc.returncode == 2 and "INVALID_ARGUMENT" in proc.stderr
              and "num_frames" in proc.stderr)
        print("two families: --frames 5 on FLUX: "
              f"{'refused naming num_frames' if ok else proc.stderr[-300:]}")
        failures += not ok
    finally:
        up.stop()
    return failures


def check_corrupt_checkpoints(work, folder):
    """A truncated transformer, a mis-shaped VAE tensor and a text encoder missing a tensor: both
    `dgrid generate --local` and `dgrid up` (the failing stage's process) exit with a status naming
    the file or folder and the tensor, and nothing hangs."""
    from safetensors.torch import load_file, save_file
    failures = 0
    cases = []
    bad = os.path.join(work, "bad-truncated")
    shutil.copytree(folder, bad)
    path = os.path.join(bad, "transformer", "diffusion_pytorch_model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    cases.append((bad, "DATA_LOSS", [path, "scale_shift_table", "truncated"]))
    bad = os.path.join(work, "bad-shape")
    shutil.copytree(folder, bad)
    path = os.path.join(bad, "vae", "diffusion_pytorch_model.safetensors")
    tensors = load_file(path)
    tensors["decoder.conv_out.weight"] = torch.zeros(3, 3)
    save_file(tensors, path)
    cases.append((bad, "INVALID_ARGUMENT", [os.path.join(bad, "vae"), "decoder.conv_out.weight"]))
    bad = os.path.join(work, "bad-missing")
    shutil.copytree(folder, bad)
    path = os.path.join(bad, "text_encoder", "model.safetensors")
    tensors = load_file(path)
    del tensors["shared.weight"]
    save_file(tensors, path)
    cases.append((bad, "NOT_FOUND", [os.path.join(bad, "text_encoder"), "shared.weight"]))
    for bad, code, words in cases:
        local = run_cli(["generate", "--local", "--model", bad, "--prompt", "x", "--frames", "5",
                         "--width", "32", "--height", "32", "--steps", "1", "-o",
                         os.path.join(work, "never.mp4")])
        up = run_cli(["up", "--model", bad, "--port", "0", "--http-port", "0", "--log-dir",
                      os.path.join(bad, "logs"), "--ready-timeout-s", "120"])
        for what, proc in (("--local", local), ("dgrid up", up)):
            ok = proc.returncode != 0 and code in proc.stderr and all(w in proc.stderr
                                                                       for w in words)
            print(f"corrupt {os.path.basename(bad)} via {what}: "
                  f"{'exit ' + str(proc.returncode) + ', ' + code + ' naming file and tensor' if ok else proc.stderr[-500:]}")
            failures += not ok
    return failures


def check_http_videos(http_address, folder, work):
    """OpenAI's Videos API through the `openai` package: create, poll, download (the MP4 equals
    --local's), list and delete; a failed job and bad requests answered as they should be."""
    import json
    import urllib.error
    import urllib.request
    import openai
    client = openai.OpenAI(base_url=http_address + "/v1", api_key="unused", max_retries=0)
    run, name = RUNS[0], os.path.basename(folder)
    failures = 0

    def check(what, ok, detail=""):
        nonlocal failures
        print(f"HTTP videos: {what}: {'ok' if ok else 'FAILED ' + str(detail)}")
        failures += not ok

    # "seconds" 0.25 at the model's 16 fps: 4 frame intervals, so 5 frames as run 0 has.
    extra = {"num_inference_steps": run["steps"], "guidance_scale": run["guidance"],
             "seed": run["seed"], "negative_prompt": run["negative"], "max_sequence_length": 32}
    try:
        video = client.videos.create_and_poll(model=name, prompt=run["prompt"], seconds="0.25",
                                              size=f"{run['width']}x{run['height']}",
                                              extra_body=extra, poll_interval_ms=50)
        check("create_and_poll", video.status == "completed" and video.progress == 100
              and video.size == "48x32" and video.seconds == "0.25" and video.completed_at
              and video.model == name, video)
        data = client.videos.download_content(video.id).read()
        local = open(os.path.join(work, "local-t2v-0-video.mp4"), "rb").read()
        check("download_content equals --local's MP4", data == local, f"{len(data)} bytes")
        listed = client.videos.list()
        check("list", any(v.id == video.id for v in listed.data), listed)
        deleted = client.videos.delete(video.id)
        check("delete", deleted.deleted and deleted.id == video.id, deleted)
        try:
            client.videos.retrieve(video.id)
            check("retrieve after delete", False, "still there")
        except openai.NotFoundError:
            check("retrieve after delete is 404", True)
        # guidance_scale_2 on a one-expert model passes the orchestrator and is refused by the
        # denoiser: the job is accepted and then fails, with the stage's reason.
        failed = client.videos.create_and_poll(model=name, prompt="x", size="32x32",
                                               extra_body={"num_frames": 5, "guidance_scale_2": 2,
                                                           "num_inference_steps": 1},
                                               poll_interval_ms=50)
        check("failed job", failed.status == "failed" and failed.error is not None
              and failed.error.code == "invalid_argument"
              and "guidance_scale_2" in failed.error.message, failed)
        try:
            client.videos.download_content(failed.id)
            check("content of a failed job", False, "answered")
        except openai.APIStatusError as e:
            check("content of a failed job is 409", e.status_code == 409, e)
    except Exception as e:  # noqa: BLE001 - any failure is reported and counted
        check("openai package", False, repr(e))

    def post(body, content_type="application/json"):
        req = urllib.request.Request(http_address + "/v1/videos", data=body,
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    bad = [({"prompt": "x", "model": name, "seconds": "100"}, 400, "seconds"),
           ({"prompt": "x", "model": name, "seconds": "soon"}, 400, "seconds"),
           ({"prompt": "x", "model": name, "size": "40x32"}, 400, "width"),
           ({"prompt": "x", "model": name, "num_frames": 6}, 400, "num_frames"),
           ({"prompt": "x", "model": name, "input_reference": "a.png"}, 400, "input_reference"),
           ({"prompt": "x", "model": "no-such-model"}, 404, "model"),
           ({"model": name}, 400, "prompt"),
           ({"prompt": "x", "model": name, "fps": 0}, 400, "fps")]
    for body, status, field in bad:
        code, reply = post(json.dumps(body).encode())
        check(f"bad {body} -> {status} naming {field}",
              code == status and reply["error"]["param"] == field, (code, reply))
    code, reply = post(b"{not json")
    check("malformed JSON -> 400", code == 400 and reply["error"]["param"] == "body", reply)
    for path, status in (("/v1/videos/video_nope", 404), ("/v1/videos/video_nope/content", 404),
                         ("/v1/videos?limit=0", 400), ("/v1/videos?order=sideways", 400)):
        try:
            with urllib.request.urlopen(http_address + path, timeout=60) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        check(f"GET {path} -> {status}", code == status, code)
    return failures


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = tempfile.mkdtemp(prefix="dgrid-wan-cli-")
    failures = 0
    try:
        pipes, folders = build_pipeline(work)
        for i, run in enumerate(RUNS):
            pipe, folder = pipes[run.get("pipeline", "t2v")], folders[run.get("pipeline", "t2v")]
            with torch.no_grad():
                frames = pipe(prompt=run["prompt"], negative_prompt=run["negative"],
                              height=run["height"], width=run["width"], num_frames=run["frames"],
                              num_inference_steps=run["steps"], guidance_scale=run["guidance"],
                              guidance_scale_2=run.get("guidance_2"),
                              generator=torch.Generator("cpu").manual_seed(run["seed"]),
                              max_sequence_length=32, output_type="np", return_dict=False)[0][0]
            expected = (frames * 255).round().astype(np.uint8)  # [F, H, W, 3]
            out_dir = os.path.join(work, f"frames_{i}")
            cmd = [os.path.join(BUILD, "cli", "dgrid"), "generate", "--local", "--model", folder,
                   "--prompt", run["prompt"], "--width", str(run["width"]), "--height",
                   str(run["height"]), "--frames", str(run["frames"]), "--steps", str(run["steps"]),
                   "--guidance", str(run["guidance"]), "--seed", str(run["seed"]),
                   "--max-sequence-length", "32", "-o", out_dir]
            if run["negative"] is not None:
                cmd += ["--negative-prompt", run["negative"]]
            if "guidance_2" in run:
                cmd += ["--guidance-2", str(run["guidance_2"])]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                print(f"run {i}: dgrid failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
                failures += 1
                continue
            names = sorted(os.listdir(out_dir))
            got = np.stack([np.asarray(Image.open(os.path.join(out_dir, n)).convert("RGB"))
                            for n in names])
            if got.shape != expected.shape:
                print(f"run {i}: frames {got.shape}, diffusers {expected.shape}")
                failures += 1
                continue
            diff = np.abs(got.astype(int) - expected.astype(int))
            print(f"run {i}: {len(names)} frames {got.shape[1]}x{got.shape[2]}, max difference "
                  f"{diff.max()}, values off by one {int((diff == 1).sum())} of {diff.size}")
            if diff.max() > 1:
                failures += 1
            failures += check_offload(i, cmd, out_dir)
            if i == 0:
                # The same run as an MP4 (H.264): an ISO media file with an avc1 track.
                mp4 = os.path.join(work, "video.mp4")
                proc = subprocess.run([mp4 if a == out_dir else a for a in cmd],
                                      capture_output=True, text=True, timeout=300)
                data = open(mp4, "rb").read() if proc.returncode == 0 else b""
                ok = data[4:8] == b"ftyp" and b"avc1" in data
                print(f"run {i}: mp4 {len(data)} bytes, {'ok' if ok else 'NOT an H.264 MP4'}")
                if not ok:
                    print(proc.stdout, proc.stderr)
                    failures += 1
                # An animated WebP is lossless: its frames are the PNG frames exactly.
                webp = os.path.join(work, "video.webp")
                proc = subprocess.run([webp if a == out_dir else a for a in cmd],
                                      capture_output=True, text=True, timeout=300)
                ok = proc.returncode == 0
                if ok:
                    from PIL import ImageSequence
                    with Image.open(webp) as anim:
                        webp_frames = np.stack([np.asarray(f.convert("RGB"))
                                                for f in ImageSequence.Iterator(anim)])
                        durations = anim.info.get("duration")
                    ok = webp_frames.shape == got.shape and (webp_frames == got).all()
                print(f"run {i}: animated webp: {'frames equal the PNG frames' if ok else proc.stderr[-300:]}"
                      f" (frame duration {durations if proc.returncode == 0 else '-'} ms)")
                failures += not ok
                # Without -o a video goes to out.mp4 in the working folder.
                no_out = [a for a in cmd if a not in ("-o", out_dir)]
                proc = subprocess.run(no_out, capture_output=True, text=True, timeout=300,
                                      cwd=work)
                default_ok = proc.returncode == 0 and os.path.exists(os.path.join(work, "out.mp4"))
                print(f"run {i}: without -o: {'out.mp4' if default_ok else proc.stderr[-300:]}")
                if not default_ok:
                    failures += 1
            if expected.std() < 1:
                print(f"run {i}: diffusers' frames are flat (std {expected.std():.2f})")
                failures += 1
        failures += check_cluster(work, folders)
        failures += check_two_families(work, folders["t2v"])
        failures += check_corrupt_checkpoints(work, folders["t2v"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
