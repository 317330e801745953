"""A `dgrid up --tls --api-key ... --metrics-file ...` cluster, black-box: Prometheus /metrics on
every process moves with traffic; TLS with generated certificates, mutual TLS to the stages, API
keys (UNAUTHENTICATED / 401) and request size limits (RESOURCE_EXHAUSTED / 413) on the public API."""
import json
import os
import re
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import DGRID, Cluster

API_KEY = "e2e-secret-key"
SMALL = dict(width=64, height=64, num_inference_steps=3)


@pytest.fixture(scope="module")
def secure_cluster(model):
    metrics_file = os.path.join(tempfile.mkdtemp(prefix="dgrid-e2e-metrics-"), "metrics")
    c = Cluster(model, extra=("--tls", "--api-key", API_KEY, "--metrics-file", metrics_file))
    c.tls_dir = os.path.join(c.log_dir, "tls")
    with open(metrics_file) as f:
        c.metrics = dict(line.split() for line in f if line.strip())
    yield c
    c.stop()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def credentials(cluster, ca=True, client_cert=False):
    tls = cluster.tls_dir
    return grpc.ssl_channel_credentials(
        root_certificates=read(os.path.join(tls, "ca.crt")) if ca else None,
        private_key=read(os.path.join(tls, "node.key")) if client_cert else None,
        certificate_chain=read(os.path.join(tls, "node.crt")) if client_cert else None)


def generation_stub(channel):
    from dgrid_client import pb_grpc
    return pb_grpc.GenerationStub(channel)


def auth(key=API_KEY):
    return [("authorization", f"Bearer {key}")]


def generate(stub, prompt, seed, metadata):
    from dgrid_client import pb
    request = pb.GenerateRequest(prompt=prompt, seed=seed, **SMALL)
    events = list(stub.Generate(request, metadata=metadata, timeout=120))
    assert events[-1].WhichOneof("event") == "result"
    return events[-1].result


