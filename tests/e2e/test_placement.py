"""dgrid's placement policy in a running cluster (`dgrid up --policy predicted-completion`): the
orchestrator predicts each request's denoising time for the served model with the cost model
(docs/placement.md) and refuses at once, with DEADLINE_EXCEEDED, a request that no denoiser can
finish before its deadline; requests that fit run as usual."""
import re
import time

import grpc
import pytest

from conftest import Cluster
from test_cluster import SMALL


@pytest.fixture(scope="module")
def placed_cluster(model):
    c = Cluster(model, extra=["--policy", "predicted-completion"])
    yield c
    c.stop()


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


def test_the_steps_a_group_reports_replace_the_calibration_in_its_predictions(model):
    """The built-in calibration (H100, ~15 ms per step) is far off for the tiny model on this CPU
    (a few ms per step at 256^2). Before the group has run anything at that size a request is
    refused on the calibration's prediction; once it has, the orchestrator predicts with the step
    times the group reported, and the same request is admitted and finishes before its deadline."""
    from dgrid_client import Client
    cluster = Cluster(model, extra=["--policy", "predicted-completion"])
    try:
        with Client(cluster.grpc_address) as client:
            steps = 300
            deadline_s = 0.6 * steps * 15.2 / 1000  # 60% of what the calibration predicts
            shape = dict(width=256, height=256, num_inference_steps=steps)
            with pytest.raises(grpc.RpcError) as error:
                client.generate("a blue square", seed=2, timeout=deadline_s, **shape)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.value
            assert "no group can finish before the deadline" in error.value.details()
            # The group runs that size once; its steps come back on the progress stream.
            client.generate("a blue square", seed=3, timeout=120, width=256, height=256,
                            num_inference_steps=16)
            observed = re.findall(r"16 steps observed at ([\d.]+) ms per step, cost model "
                                  r"([\d.]+) ms; speed ([\d.]+)", cluster.log("orchestrator"))
            assert observed, cluster.log("orchestrator")[-2000:]
            step_ms, model_ms, speed = (float(v) for v in observed[-1])
            assert step_ms < model_ms and speed < 1, observed
            start = time.time()
            result = client.generate("a blue square", seed=2, timeout=deadline_s, **shape)
            assert result.image.data
            assert time.time() - start < deadline_s
    finally:
        cluster.stop()
