"""The Python client as a user installs it: `pip install clients/python` (offline, into a folder of
its own), then used from a process that cannot see dgrid's source tree, against the e2e cluster."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import HOLD, SOURCE

SMALL = dict(width=64, height=64, num_inference_steps=3)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = str(tmp_path_factory.mktemp("dgrid-client"))
    # Build in a copy, so that the checkout gets no build/ or egg-info folders.
    work = str(tmp_path_factory.mktemp("dgrid-client-src"))
    subprocess.run(["cp", "-r", os.path.join(SOURCE, "clients"), os.path.join(SOURCE, "protos"),
                    work], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                    "--no-deps", "--no-index", "--target", target,
                    os.path.join(work, "clients", "python")], check=True)
    return target


def run_installed(installed, address, body):
    """Runs `body` (with `client`, a Client of `address`) in a fresh interpreter that sees only the
    installed package, and returns the JSON it prints."""
    code = textwrap.dedent("""
        import json, sys
        import dgrid_client
        from dgrid_client import Client, grpc
        assert dgrid_client.__file__.startswith(sys.argv[1]), dgrid_client.__file__
        out = {}
        with Client(sys.argv[2]) as client:
        """) + textwrap.indent(textwrap.dedent(body), "    ") + "\nprint(json.dumps(out))\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = installed
    done = subprocess.run([sys.executable, "-c", code, installed, address], cwd=installed, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_installed_package_carries_typed_stubs(installed):
    gen = os.path.join(installed, "dgrid_client", "_gen", "dgrid", "v1")
    for name in ("generation_pb2.py", "generation_pb2.pyi", "generation_pb2_grpc.py"):
        assert os.path.isfile(os.path.join(gen, name)), name
    assert os.path.isfile(os.path.join(installed, "dgrid_client", "py.typed"))


def test_installed_client_generates_what_the_cluster_gives(installed, cluster, client):
    out = run_installed(installed, cluster.grpc_address, f"""
        events = []
        result = client.generate("a red circle", seed=5, on_event=lambda e: events.append(
            e.WhichOneof("event")), **{SMALL!r})
        out["png"] = result.image.data.hex()
        out["seed"] = result.seed
        out["events"] = events
        out["models"] = [m.name for m in client.list_models()]
        """)
    expected = client.generate("a red circle", seed=5, **SMALL)
    assert bytes.fromhex(out["png"]) == expected.image.data
    assert out["seed"] == 5
    assert out["events"][0] == "accepted" and out["events"][-1] == "result"
    assert out["events"].count("step") == SMALL["num_inference_steps"]
    assert out["models"] == [m.name for m in client.list_models()]


def test_installed_client_cancels_by_request_id(installed, cluster):
    # A held request (conftest.HOLD) cannot finish before the cancel: 1000 steps take >= 200 s.
    out = run_installed(installed, cluster.grpc_address, f"""
        stream = client.stream("a long run", request_id="{HOLD}py-cancel", seed=1,
                               num_inference_steps=1000, width=64, height=64)
        out["id"] = stream.request_id
        try:
            for event in stream:
                if event.WhichOneof("event") == "step":
                    client.cancel(stream.request_id)
            out["code"] = "finished"
        except grpc.RpcError as error:
            out["code"] = error.code().name
        out["after"] = len(client.generate("after cancel", seed=2, **{SMALL!r}).image.data)
        """)
    assert out == {"id": f"{HOLD}py-cancel", "code": "CANCELLED", "after": out["after"]}
    assert out["after"] > 0


def test_installed_client_reports_bad_requests_with_the_field(installed, cluster):
    out = run_installed(installed, cluster.grpc_address, """
        try:
            client.generate("x", width=-8, height=64)
            out["code"] = "OK"
        except grpc.RpcError as error:
            out["code"], out["details"] = error.code().name, error.details()
        """)
    assert out["code"] == "INVALID_ARGUMENT" and "width" in out["details"], out


def test_installed_client_streams_previews_and_the_same_image(installed, cluster, client):
    out = run_installed(installed, cluster.grpc_address, f"""
        previews = []
        result = client.generate("a red circle", seed=11, previews=2,
                                 on_preview=lambda p: previews.append((p.index, p.step, p.total,
                                                                       p.image.data[:8].hex())),
                                 **{SMALL!r})
        out["previews"] = previews
        out["png"] = result.image.data.hex()
        """)
    assert [(i, total) for i, _, total, _ in out["previews"]] == [(0, 3), (1, 3)], out["previews"]
    steps = [step for _, step, _, _ in out["previews"]]
    assert steps == sorted(steps) and 1 <= steps[0] and steps[-1] <= 3, steps
    assert all(head.startswith("89504e47") for *_, head in out["previews"])  # PNG
    # Previews change nothing: the image equals the one asked for without them.
    expected = client.generate("a red circle", seed=11, **SMALL)
    assert bytes.fromhex(out["png"]) == expected.image.data


def test_installed_client_edits_an_image(installed, cluster, client):
    source = client.generate("a blue square", seed=3, **SMALL).image.data
    path = os.path.join(installed, "source.png")
    with open(path, "wb") as f:
        f.write(source)
    out = run_installed(installed, cluster.grpc_address, f"""
        result = client.edit({path!r}, "a red circle", strength=0.6, seed=5,
                             num_inference_steps=4)
        out["png"] = result.image.data.hex()
        out["size"] = [result.image.width, result.image.height]
        try:
            client.edit(b"not an image", "x", strength=0.6)
            out["bad"] = "OK"
        except grpc.RpcError as error:
            out["bad"] = error.code().name
            out["bad_details"] = error.details()
        try:
            client.edit({path!r}, "x", strength=1.5)
            out["strength"] = "OK"
        except grpc.RpcError as error:
            out["strength"] = error.code().name
            out["strength_details"] = error.details()
        """)
    expected = client.generate("a red circle", image=source, strength=0.6, seed=5,
                               num_inference_steps=4)
    assert bytes.fromhex(out["png"]) == expected.image.data
    assert out["size"] == [expected.image.width, expected.image.height]
    assert out["bad"] == "INVALID_ARGUMENT" and "image" in out["bad_details"], out
    assert out["strength"] == "INVALID_ARGUMENT" and "strength" in out["strength_details"], out


def test_installed_client_sends_a_step_cache_setting(installed, cluster, client):
    steps = dict(SMALL, num_inference_steps=8)
    out = run_installed(installed, cluster.grpc_address, f"""
        from dgrid_client import step_cache
        # A threshold no change reaches: every step the rules allow is skipped.
        out["skipped"] = client.generate("a red circle", seed=3, cache="teacache:1000",
                                         **{steps!r}).skipped_steps
        # The dict form; threshold 0 skips nothing, so the picture is the uncached one.
        zero = client.generate("a red circle", seed=3, cache={{"method": "fbcache",
                                                               "threshold": 0.0}}, **{steps!r})
        out["zero"] = [zero.skipped_steps, zero.image.data.hex()]
        out["proto"] = str(step_cache("fbcache:0.2")).split()
        try:
            step_cache("fbcache:much")
        except ValueError as error:
            out["local"] = str(error)
        try:
            client.generate("x", cache="teacache:-1", **{SMALL!r})
            out["code"] = "OK"
        except grpc.RpcError as error:
            out["code"], out["details"] = error.code().name, error.details()
        """)
    total = steps["num_inference_steps"]
    assert 0 < out["skipped"] < total, out
    uncached = client.generate("a red circle", seed=3, **steps)
    assert out["zero"] == [0, uncached.image.data.hex()]
    assert out["proto"][:2] == ["method:", '"fbcache"'] and out["proto"][2] == "threshold:", out
    assert out["local"].startswith("cache:"), out
    assert out["code"] == "INVALID_ARGUMENT" and "cache.threshold" in out["details"], out
