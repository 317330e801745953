"""The chaos benchmark (bench/chaos/chaos.py) in a short form: 4 clients x 20 requests against
2 encoders, 2 denoisers and 2 decoders, one process of each kind killed with SIGKILL while requests
are in flight. The report must show every request answered, none refused RESOURCE_EXHAUSTED, errors
only UNAVAILABLE for requests in the killed denoiser's hands, and every killed process replaced.

The denoiser kill takes the denoiser that holds a probe request mid-denoise (the HOLD seam of
conftest.py), so that a request in its hands certainly fails, however fast the machine; the kills
wait for results, not for time."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BUILD, HOLD, SOURCE, TRANSPORT_FLAGS

CHAOS = os.path.join(SOURCE, "bench", "chaos", "chaos.py")
TRANSPORT = "ucx" if TRANSPORT_FLAGS else "inline"


def run_chaos(tmp_path, model, *flags):
    out = tmp_path / "report.json"
    cmd = [sys.executable, CHAOS, "--build-dir", BUILD, "--model", model,
           "--encoders", "2", "--denoisers", "2", "--decoders", "2",
           "--clients", "4", "--requests", "20", "--transport", TRANSPORT,
           "--work-dir", str(tmp_path / "cluster"), "--out", str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def check_common(proc, report):
    assert report is not None, proc.stdout + proc.stderr
    totals = report["totals"]
    assert totals["started"] == totals["requests"] == 80, proc.stdout
    assert totals["ok"] + totals["errors"] + totals["unanswered"] == 80, proc.stdout
    assert totals["unanswered"] == 0, report["unanswered"]
    assert "RESOURCE_EXHAUSTED" not in report["errors_by_code"], report["errors"]
    assert totals["ok"] > 0


def test_kill_one_of_each_stage_kind(tmp_path, model):
    proc, report = run_chaos(tmp_path, model, "--kill", "encoder,denoiser,decoder",
                             "--probe-prefix", HOLD)
    check_common(proc, report)
    kills = report["kills"]
    assert [k["role"] for k in kills] == ["encoder", "denoiser", "decoder"], kills
    for k in kills:
        assert "error" not in k, k
        # A new process under the same name, serving again (registered with the orchestrator).
        assert k["new_pid"] not in (None, k["pid"]), k
        assert k["serving_s"] is not None, k
    assert sorted(r["name"] for r in report["restarts"]) == sorted(k["name"] for k in kills)
    # Every error is an explicit UNAVAILABLE of a request the killed denoiser held.
    for e in report["errors"]:
        assert e["code"] == "UNAVAILABLE", e
        assert e["attributed_to"] is not None, e
        assert kills[e["attributed_to"]["kill"]]["role"] == "denoiser", e
        assert 1 in e["in_flight_at_kills"], e
    # The probe was in the killed denoiser's hands mid-denoise: it failed, and said so.
    [probe] = report["probes"]
    assert probe["outcome"] == "UNAVAILABLE", probe
    assert probe["attributed_to"]["kill"] == 1, probe
    assert str(kills[1]["pid"]) == probe["attributed_to"]["worker"].rsplit("-", 1)[1]
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    failed = [n for n, v in report["verdicts"].items() if not v["pass"]]
    # Only the time bar may fail (it depends on the machine; the bench reports it, CI does not
    # hold a machine to it).
    assert set(failed) <= {"back_within_10s"}, (failed, proc.stdout)


def test_no_kills_no_errors(tmp_path, model):
    proc, report = run_chaos(tmp_path, model, "--kill", "none")
    check_common(proc, report)
    assert report["errors"] == [] and report["totals"]["ok"] == 80, report["errors"]
    assert report["kills"] == [] and report["restarts"] == []
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_orchestrators_one_killed(tmp_path, model):
    proc, report = run_chaos(tmp_path, model, "--orchestrators", "2",
                             "--kill", "orchestrator")
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    check_common(proc, report)
    [kill] = report["kills"]
    assert "error" not in kill, kill
    assert kill["new_pid"] not in (None, kill["pid"]) and kill["serving_s"] is not None, kill
    # Only requests the killed orchestrator held fail; the rest went to the other one.
    for e in report["errors"]:
        assert e["code"] == "UNAVAILABLE", e
        assert e["attributed_to"] is not None and e["attributed_to"]["kill"] == 0, e
    assert [r["name"] for r in report["restarts"]] == [kill["name"]]
