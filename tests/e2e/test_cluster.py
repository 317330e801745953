"""The disaggregated cluster against the single-process pipeline, the OpenAI-compatible endpoint,
cancellation, deadlines, disconnects, concurrency and bad requests — black-box, over loopback."""
import base64
import concurrent.futures
import io
import os
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from conftest import DGRID, HOLD, HOLD_STEP_MS, Cluster

SMALL = dict(width=64, height=64, num_inference_steps=4)


def local_png(model, seed, prompt, **kw):
    out = os.path.join(tempfile.mkdtemp(), "local.png")
    cmd = [DGRID, "generate", "--local", "--model", model, "--seed", str(seed), "--width",
           str(kw["width"]), "--height", str(kw["height"]), "--steps",
           str(kw["num_inference_steps"]), "-o", out, prompt]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(out, "rb") as f:
        return f.read()


@pytest.mark.parametrize("prompt,seed", [("a red circle on a blue background", 42),
                                         ("Ölgemälde eines Hundes 🐕", 7)])
def test_cluster_image_equals_single_process_byte_for_byte(cluster, client, prompt, seed):
    events = []
    result = client.generate(prompt, seed=seed, on_event=events.append, **SMALL)
    assert result.image.data == local_png(cluster.model, seed, prompt, **SMALL)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    assert kinds.index("encoded") < kinds.index("step") < kinds.index("decoded")
    steps = [e.step for e in events if e.WhichOneof("event") == "step"]
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert all(s.total == 4 and s.eta_ms >= 0 for s in steps)
    assert steps[-1].eta_ms == 0


def test_dgrid_generate_cli_against_the_cluster(cluster):
    out = os.path.join(tempfile.mkdtemp(), "remote.png")
    subprocess.run([DGRID, "generate", "--server", cluster.grpc_address, "--seed", "42",
                    "--width", "64", "--height", "64", "--steps", "4", "-o", out,
                    "a red circle on a blue background"], check=True, capture_output=True)
    with open(out, "rb") as f:
        remote = f.read()
    assert remote == local_png(cluster.model, 42, "a red circle on a blue background", **SMALL)
    models = subprocess.run([DGRID, "models", "--server", cluster.grpc_address], check=True,
                            capture_output=True, text=True).stdout
    assert "tiny-flux" in models


def test_openai_images_generate(cluster, client):
    import openai
    api = openai.OpenAI(base_url=cluster.http_address + "/v1", api_key="unused")
    response = api.images.generate(prompt="a red circle on a blue background", size="64x64",
                                   response_format="b64_json", n=1,
                                   extra_body={"seed": 42, "num_inference_steps": 4})
    png = base64.b64decode(response.data[0].b64_json)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    direct = client.generate("a red circle on a blue background", seed=42, **SMALL)
    assert png == direct.image.data
    # output_format "webp": a lossless WebP of the same picture.
    webp = api.images.generate(prompt="a red circle on a blue background", size="64x64",
                               response_format="b64_json", n=1, output_format="webp",
                               extra_body={"seed": 42, "num_inference_steps": 4})
    webp_bytes = base64.b64decode(webp.data[0].b64_json)
    assert webp_bytes[:4] == b"RIFF" and webp_bytes[8:12] == b"WEBP"
    from PIL import Image
    as_webp = Image.open(io.BytesIO(webp_bytes))
    assert as_webp.format == "WEBP"
    assert as_webp.convert("RGB").tobytes() == Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    models = api.models.list()
    assert "tiny-flux" in [m.id for m in models.data]
    with pytest.raises(openai.BadRequestError) as error:
        api.images.generate(prompt="x", size="65x64", response_format="b64_json")
    assert "size" in str(error.value) or "width" in str(error.value)


def first_step_then(stream, action):
    for event in stream:
        if event.WhichOneof("event") == "step":
            action(event)
            break
    list(stream)  # drain until the end


