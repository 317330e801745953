"""Black-box fixtures for dgrid's end-to-end tests: a local cluster started with `dgrid up` on free
loopback ports, serving the tiny random FLUX pipeline, and a Python client for it."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

SOURCE = os.environ.get("DGRID_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("DGRID_BUILD_DIR") or os.path.join(SOURCE, "build")
sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
sys.path.insert(0, os.path.join(SOURCE, "tools"))

DGRID = os.path.join(BUILD, "cli", "dgrid")

# Requests whose id starts with HOLD wait HOLD_STEP_MS before each denoising step after the first
# (the denoiser's DGRID_TEST_STEP_PAUSE seam; the wait ends at once on cancel, deadline or an edf
# preemption). A test that must act while a request is mid-denoise gives it such an id: 1000 steps
# then take at least HOLD_STEP_MS seconds on any machine, however fast, so "it is still running"
# never depends on the machine being slow. Every process the tests start inherits this.
HOLD = "hold-"
HOLD_STEP_MS = 200
os.environ["DGRID_TEST_STEP_PAUSE"] = f"{HOLD}:{HOLD_STEP_MS}"

# DGRID_E2E_TRANSPORT=ucx runs every cluster with the UCX data plane (ctest e2e_cluster_ucx); the
# threshold 0 sends even the tiny model's tensors over UCX. DGRID_E2E_UCX_TLS picks UCX transports.
TRANSPORT_FLAGS = []
if os.environ.get("DGRID_E2E_TRANSPORT", "inline") == "ucx":
    TRANSPORT_FLAGS = ["--transport", "ucx", "--inline-threshold-bytes", "0"]
    if os.environ.get("DGRID_E2E_UCX_TLS"):
        TRANSPORT_FLAGS += ["--ucx-tls", os.environ["DGRID_E2E_UCX_TLS"]]


def tiny_model():
    """The tiny random pipeline scripts/setup.sh makes (made here if missing), or the pipeline
    DGRID_E2E_MODEL names (e.g. a larger one from make_tiny_pipeline.py --heads/--layers, to run
    the suites on a slower model)."""
    if os.environ.get("DGRID_E2E_MODEL"):
        return os.environ["DGRID_E2E_MODEL"]
    path = os.path.join(SOURCE, ".dgrid", "tiny-flux")
    if not os.path.exists(os.path.join(path, "model_index.json")):
        import make_tiny_pipeline
        make_tiny_pipeline.build(path, seed=0)
    return path


class Cluster:
    def __init__(self, model, decoders=1, extra=(), env=None):
        """`env`: environment variables added for this cluster's processes (e.g. a test seam)."""
        self.model = model
        self.dir = tempfile.mkdtemp(prefix="dgrid-e2e-")
        self.ready_file = os.path.join(self.dir, "ready")
        self.log_dir = os.path.join(self.dir, "logs")
        cmd = [DGRID, "up", "--model", model, "--port", "0", "--http-port", "0",
               "--decoders", str(decoders), "--log-dir", self.log_dir,
               "--ready-file", self.ready_file, *TRANSPORT_FLAGS, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})})
        deadline = time.time() + 240
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None:
                raise RuntimeError("dgrid up failed:\n" + self.proc.stdout.read())
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("dgrid up did not become ready")
            time.sleep(0.2)
        with open(self.ready_file) as f:  # written whole (rename) once the cluster serves
            # One "<grpc address> <http address>" line per orchestrator (--orchestrators).
            self.orchestrators = [tuple(line.split()) for line in f.read().splitlines()]
        self.grpc_address, self.http_address = self.orchestrators[0]

    def stage_pids(self, program):
        out = subprocess.run(["pgrep", "-f", f"{program} .*--orchestrator {self.grpc_address}"],
                             capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]

    def log(self, name):
        with open(os.path.join(self.log_dir, name + ".log")) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture(scope="session")
def cluster(model):
    c = Cluster(model, decoders=2)
    yield c
    c.stop()


@pytest.fixture()
def client(cluster):
    from dgrid_client import Client
    with Client(cluster.grpc_address) as c:
        yield c
