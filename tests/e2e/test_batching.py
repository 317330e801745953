"""Continuous batching at step boundaries through a real cluster (`dgrid up --max-batch 4`), on one
denoiser process and on a 2-rank Ulysses group (Gloo on loopback, every batched step on both
ranks): four concurrent requests with different prompts, seeds and step counts share one batch
and each image equals the single-process pipeline's (a group's within one 8-bit level, as
unbatched groups in test_groups.py). `--batch-wait-ms` is long so that the first request waits
until all four have arrived (the wait ends as soon as the batch is full): the batch forms on any
machine, however fast or slow. The same for two Wan2.2 A14B video requests (`--max-batch 2`), whose
frames equal the single-process ones (on a 2-rank CFG-parallel group within one 8-bit level)."""
import concurrent.futures
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SOURCE, Cluster
from test_cluster import local_png

REQUESTS = [  # prompt, seed, steps
    ("a red circle on a blue background", 42, 4),
    ("a green square", 7, 6),
    ("a yellow star on a white background", 3, 2),
    ("a purple ring", 11, 5),
]


def pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("extra,tolerance", [([], 0), (["--ulysses", "2"], 1)],
                         ids=["one-process", "ulysses2"])
def test_batched_requests_give_the_single_process_images(model, extra, tolerance):
    from dgrid_client import Client
    c = Cluster(model, extra=[*extra, "--max-batch", "4", "--batch-wait-ms", "60000"])
    try:
        with Client(c.grpc_address) as client:
            def run(spec):
                prompt, seed, steps = spec
                events = []
                result = client.generate(prompt, seed=seed, width=64, height=64,
                                         num_inference_steps=steps, timeout=300,
                                         on_event=events.append)
                step_events = [e.step.step for e in events if e.WhichOneof("event") == "step"]
                return result, step_events

            with concurrent.futures.ThreadPoolExecutor(len(REQUESTS)) as pool:
                outcomes = list(pool.map(run, REQUESTS))
        for (prompt, seed, steps), (result, step_events) in zip(REQUESTS, outcomes):
            assert step_events == list(range(1, steps + 1)), (prompt, step_events)
            ours = pixels(result.image.data)
            reference = pixels(local_png(model, seed, prompt, width=64, height=64,
                                         num_inference_steps=steps))
            assert ours.shape == reference.shape
            assert np.abs(ours - reference).max() <= tolerance, prompt
        assert "joins a batch of 4" in c.log("denoiser-0")
    finally:
        c.stop()


# Wan2.2 A14B (tiny random pipeline; its two experts switch at boundary_ratio 0.875): prompt,
# negative prompt, seed, steps, guidance, guidance_2. The step counts differ, so at one step the
# two requests can be on different experts.
WAN_REQUESTS = [
    ("a blue star", "noise", 9, 6, 4.0, 3.0),
    ("a red circle", None, 3, 4, 5.0, 2.0),
]


@pytest.mark.parametrize("extra,tolerance", [([], 0), (["--cfg", "2"], 1)],
                         ids=["one-process", "cfg2"])
def test_batched_wan_requests_give_the_single_process_videos(tmp_path, extra, tolerance):
    """Two concurrent Wan requests share one batch under `--max-batch 2` and each one's frames
    (raw RGB) equal the single-process run's PNG frames byte for byte; on a 2-rank CFG-parallel
    group (each branch runs one pass of the batch) within one 8-bit level, as unbatched groups
    (tests/parity/wan/wan_groups_test.py). Frames, not MP4s: two MP4 encodings of the same frames
    need not be the same bytes. The pipeline is wan_local_cli_test's (diffusers builds it)."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, os.path.join(SOURCE, "tests", "parity", "wan"))
    from wan_local_cli_test import build_pipeline, run_cli
    from dgrid_client import Client
    _, folders = build_pipeline(str(tmp_path))
    folder = folders["a14b"]
    c = Cluster(folder, extra=[*extra, "--max-batch", "2", "--batch-wait-ms", "60000"])
    try:
        with Client(c.grpc_address) as client:
            def run(spec):
                prompt, negative, seed, steps, guidance, guidance_2 = spec
                return client.generate_video(
                    prompt, num_frames=5, model=os.path.basename(folder),
                    negative_prompt=negative, width=32, height=32, num_inference_steps=steps,
                    guidance_scale=guidance, guidance_scale_2=guidance_2, seed=seed,
                    max_sequence_length=32, output_format="raw", timeout=300)

            with concurrent.futures.ThreadPoolExecutor(len(WAN_REQUESTS)) as pool:
                videos = list(pool.map(run, WAN_REQUESTS))
        for (prompt, negative, seed, steps, guidance, guidance_2), video in zip(WAN_REQUESTS,
                                                                                videos):
            out = os.path.join(str(tmp_path), f"local-{seed}")
            args = ["generate", "--local", "--model", folder, "--prompt", prompt, "--width", "32",
                    "--height", "32", "--frames", "5", "--steps", str(steps), "--guidance",
                    str(guidance), "--guidance-2", str(guidance_2), "--seed", str(seed),
                    "--max-sequence-length", "32", "-o", out]
            if negative is not None:
                args += ["--negative-prompt", negative]
            proc = run_cli(args)
            assert proc.returncode == 0, proc.stderr[-600:]
            frames = [np.asarray(Image.open(os.path.join(out, name)).convert("RGB"))
                      for name in sorted(os.listdir(out))]
            assert (video.width, video.height, video.num_frames) == (32, 32, len(frames)), prompt
            ours = np.frombuffer(video.data, dtype=np.uint8).astype(np.int16)
            reference = np.stack(frames).astype(np.int16)
            assert ours.size == reference.size, prompt
            assert np.abs(ours.reshape(reference.shape) - reference).max() <= tolerance, prompt
        assert "joins a batch of 2" in c.log("denoiser-0")
    finally:
        c.stop()