def test_cancel_mid_denoise(client):
    # A held request (conftest.HOLD) cannot finish before the cancel arrives, however fast the
    # machine: its 1000 steps take at least 1000 * HOLD_STEP_MS.
    stream = client.stream("a long run", request_id=HOLD + "cancel-me", seed=1, width=64,
                           height=64, num_inference_steps=1000)
    with pytest.raises(grpc.RpcError) as error:
        first_step_then(stream, lambda e: client.cancel(HOLD + "cancel-me"))
    assert error.value.code() == grpc.StatusCode.CANCELLED
    assert client.generate("after cancel", seed=2, **SMALL).image.data  # still serving


def test_deadline_exceeded_mid_denoise(client):
    # The deadline is derived from a whole small request measured here, so that it passes after
    # the held request's first step (a step event comes first) and long before its 1000 steps
    # could end (they take at least 1000 * HOLD_STEP_MS).
    start = time.time()
    assert client.generate("measure", seed=2, **SMALL).image.data
    deadline_s = 1.0 + 5 * (time.time() - start)
    assert deadline_s < 999 * HOLD_STEP_MS / 1000 / 4, deadline_s
    for i, limit in enumerate([dict(timeout=deadline_s),
                               dict(deadline_ms=int(deadline_s * 1000))]):
        kinds = []
        with pytest.raises(grpc.RpcError) as error:
            for event in client.stream("a long run", request_id=f"{HOLD}deadline-{i}", seed=1,
                                       width=64, height=64, num_inference_steps=1000, **limit):
                kinds.append(event.WhichOneof("event"))
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (limit, error.value)
        assert "step" in kinds and "result" not in kinds, (limit, kinds)
    assert client.generate("after deadline", seed=2, **SMALL).image.data


def test_client_disconnect_frees_the_denoiser(cluster, client):
    stream = client.stream("a long run", request_id=HOLD + "walk-away", seed=1, width=64,
                           height=64, num_inference_steps=1000)
    for event in stream:
        if event.WhichOneof("event") == "step":
            stream.cancel()
            break
    # The cluster's one denoiser would be busy for at least 1000 * HOLD_STEP_MS (200 s) with the
    # held request; a new request is served well within that only if the disconnect stopped it.
    limit_s = 999 * HOLD_STEP_MS / 1000 / 3
    assert client.generate("after disconnect", seed=3, timeout=limit_s, **SMALL).image.data


@pytest.mark.parametrize("kind,code", [("oom", grpc.StatusCode.RESOURCE_EXHAUSTED),
                                       ("error", grpc.StatusCode.INTERNAL)])
def test_a_model_step_that_throws_fails_that_request_alone(model, kind, code):
    """LibTorch throws from inside the sampler loop (an out-of-memory error, or any other error;
    the denoiser's DGRID_TEST_STEP_THROW seam): that request ends with RESOURCE_EXHAUSTED or
    INTERNAL naming the cause, the denoiser process lives on, and the next request is served."""
    from dgrid_client import Client
    c = Cluster(model, env={"DGRID_TEST_STEP_THROW": f"fail-:{kind}"})
    try:
        denoisers = c.stage_pids("dgrid-denoiser")
        assert len(denoisers) == 1, denoisers
        with Client(c.grpc_address) as client:
            with pytest.raises(grpc.RpcError) as error:
                client.generate("a failing step", request_id="fail-1", seed=1, timeout=120,
                                **SMALL)
            assert error.value.code() == code, error.value
            details = error.value.details()
            assert "DGRID_TEST_STEP_THROW" in details, details
            # The stage and the request id to quote; no worker address or pid.
            assert "denoiser (request fail-1)" in details, details
            assert "127.0.0.1" not in details and str(denoisers[0]) not in details, details
            for i in range(2):
                assert client.generate(f"after the failure {i}", seed=i, timeout=120,
                                       **SMALL).image.data
        assert c.stage_pids("dgrid-denoiser") == denoisers  # the same process, still serving
    finally:
        c.stop()


