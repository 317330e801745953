"""`dgrid up` keeps its cluster running: a stage, the orchestrator or a denoiser group's rank killed
with SIGKILL is started again and the cluster serves again (the same image for the same seed); a
process that cannot start again (a crash loop) makes `dgrid up` stop the cluster and exit non-zero.
Every wait here waits for an event (a new pid, a served request), bounded only to avoid hanging."""
import os
import shutil
import subprocess
import tempfile
import time

import grpc

from conftest import DGRID, HOLD, Cluster

SMALL = dict(width=32, height=32, num_inference_steps=2)


def pids(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return sorted(int(p) for p in out)


def wait_for(predicate, what, timeout=120):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def serves(address, seed=3):
    """The image of one small request, or None while the cluster cannot serve it yet."""
    from dgrid_client import Client
    try:
        with Client(address) as client:
            return client.generate("a red circle", seed=seed, timeout=60, **SMALL).image.data
    except grpc.RpcError:
        return None


def test_killed_stages_and_orchestrator_come_back(model):
    c = Cluster(model)
    try:
        before = wait_for(lambda: serves(c.grpc_address), "the first image")
        for program in ("dgrid-encoder", "dgrid-denoiser", "dgrid-decoder"):
            old = c.stage_pids(program)
            assert len(old) == 1, (program, old)
            os.kill(old[0], 9)
            new = wait_for(lambda: [p for p in c.stage_pids(program) if p not in old],
                           f"{program} restarted")
            assert len(new) == 1
            assert wait_for(lambda: serves(c.grpc_address), f"serving after {program}") == before
        # The orchestrator comes back on the same ports; the stages register with it again.
        port = c.grpc_address.rsplit(":", 1)[1]
        pattern = f"dgrid-orchestrator .*--port {port}"
        old = pids(pattern)
        assert len(old) == 1, old
        os.kill(old[0], 9)
        wait_for(lambda: [p for p in pids(pattern) if p not in old], "the orchestrator restarted")
        assert wait_for(lambda: serves(c.grpc_address), "serving after the orchestrator") == before
        # The logs keep the crash and the restart (appended, not overwritten).
        assert c.log("orchestrator").count("gRPC listening on") == 2
    finally:
        c.stop()


def test_killed_rank_restarts_its_group(model):
    c = Cluster(model, extra=["--ulysses", "2", "--group-timeout-s", "5"])
    try:
        before = wait_for(lambda: serves(c.grpc_address), "the first image")
        ranks = c.stage_pids("dgrid-denoiser")
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], 9)
        # Both ranks are replaced (the group is formed again around a new leader port).
        wait_for(lambda: len([p for p in c.stage_pids("dgrid-denoiser") if p not in ranks]) == 2,
                 "both ranks restarted")
        assert wait_for(lambda: serves(c.grpc_address), "the group serving again") == before
    finally:
        c.stop()


def test_crash_loop_stops_the_cluster_with_an_error(model):
    work = tempfile.mkdtemp(prefix="dgrid-crash-loop-")
    copy = os.path.join(work, "tiny-copy")
    shutil.copytree(model, copy)
    c = Cluster(copy)
    try:
        # The decoder can no longer start: its weights are gone. Killing it starts a crash loop.
        shutil.rmtree(os.path.join(copy, "vae"))
        os.kill(c.stage_pids("dgrid-decoder")[0], 9)
        code = c.proc.wait(timeout=120)
        output = c.proc.stdout.read()
        assert code != 0, output
        assert "giving up" in output and "decoder-0" in output, output
        assert "restarting it in" in output, output
        # Nothing of the cluster is left running.
        assert c.stage_pids("dgrid-encoder") == []
    finally:
        c.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_two_orchestrators_losing_one_loses_only_its_requests(model):
    """`--orchestrators 2`: every stage registers with both, either serves; a killed orchestrator
    fails only the request it held, the other's request (queued behind it on the one denoiser)
    finishes, and the restarted orchestrator gets its stages back."""
    from dgrid_client import Client
    c = Cluster(model, extra=["--orchestrators", "2"])
    try:
        assert len(c.orchestrators) == 2, c.orchestrators
        (a, _), (b, _) = c.orchestrators
        image = serves(a)
        assert image and serves(b) == image
        # Each stage process was started once and registered with both.
        assert len(c.stage_pids("dgrid-denoiser")) == 1
        held = dict(seed=1, width=32, height=32, num_inference_steps=20, timeout=120)
        with Client(a) as client_a, Client(b) as client_b:
            on_a = client_a.stream("held on a", request_id=HOLD + "on-a", **held)
            assert next(e for e in on_a if e.WhichOneof("event") == "step")
            on_b = client_b.stream("held on b", request_id=HOLD + "on-b", **held)
            assert next(on_b).WhichOneof("event") == "accepted"
            pattern = f"dgrid-orchestrator --port {a.rsplit(':', 1)[1]} "
            old = pids(pattern)
            assert len(old) == 1, old
            os.kill(old[0], 9)
            try:
                list(on_a)
                raise AssertionError("the killed orchestrator's request did not fail")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            kinds = [e.WhichOneof("event") for e in on_b]
            assert kinds[-1] == "result", kinds
            assert serves(b) == image  # the other orchestrator serves on
        wait_for(lambda: [p for p in pids(pattern) if p not in old], "the orchestrator restarted")
        assert wait_for(lambda: serves(a), "the restarted orchestrator serving") == image
    finally:
        c.stop()
