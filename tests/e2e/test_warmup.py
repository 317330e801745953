"""--warmup-resolutions of dgrid-denoiser: each resolution runs once before the stage reports
itself serving, and a resolution the model cannot make stops the process with a message naming
the flag and the field (no half-started server)."""
import os
import signal
import subprocess
import time

from conftest import BUILD, tiny_model

DENOISER = os.path.join(BUILD, "services", "denoiser", "dgrid-denoiser")


def test_warmup_runs_each_resolution_before_serving():
    proc = subprocess.Popen([DENOISER, "--model", tiny_model(), "--port", "0",
                             "--warmup-resolutions", "64x64, 32x48"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 60
        while not any("serving model" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "dgrid-denoiser exited before serving:\n" + "".join(lines)
            assert time.time() < deadline, "dgrid-denoiser did not start serving"
            lines.append(line)
        log = "".join(lines)
        serving = log.index("serving model")
        for size in ("64x64", "32x48"):
            assert log.index(f"warm-up {size}: 2 steps") < serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_warmup_with_an_impossible_resolution_fails_the_start():
    for value, words in (("100x64", ["--warmup-resolutions 100x64", "width = 100"]),
                         ("64by64", ["--warmup-resolutions", "'64by64'"])):
        out = subprocess.run([DENOISER, "--model", tiny_model(), "--port", "0",
                              "--warmup-resolutions", value],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        for w in words:
            assert w in out.stderr, out.stderr
        assert "INVALID_ARGUMENT" in out.stderr
