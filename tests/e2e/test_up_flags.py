"""`dgrid up` checks every flag before it starts anything: a bad value ends the command with a
message naming the flag, and no process was spawned (no log file written)."""
import os
import subprocess
import tempfile

import pytest

from conftest import DGRID

BAD_FLAGS = [
    (["--comm", "mpi"], "--comm"),
    (["--scheduling", "lifo"], "--scheduling"),
    (["--policy", "fastest"], "--policy"),
    (["--transport", "tcp"], "--transport"),
    (["--dtype", "int8"], "--dtype"),
    (["--dit-precision", "fp4"], "--dit-precision"),
    (["--dit-offload", "disk"], "--dit-offload"),
    (["--dit-offload", "layerwise", "--dit-offload-prefetch", "0"], "--dit-offload-prefetch"),
    (["--dit-offload", "layerwise", "--dit-offload-prefetch", "1.5"], "--dit-offload-prefetch"),
    # Sharded weights need a group of 2 or more, a prefetch >= 1, and no layerwise offload.
    (["--dit-shard-weights"], "--dit-shard-weights"),
    (["--dit-shard-weights", "--ulysses", "2", "--dit-shard-prefetch", "0"],
     "--dit-shard-prefetch"),
    (["--dit-shard-weights", "--ulysses", "2", "--dit-offload", "layerwise"],
     "--dit-shard-weights"),
    (["--device", "gpu"], "--device"),
    (["--text-encoder-device", "gpu"], "--text-encoder-device"),
    (["--vae-precision", "int8"], "--vae-precision"),
    (["--device", "cuda:x"], "--device"),
    # No GPU visible (CUDA_VISIBLE_DEVICES is empty below): one of its own for each of 2 ranks.
    (["--device", "cuda", "--ulysses", "2"], "--device cuda"),
    (["--port", "50123", "--http-port", "50123"], "--http-port"),
    (["--cfg", "3"], "cfg"),
    # Orchestrator i listens on --port + i and --http-port + i: these ranges overlap.
    (["--orchestrators", "2", "--port", "50123", "--http-port", "50124"], "--port and --http-port"),
    (["--orchestrators", "2", "--port", "65535"], "--orchestrators"),
    (["--orchestrators", "0"], "orchestrators"),
    (["--vram-budget", "24"], "--vram-budget"),
    (["--vram-budget", "lots"], "--vram-budget"),
    # Less than the CUDA context's allowance: no model fits, and the message says what it needs.
    (["--vram-budget", "100MiB"], "--vram-budget: tiny-flux needs"),
    # ... whatever the settings, and given flags are what is tried.
    (["--vram-budget", "100MiB", "--dit-offload", "layerwise"], "only the --dit-precision"),
    # Sharded weights given: checked with the planner's formula for the group's ranks.
    (["--vram-budget", "100MiB", "--ulysses", "2", "--dit-shard-weights"],
     "with its smallest footprint, sharded weights prefetch 1"),
    (["--performance-mode", "fast"], "--performance-mode"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_flag_stops_dgrid_up_before_anything_starts(model, flags, named):
    log_dir = os.path.join(tempfile.mkdtemp(prefix="dgrid-e2e-flags-"), "logs")
    out = subprocess.run([DGRID, "up", "--model", model, "--log-dir", log_dir, *flags],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode != 0, out
    assert named in out.stderr, out.stderr
    assert "starting" not in out.stderr, out.stderr
    spawned = os.listdir(log_dir) if os.path.isdir(log_dir) else []
    assert not [f for f in spawned if f.endswith(".log")], spawned


def test_model_offload_is_planned_as_the_whole_bf16_dit(model):
    """With --dit-offload model the denoiser holds the whole bf16 DiT while it denoises and refuses
    FP8 or sharded weights beside it, so --vram-budget tries that candidate only: neither FP8 nor
    sharding appears among the rejected ones (it would start denoisers with flags they refuse)."""
    log_dir = os.path.join(tempfile.mkdtemp(prefix="dgrid-e2e-flags-"), "logs")
    out = subprocess.run([DGRID, "up", "--model", model, "--log-dir", log_dir, "--vram-budget",
                          "100MiB", "--dit-offload", "model", "--ulysses", "2",
                          "--performance-mode", "speed"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode != 0, out
    assert "--vram-budget" in out.stderr, out.stderr
    assert "bf16" in out.stderr, out.stderr
    assert "fp8" not in out.stderr, out.stderr
    assert "sharded" not in out.stderr, out.stderr
    assert "starting" not in out.stderr, out.stderr