BAD = [
    ({"prompt": "", **SMALL}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    # Over the orchestrator's prompt limit (16 KiB) but inside its 40 MiB request limit.
    ({"prompt": "x" * 100_000, **SMALL}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ({"prompt": "x", "width": 65, "height": 64}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
    ({"prompt": "x", "width": 64, "height": 70}, grpc.StatusCode.INVALID_ARGUMENT, "height"),
    ({"prompt": "x", "width": 8, "height": 64}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
    ({"prompt": "x", "width": -64, "height": 64}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
    ({"prompt": "x", "width": 4096, "height": 64}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
    ({"prompt": "x", "width": 64, "height": 1 << 20}, grpc.StatusCode.INVALID_ARGUMENT, "height"),
    ({"prompt": "x", "num_inference_steps": -1}, grpc.StatusCode.INVALID_ARGUMENT,
     "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 10 ** 6}, grpc.StatusCode.INVALID_ARGUMENT,
     "num_inference_steps"),
    ({"prompt": "x", "guidance_scale": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT,
     "guidance_scale"),
    ({"prompt": "x", "guidance_scale": float("inf")}, grpc.StatusCode.INVALID_ARGUMENT,
     "guidance_scale"),
    ({"prompt": "x", "guidance_scale": -1.0}, grpc.StatusCode.INVALID_ARGUMENT,
     "guidance_scale"),
    ({"prompt": "x", "true_cfg_scale": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT,
     "true_cfg_scale"),
    ({"prompt": "x", "true_cfg_scale": 0.5}, grpc.StatusCode.INVALID_ARGUMENT,
     "true_cfg_scale"),
    ({"prompt": "x", "model": "no-such-model"}, None, "model"),
    ({"prompt": "x", "output_format": 99}, grpc.StatusCode.INVALID_ARGUMENT, "output_format"),
    ({"prompt": "x", "priority": 42}, grpc.StatusCode.INVALID_ARGUMENT, "priority"),
    ({"prompt": "x", "request_id": "bad id with spaces"}, grpc.StatusCode.INVALID_ARGUMENT,
     "request_id"),
    ({"prompt": "x", "request_id": "r" * 65}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ({"prompt": "x", "deadline_ms": -5}, grpc.StatusCode.INVALID_ARGUMENT, "deadline_ms"),
    ({"prompt": "x", "max_sequence_length": 513}, grpc.StatusCode.INVALID_ARGUMENT,
     "max_sequence_length"),
    ({"prompt": "x", "max_sequence_length": -1}, grpc.StatusCode.INVALID_ARGUMENT,
     "max_sequence_length"),
    ({"prompt": "x", "negative_prompt": "n" * 100_000}, grpc.StatusCode.INVALID_ARGUMENT,
     "negative_prompt"),
    ({"prompt": "\udcff"}, None, "prompt"),
    ({"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1001},
     grpc.StatusCode.INVALID_ARGUMENT, "num_inference_steps"),
    # The served model is an image model (FLUX's family): video fields are refused by name.
    ({"prompt": "x", "num_frames": 81}, grpc.StatusCode.INVALID_ARGUMENT, "num_frames"),
    ({"prompt": "x", "fps": 16}, grpc.StatusCode.INVALID_ARGUMENT, "fps"),
    ({"prompt": "x", "output_format": 3}, grpc.StatusCode.INVALID_ARGUMENT, "output_format"),
]


def test_models_say_which_fields_they_accept(client):
    # ListModels names each model's family and its frames: an image model makes one frame.
    models = client.list_models()
    assert models
    for m in models:
        assert m.family == "flux", m
        assert (m.max_num_frames, m.default_num_frames, m.frame_step, m.default_fps) == (1, 1, 1, 0)
    events = []
    result = client.generate("one frame", seed=3, num_frames=1, on_event=events.append, **SMALL)
    assert result.image.data and not result.HasField("video")
    accepted = [e.accepted for e in events if e.HasField("accepted")]
    assert accepted and accepted[0].num_frames == 1 and accepted[0].fps == 0


@pytest.mark.parametrize("fields,code,field", BAD)
def test_malformed_request_names_the_field(client, fields, code, field):
    prompt = fields.pop("prompt") if "prompt" in fields else "x"
    fields = dict(fields)
    try:
        with pytest.raises(grpc.RpcError) as error:
            client.generate(prompt, timeout=30, **fields)
    except (ValueError, UnicodeEncodeError):
        pytest.skip("the Python client itself refuses this value")  # e.g. a lone surrogate
    if code is not None:
        assert error.value.code() == code, error.value.details()
    else:
        assert error.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert field in error.value.details()


def test_request_over_the_size_limit_is_resource_exhausted(client):
    # The public gRPC server refuses messages over --max-request-bytes (40 MiB) before parsing them.
    with pytest.raises(grpc.RpcError) as error:
        client.generate("x" * (41 << 20), timeout=30, **SMALL)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()


def test_bytes_that_are_no_message_get_invalid_argument(cluster):
    """A client that sends bytes its method's message cannot parse from (a wrong .proto, a broken
    encoder) is told so with INVALID_ARGUMENT naming the method, by the orchestrator and by a
    stage, instead of gRPC's UNIMPLEMENTED ("no such method")."""
    import re
    garbage = b"\xff" * 11  # a varint that never ends
    stage = re.search(r"listening on (\S+:\d+)", cluster.log("denoiser-0")).group(1)
    calls = [(cluster.grpc_address, "/dgrid.v1.Generation/Generate", "stream"),
             (cluster.grpc_address, "/dgrid.v1.Generation/ListModels", "unary"),
             (stage, "/dgrid.v1.Denoiser/Denoise", "stream")]
    for address, method, kind in calls:
        with grpc.insecure_channel(address) as channel:
            call = (channel.unary_stream if kind == "stream" else channel.unary_unary)(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as error:
                reply = call(garbage, timeout=30)
                if kind == "stream":
                    list(reply)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.value)
            assert method in error.value.details(), error.value.details()


def test_services_keep_serving_after_bad_requests(client):
    assert len(BAD) >= 25
    assert client.generate("still fine", seed=5, **SMALL).image.data


def test_200_requests_from_32_clients_all_accounted_for(cluster):
    from dgrid_client import Client
    outcomes = []
    lock = threading.Lock()

    def one(i):
        with Client(cluster.grpc_address) as c:
            try:
                r = c.generate(f"request {i}", seed=i, width=32, height=32,
                               num_inference_steps=1, timeout=300)
                outcome = ("ok", len(r.image.data) > 0)
            except grpc.RpcError as e:
                outcome = (e.code().name, e.details())
        with lock:
            outcomes.append(outcome)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(200)))
    assert len(outcomes) == 200
    # 32 at once is within the orchestrator's admission limit (64 running, 256 waiting): a stage
    # whose queue is full is back-pressure the orchestrator absorbs, so every request succeeds.
    assert outcomes == [("ok", True)] * 200, [o for o in outcomes if o != ("ok", True)]


def test_kill_one_of_two_decoders_during_50_requests(cluster):
    """A decoder is killed once the first results are back, with requests still to come: every
    request, before and after the kill, ends with its image (the survivor takes the work)."""
    from dgrid_client import Client
    decoders = cluster.stage_pids("dgrid-decoder")
    assert len(decoders) == 2, decoders
    results = []
    lock = threading.Lock()
    first_results = threading.Event()

    def one(i):
        with Client(cluster.grpc_address) as c:
            try:
                r = c.generate(f"kill test {i}", seed=100 + i, width=32, height=32,
                               num_inference_steps=2, timeout=300)
                outcome = "ok" if r.image.data else "empty"
            except grpc.RpcError as e:
                outcome = f"{e.code().name}: {e.details()}"
        with lock:
            results.append(outcome)
            if len(results) >= 5:
                first_results.set()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(25)]
        # Waits for an event, not for a time: five results back, the rest still in flight.
        assert first_results.wait(timeout=300), results
        os.kill(decoders[0], 9)
        # Half of the requests are sent only after the kill, so it lands mid-run on any machine.
        futures += [pool.submit(one, i) for i in range(25, 50)]
        concurrent.futures.wait(futures)
    assert len(results) == 50
    assert results == ["ok"] * 50, [r for r in results if r != "ok"]