def scrape(address):
    """Parses a text exposition into {(name, frozenset(labels)): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        assert m, f"not exposition syntax: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics_move_with_requests(secure_cluster):
    c = secure_cluster
    assert {"orchestrator", "encoder-0", "denoiser-0", "decoder-0"} <= set(c.metrics)
    before = {name: scrape(address) for name, address in c.metrics.items()}
    with grpc.secure_channel(c.grpc_address, credentials(c)) as channel:
        stub = generation_stub(channel)
        for seed in (1, 2):
            generate(stub, "a metric circle", seed, auth())
    after = {name: scrape(address) for name, address in c.metrics.items()}

    def moved(process, name, **labels):
        return total(after[process], name, **labels) - total(before[process], name, **labels)

    assert moved("orchestrator", "dgrid_requests_total", stage="orchestrator", method="Generate",
                 code="OK") == 2
    assert moved("encoder-0", "dgrid_requests_total", stage="encoder", method="Encode",
                 code="OK") == 2
    assert moved("decoder-0", "dgrid_requests_total", stage="decoder", code="OK") >= 2
    for stage in ("encoder", "denoiser", "decoder"):
        process = f"{stage}-0"
        assert moved(process, "dgrid_queue_seconds_count", stage=stage) >= 2, stage
        assert moved(process, "dgrid_compute_seconds_count", stage=stage) >= 2, stage
        assert moved(process, "dgrid_compute_seconds_sum", stage=stage) > 0, stage
        # The load gauges are exported (their values race with the end of the last request).
        names = {name for name, _ in after[process]}
        assert {"dgrid_queue_depth", "dgrid_inflight_requests"} <= names, stage
    steps = SMALL["num_inference_steps"]
    assert moved("denoiser-0", "dgrid_denoise_step_seconds_count") >= 2 * steps
    # Both channels count their bytes (the UCX suite sends every tensor over UCX).
    transport = os.environ.get("DGRID_E2E_TRANSPORT", "inline")
    assert moved("encoder-0", "dgrid_transfer_bytes_total", transport=transport,
                 direction="sent") > 0
    assert moved("decoder-0", "dgrid_transfer_bytes_total", transport=transport,
                 direction="received") > 0
    # Histogram buckets are cumulative and end at the count.
    buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in after["denoiser-0"].items()
                     if n == "dgrid_denoise_step_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == total(after["denoiser-0"], "dgrid_denoise_step_seconds_count")


def test_tls_client_with_ca_and_key_is_served(secure_cluster):
    with grpc.secure_channel(secure_cluster.grpc_address, credentials(secure_cluster)) as channel:
        from dgrid_client import pb
        models = generation_stub(channel).ListModels(pb.ListModelsRequest(), metadata=auth(),
                                                     timeout=10)
        assert [m.name for m in models.models] == ["tiny-flux"]


def test_missing_or_wrong_api_key_is_unauthenticated(secure_cluster):
    from dgrid_client import pb
    with grpc.secure_channel(secure_cluster.grpc_address, credentials(secure_cluster)) as channel:
        stub = generation_stub(channel)
        for metadata in ([], auth("wrong-key")):
            with pytest.raises(grpc.RpcError) as e:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                generate(stub, "no key", 1, metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("how", ["without the CA", "plain text"])
def test_client_without_the_ca_is_refused(secure_cluster, how):
    from dgrid_client import pb
    address = secure_cluster.grpc_address
    channel = (grpc.secure_channel(address, credentials(secure_cluster, ca=False))
               if how == "without the CA" else grpc.insecure_channel(address))
    with channel:
        with pytest.raises(grpc.RpcError) as e:
            generation_stub(channel).ListModels(pb.ListModelsRequest(), metadata=auth(),
                                                timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def stage_address(cluster, name):
    m = re.search(r"listening on (\S+) with TLS", cluster.log(name))
    assert m, f"{name} did not log a TLS listening address"
    return m.group(1)


def test_stages_require_a_client_certificate(secure_cluster):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    address = stage_address(secure_cluster, "encoder-0")
    with grpc.secure_channel(address, credentials(secure_cluster)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    mutual = credentials(secure_cluster, client_cert=True)
    with grpc.secure_channel(address, mutual) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def https(cluster, path, key=None, body=None, verify=True):
    context = ssl.create_default_context(
        cafile=os.path.join(cluster.tls_dir, "ca.crt") if verify else None)
    request = urllib.request.Request(cluster.http_address + path, data=body)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_https_needs_the_ca_and_the_api_key(secure_cluster):
    c = secure_cluster
    assert c.http_address.startswith("https://")
    status, body = https(c, "/v1/models")
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    assert https(c, "/v1/models", key="wrong-key")[0] == 401
    status, body = https(c, "/v1/models", key=API_KEY)
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "tiny-flux"
    with pytest.raises(urllib.error.URLError) as e:
        https(c, "/v1/models", key=API_KEY, verify=False)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)


def test_public_metrics_need_the_api_key(secure_cluster):
    # Prometheus scrapes the plain metrics port (test_metrics_move_with_requests); on the public
    # port /metrics is behind the key like every other path.
    c = secure_cluster
    status, body = https(c, "/metrics")
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    status, body = https(c, "/metrics", key=API_KEY)
    assert status == 200
    assert b"dgrid_" in body


def test_oversized_requests_are_refused(secure_cluster):
    c = secure_cluster
    huge = "x" * (41 << 20)  # past the default --max-request-bytes (40 MiB: room for an image)
    status, _ = https(c, "/v1/images/generations", key=API_KEY,
                      body=json.dumps({"prompt": huge}).encode())
    assert status == 413
    with grpc.secure_channel(c.grpc_address, credentials(c)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            generate(generation_stub(channel), huge, 1, auth())
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_dgrid_cli_reaches_a_secured_cluster(secure_cluster, tmp_path):
    """`dgrid models` / `dgrid generate` with --tls-ca and --api-key (or $DGRID_API_KEY); without
    them the CLI is refused with a message saying why."""
    ca = os.path.join(secure_cluster.tls_dir, "ca.crt")
    server = ["--server", secure_cluster.grpc_address]
    env = {k: v for k, v in os.environ.items() if k != "DGRID_API_KEY"}

    def run(*args, extra_env=None):
        return subprocess.run([DGRID, *args], capture_output=True, text=True, timeout=120,
                              env={**env, **(extra_env or {})})

    out = run("models", *server, "--tls-ca", ca, "--api-key", API_KEY)
    assert out.returncode == 0, out.stderr
    assert "tiny-flux" in out.stdout, out.stdout
    out = run("models", *server, "--tls-ca", ca)
    assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr, out.stderr
    out = run("models", *server, "--tls-ca", ca, extra_env={"DGRID_API_KEY": "wrong-key"})
    assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr, out.stderr
    out = run("models", *server, "--api-key", API_KEY)  # plain text against TLS
    assert out.returncode != 0 and "UNAVAILABLE" in out.stderr, out.stderr
    out = run("models", *server, "--tls-cert", ca)
    assert out.returncode != 0 and "--tls-ca" in out.stderr, out.stderr

    png = tmp_path / "out.png"
    out = run("generate", *server, "--tls-ca", ca, "a red circle", "-o", str(png), "--seed", "4",
              "--width", "64", "--height", "64", "--steps", "3",
              extra_env={"DGRID_API_KEY": API_KEY})
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
