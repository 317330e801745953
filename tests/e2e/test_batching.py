"""Continuous batching at step boundaries through a real cluster (`dgrid up --max-batch 4`), on one
denoiser process and on a 2-rank Ulysses group (Gloo on loopback, every batched step on both
ranks): four concurrent requests with different prompts, seeds and step counts share one batch
and each image equals the single-process pipeline's (a group's within one 8-bit level, as
unbatched groups in test_groups.py). `--batch-wait-ms` is long so that the first request waits
until all four have arrived (the wait ends as soon as the batch is full): the batch forms on any
machine, however fast or slow."""
import concurrent.futures
import io

import numpy as np
import pytest
from PIL import Image

from conftest import Cluster
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
