"""Streamed previews (OpenAI's image streaming over HTTP, Preview events over gRPC) and HTTP clients
that hang up: their requests are cancelled on the stages (#24 item 1, #22 item 5)."""
import base64
import io
import json
import re
import socket
import time
import urllib.request

import grpc
import pytest

from conftest import HOLD, HOLD_STEP_MS

PROMPT = "a red circle on a blue background"
SMALL = dict(width=64, height=64, num_inference_steps=4)
GEN = "/v1/images/generations"


def openai_api(cluster):
    import openai
    return openai.OpenAI(base_url=cluster.http_address + "/v1", api_key="unused")


def png_size(data):
    from PIL import Image
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_openai_stream_with_two_partial_images(cluster):
    """The current openai package, stream=True and partial_images=2: two partial images, then the
    final image, which is the non-streamed result for the same seed byte for byte. Progress travels
    in SSE comments, which the package skips: it sees no event type it does not know."""
    api = openai_api(cluster)
    extra = {"seed": 42, "num_inference_steps": 4}
    events = list(api.images.generate(prompt=PROMPT, size="64x64", stream=True, partial_images=2,
                                      extra_body=extra))
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], types
    partials, completed = events[:2], events[2]
    assert [p.partial_image_index for p in partials] == [0, 1]
    for p in partials:
        data = base64.b64decode(p.b64_json)
        assert p.size == "%dx%d" % png_size(data)
        assert p.output_format == "png"
    final = base64.b64decode(completed.b64_json)
    assert completed.size == "64x64" and png_size(final) == (64, 64)
    plain = api.images.generate(prompt=PROMPT, size="64x64", response_format="b64_json",
                                extra_body=extra)
    assert final == base64.b64decode(plain.data[0].b64_json)


