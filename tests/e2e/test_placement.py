"""dgrid's placement policy in a running cluster (`dgrid up --policy predicted-completion`): the
orchestrator predicts each request's denoising time for the served model with the cost model
(docs/placement.md) and refuses at once, with DEADLINE_EXCEEDED, a request that no denoiser can
finish before its deadline; requests that fit run as usual."""
import json
import os
import re
import statistics
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import DGRID, Cluster
from test_cluster import SMALL


@pytest.fixture(scope="module")
def placed_cluster(model):
    c = Cluster(model, extra=["--policy", "predicted-completion"])
    yield c
    c.stop()


def local_step_ms(model, size, steps=24):
    """The tiny model's median step time at size x size on this machine, measured by
    `dgrid generate --local` (a process of its own, so no cluster learns from it)."""
    out = os.path.join(tempfile.mkdtemp(), "probe.png")
    run = subprocess.run([DGRID, "generate", "--local", "--model", model, "--seed", "0",
                          "--width", str(size), "--height", str(size), "--steps", str(steps),
                          "-o", out, "a probe"], check=True, capture_output=True, text=True)
    ms = [float(v) for v in re.findall(r"denoise step \d+/\d+ \(([\d.]+) ms\)", run.stderr)]
    assert len(ms) == steps, run.stderr
    return statistics.median(ms[1:])


def test_a_request_no_group_can_finish_in_time_is_refused_at_once(placed_cluster):
    from dgrid_client import Client
    with Client(placed_cluster.grpc_address) as client:
        # 1000 steps at 512^2 are predicted at well over 10 s (the built-in calibration charges
        # ~15 ms per step on any model): a 10 s deadline cannot be met.
        start = time.time()
        with pytest.raises(grpc.RpcError) as error:
            client.generate("too much for the time given", seed=0, width=512, height=512,
                            num_inference_steps=1000, timeout=10)
        elapsed = time.time() - start
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.value
        assert "no group can finish before the deadline" in error.value.details()
        assert elapsed < 5, elapsed  # told at once, not after waiting out the deadline
        # A request that fits runs.
        result = client.generate("a red circle on a blue background", seed=1, timeout=120,
                                 **SMALL)
        assert result.image.data
    log = placed_cluster.log("orchestrator")
    assert "policy predicted-completion" in log


def slow_calibration(step_ms_at_32, factor=20):
    """A placement calibration (bench rows, as `--placement-calibration` reads them) of a card
    `factor` times slower than this machine: its step at 32^2 takes `factor` times the measured
    one (and a 512^2 step four times that, so the fit has a positive slope)."""
    folder = tempfile.mkdtemp(prefix="dgrid-calibration-")
    for size, ms in ((32, factor * step_ms_at_32), (512, 4 * factor * step_ms_at_32)):
        with open(os.path.join(folder, f"{size}.json"), "w") as f:
            json.dump({"tool": "dgrid", "card": f"{factor}x slower than the test machine",
                       "config": {"width": size, "height": size}, "median_step_ms": ms}, f)
    return folder


def test_the_steps_a_group_reports_replace_the_calibration_in_its_predictions(model, cluster):
    """A calibration far off for the served model (here: one made 20 times slower than what this
    machine measures, as the built-in H100 one is for the tiny model on a CPU, but on any machine).
    Before the group has run anything at a size a request is refused on the calibration's
    prediction; once it has, the orchestrator predicts with the step times the group reported,
    and the same request is admitted and finishes before its deadline. The deadline is derived
    from measurements too: twice the request's denoising time here plus three times the rest of
    a request (encoding, decoding, transfers), between what the machine needs and what the
    calibration says; for the admitted run, twice its steps at the group's observed step time
    (plus the same rest) where that is longer, still below the calibration's prediction."""
    from dgrid_client import Client
    size, steps = 32, 300
    step_ms = local_step_ms(model, size)
    here_ms = steps * step_ms
    # The rest, measured on the suite's shared cluster: a group's speed at any size also becomes
    # its all-sizes fallback, so nothing may run on the tested one before the refusal.
    with Client(cluster.grpc_address) as other:
        start = time.time()
        assert other.generate("a blue square", seed=3, timeout=120, width=size, height=size,
                              num_inference_steps=1).image.data
        rest_ms = (time.time() - start) * 1000
    deadline_s = (2 * here_ms + 3 * rest_ms) / 1000
    shape = dict(width=size, height=size, num_inference_steps=steps)
    placed = Cluster(model, extra=["--policy", "predicted-completion", "--placement-calibration",
                                   slow_calibration(step_ms)])
    try:
        with Client(placed.grpc_address) as client:
            with pytest.raises(grpc.RpcError) as error:
                client.generate("a blue square", seed=2, timeout=deadline_s, **shape)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.value
            assert "no group can finish before the deadline" in error.value.details()
            # The group runs that size once; its steps come back on the progress stream. The
            # registry's speed is a moving average that gives each new step a tenth of the weight:
            # 64 steps leave a slow first (cold) step 0.9^63 of its weight, 16 left it 0.2.
            client.generate("a blue square", seed=3, timeout=120, width=size, height=size,
                            num_inference_steps=64)
            observed = re.findall(r"64 steps observed at ([\d.]+) ms per step, cost model "
                                  r"([\d.]+) ms; speed ([\d.]+)", placed.log("orchestrator"))
            assert observed, placed.log("orchestrator")[-2000:]
            step_ms, model_ms, speed = (float(v) for v in observed[-1])
            assert step_ms < model_ms and speed < 1, observed
            # The admitted run goes at the group's observed step time, which on a fast machine can
            # be several times the local compute (per-step streaming and bookkeeping), so its
            # deadline is re-derived from that observation where it is longer. It stays one the
            # calibration alone would refuse: below its prediction for the steps.
            deadline_s = max(deadline_s, (2 * steps * step_ms + 3 * rest_ms) / 1000)
            assert deadline_s * 1000 < steps * model_ms, (deadline_s, steps, model_ms)
            start = time.time()
            result = client.generate("a blue square", seed=2, timeout=deadline_s, **shape)
            assert result.image.data
            assert time.time() - start < deadline_s
    finally:
        placed.stop()
