"""dgrid's placement policy in a running cluster (`dgrid up --policy predicted-completion`): the
orchestrator predicts each request's denoising time for the served model with the cost model
(docs/placement.md) and refuses at once, with DEADLINE_EXCEEDED, a request that no denoiser can
finish before its deadline; requests that fit run as usual."""
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