def sse_post(cluster, body, timeout=120):
    request = urllib.request.Request(cluster.http_address + GEN, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def test_stream_carries_progress_comments_in_step_order(cluster):
    body = {"prompt": PROMPT, "size": "64x64", "stream": True, "partial_images": 3, "seed": 3,
            "num_inference_steps": 8}
    with sse_post(cluster, body) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        text = reply.read().decode()
    blocks = [b for b in text.split("\n\n") if b]
    order = []
    for block in blocks:
        if block.startswith(": progress "):
            progress = json.loads(block[len(": progress "):])
            assert progress["total_steps"] == 8 and progress["eta_ms"] >= 0
            order.append(("step", progress["step"]))
        elif block.startswith("event: image_generation.partial_image"):
            data = json.loads(block.split("\ndata: ", 1)[1])
            order.append(("preview", data["step"]))
        elif block.startswith("event: image_generation.completed"):
            order.append(("completed", None))
    steps = [s for kind, s in order if kind == "step"]
    assert steps == list(range(1, 9)), order
    # Previews after steps 2, 4 and 6 of 8 (evenly spaced), each right after its step's event.
    previews = [(i, s) for i, (kind, s) in enumerate(order) if kind == "preview"]
    assert [s for _, s in previews] == [2, 4, 6], order
    for i, s in previews:
        assert ("step", s) in order[:i] and ("step", s + 1) not in order[:i], order
    assert order[-1] == ("completed", None)


@pytest.mark.parametrize("body,param", [
    ({"partial_images": 4, "stream": True}, "partial_images"),
    ({"partial_images": -1, "stream": True}, "partial_images"),
    ({"partial_images": "2", "stream": True}, "partial_images"),
    ({"partial_images": 1.5, "stream": True}, "partial_images"),
    ({"stream": "true"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream": True, "n": 2}, "n"),
    ({"stream": True, "size": "65x64"}, "width"),
])
def test_bad_streaming_input_is_a_400_naming_the_field(cluster, body, param):
    request = urllib.request.Request(
        cluster.http_address + GEN, data=json.dumps({"prompt": "x", **body}).encode(),
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 400
    reply = json.loads(error.value.read())
    assert reply["error"]["param"] == param, reply


def test_grpc_previews(client):
    events = list(client.stream(PROMPT, seed=42, preview_images=2, **SMALL))
    kinds = [e.WhichOneof("event") for e in events]
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [p.index for p in previews] == [0, 1]
    assert [p.step for p in previews] == [1, 2]  # floor(4 * k / 3), k = 1, 2
    assert all(p.total == 4 for p in previews)
    for p in previews:
        assert (p.image.width, p.image.height) == png_size(p.image.data)
        # Each comes after its step event and before the next one.
        i = next(i for i, e in enumerate(events) if e.WhichOneof("event") == "preview"
                 and e.preview.index == p.index)
        steps_before = [e.step.step for e in events[:i] if e.WhichOneof("event") == "step"]
        assert steps_before[-1] == p.step, kinds
    assert kinds[-1] == "result"
    plain = client.generate(PROMPT, seed=42, **SMALL)
    assert events[-1].result.image.data == plain.image.data
    with pytest.raises(grpc.RpcError) as error:
        list(client.stream(PROMPT, preview_images=4, **SMALL))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preview_images" in error.value.details()


def test_grpc_previews_of_an_image_to_image_request(client):
    # Image-to-image runs 8 - int(8 - 8 * 0.5) = 4 of its 8 steps: previews are spaced over those.
    source = client.generate(PROMPT, seed=1, **SMALL).image.data
    events = list(client.stream(PROMPT, seed=2, image=source, strength=0.5, preview_images=2,
                                width=64, height=64, num_inference_steps=8))
    steps = [e.step for e in events if e.WhichOneof("event") == "step"]
    assert [s.step for s in steps] == [1, 2, 3, 4] and steps[0].total == 4
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [(p.step, p.total) for p in previews] == [(1, 4), (2, 4)]
    assert events[-1].WhichOneof("event") == "result"


# --- Clients that hang up -------------------------------------------------------------------------

def disconnects(cluster, streamed):
    with urllib.request.urlopen(cluster.http_address + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith("dgrid_http_client_disconnects_total{") and \
                f'streamed="{streamed}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate, what, limit_s=120):
    """Polls `predicate` until it holds (an event wait with a bound, not a sleep for time)."""
    end = time.time() + limit_s
    while not predicate():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def open_request(cluster, body):
    host, port = cluster.http_address.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    data = json.dumps(body).encode()
    s.sendall((f"POST {GEN} HTTP/1.1\r\nHost: dgrid\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    return s


def denoiser_says(cluster, request_id, text):
    return re.search(rf"req={re.escape(request_id)}\].*{text}", cluster.log("denoiser-0")) \
        is not None


def held(cluster, request_id):
    return denoiser_says(cluster, request_id, "DGRID_TEST_STEP_PAUSE: holding the request")


def assert_denoiser_is_free(client):
    # The cluster's one denoiser would be busy for at least 1000 * HOLD_STEP_MS (200 s) with the
    # held request; a new request is served well within that only if the cancel stopped it.
    limit_s = 999 * HOLD_STEP_MS / 1000 / 3
    assert client.generate("after disconnect", seed=3, timeout=limit_s, **SMALL).image.data


def test_streamed_client_that_hangs_up_cancels_its_request(cluster, client):
    before = disconnects(cluster, "true")
    request_id = HOLD + "sse-walk-away"
    s = open_request(cluster, {"prompt": "a long run", "stream": True, "partial_images": 1,
                               "request_id": request_id, "size": "64x64",
                               "num_inference_steps": 1000, "seed": 1})
    # Read until the second step's progress comment: the request is mid-denoise, and held there
    # (conftest.HOLD) for as long as the test needs.
    received = b""
    while b'"step":2,' not in received:
        chunk = s.recv(65536)
        assert chunk, received[-500:]
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    s.close()
    wait_for(lambda: disconnects(cluster, "true") == before + 1, "the disconnect to be counted")
    wait_for(lambda: denoiser_says(cluster, request_id, "sampler cancelled"),
             "the denoiser to stop the request")
    assert_denoiser_is_free(client)


def test_waiting_client_that_hangs_up_cancels_its_request(cluster, client):
    """A plain (not streamed) call: nothing is written until the end, so the server watches the
    connection for the hang-up while the images are made."""
    before = disconnects(cluster, "false")
    request_id = HOLD + "plain-walk-away"
    s = open_request(cluster, {"prompt": "a long run", "request_id": request_id,
                               "size": "64x64", "num_inference_steps": 1000, "seed": 1})
    # Held (conftest.HOLD) mid-denoise: the denoiser logs when it starts holding it.
    wait_for(lambda: held(cluster, request_id), "the request to be held mid-denoise")
    s.close()
    wait_for(lambda: disconnects(cluster, "false") == before + 1, "the disconnect to be counted")
    wait_for(lambda: denoiser_says(cluster, request_id, "sampler cancelled"),
             "the denoiser to stop the request")
    assert_denoiser_is_free(client)
