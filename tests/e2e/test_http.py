"""The orchestrator's HTTP front end under clients that misbehave."""
import json
import socket
import urllib.request

import pytest


def test_slow_clients_do_not_starve_a_normal_request(cluster):
    # Eight connections that send half a request line and headers, then nothing: each holds one of
    # the server's connection threads until its read times out. A normal request is served while
    # they are all still connected (httplib's default pool had eight threads: it waited for them).
    host, port = cluster.http_address.removeprefix("http://").split(":")
    slow = []
    for i in range(8):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ".encode())
        slow.append(s)
    try:
        with urllib.request.urlopen(cluster.http_address + "/v1/models", timeout=60) as reply:
            assert reply.status == 200
            assert json.loads(reply.read())["data"][0]["id"] == "tiny-flux"
        # They were still connected, unanswered, when the request was served: the server did not
        # have to give up on them first.
        for s in slow:
            s.setblocking(False)
            try:
                data = s.recv(64)
            except BlockingIOError:
                continue  # still open, nothing sent
            raise AssertionError(f"the server answered or closed a slow connection first: {data!r}")
    finally:
        for s in slow:
            s.close()


# --- Hostile requests: every one gets an HTTP answer with an OpenAI-shaped JSON error body -------

GEN = "/v1/images/generations"


def raw_request(cluster, data, timeout=20):
    """Sends `data` as is on a fresh connection; returns (status, headers, body) of the answer."""
    host, port = cluster.http_address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        # Not half-closed after sending: the server takes that for a client gone.
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered (413, say) and closed before the rest was sent
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP answer: {reply[:200]!r}"
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return status, headers, body


def request_bytes(method, path, body=b"", headers=(), content_length=True):
    lines = [f"{method} {path} HTTP/1.1", "Host: dgrid", "Connection: close", *headers]
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post_json(text):
    body = text if isinstance(text, bytes) else text.encode()
    return request_bytes("POST", GEN, body, ["Content-Type: application/json"])


def with_prompt(**fields):
    return post_json(json.dumps({"prompt": "x", **fields}))


BIG = "y" * 20000

# (name, raw request, expected status, expected "param" or None)
HOSTILE = [
    # Bodies that are not a JSON object.
    ("empty body", post_json(""), 400, "body"),
    ("not JSON", post_json("not json"), 400, "body"),
    ("JSON array", post_json("[]"), 400, "body"),
    ("JSON null", post_json("null"), 400, "body"),
    ("JSON number", post_json("42"), 400, "body"),
    ("JSON string", post_json('"prompt"'), 400, "body"),
    ("unterminated object", post_json("{"), 400, "body"),
    ("missing value", post_json('{"prompt": }'), 400, "body"),
    ("trailing comma", post_json('{"prompt": "x",}'), 400, "body"),
    ("single quotes", post_json("{'prompt': 'x'}"), 400, "body"),
    ("invalid UTF-8", post_json(b'{"prompt": "\xff\xfe"}'), 400, "body"),
    ("NUL in body", post_json(b'{"prompt": "x"\x00}'), 400, "body"),
    ("NaN literal", post_json('{"prompt": "x", "guidance_scale": NaN}'), 400, "body"),
    ("deep nesting", post_json("[" * 5000 + "]" * 5000), 400, "body"),
    ("deep nesting in a field", post_json('{"prompt": "x", "size": ' + "[" * 3000 + "]" * 3000
                                          + "}"), 400, "size"),
    # prompt
    ("no prompt", post_json("{}"), 400, "prompt"),
    ("null prompt", post_json('{"prompt": null}'), 400, "prompt"),
    ("number prompt", post_json('{"prompt": 5}'), 400, "prompt"),
    ("array prompt", post_json('{"prompt": ["a"]}'), 400, "prompt"),
    ("object prompt", post_json('{"prompt": {"a": 1}}'), 400, "prompt"),
    ("boolean prompt", post_json('{"prompt": true}'), 400, "prompt"),
    ("empty prompt", post_json('{"prompt": ""}'), 400, "prompt"),
    ("prompt over 16384 bytes", post_json(json.dumps({"prompt": BIG})), 400, "prompt"),
    # n
    ("n = 0", with_prompt(n=0), 400, "n"),
    ("n = -1", with_prompt(n=-1), 400, "n"),
    ("n = 11", with_prompt(n=11), 400, "n"),
    ("n as string", with_prompt(n="2"), 400, "n"),
    ("n fractional", with_prompt(n=1.5), 400, "n"),
    ("n = 1e30", post_json('{"prompt": "x", "n": 1e30}'), 400, "n"),
    ("n = 2^64", post_json('{"prompt": "x", "n": 18446744073709551616}'), 400, "n"),
    # size
    ("size without x", with_prompt(size="64"), 400, "size"),
    ("size without height", with_prompt(size="64x"), 400, "size"),
    ("size without width", with_prompt(size="x64"), 400, "size"),
    ("size with three parts", with_prompt(size="64x64x64"), 400, "size"),
    ("negative size", with_prompt(size="-64x64"), 400, "size"),
    ("zero size", with_prompt(size="0x64"), 400, "size"),
    ("size words", with_prompt(size="abcxdef"), 400, "size"),
    ("size as number", with_prompt(size=64), 400, "size"),
    ("size overflowing int", with_prompt(size="99999999999x64"), 400, "size"),
    ("size with spaces", with_prompt(size=" 64 x 64 "), 400, "size"),
    ("width not a multiple of 16", with_prompt(size="65x64"), 400, "width"),
    ("height not a multiple of 16", with_prompt(size="64x70"), 400, "height"),
    ("width over the model's limit", with_prompt(size="4096x64"), 400, "width"),
    ("height over the model's limit", with_prompt(size="64x4096"), 400, "height"),
    # response_format, model, negative_prompt
    ("response_format url", with_prompt(response_format="url"), 400, "response_format"),
    ("response_format number", with_prompt(response_format=1), 400, "response_format"),
    ("output_format jpeg", with_prompt(output_format="jpeg"), 400, "output_format"),
    ("output_format number", with_prompt(output_format=2), 400, "output_format"),
    ("model number", with_prompt(model=5), 400, "model"),
    ("unknown model", with_prompt(model="no-such-model"), 404, "model"),
    ("negative_prompt number", with_prompt(negative_prompt=5), 400, "negative_prompt"),
    ("negative_prompt over 16384 bytes", with_prompt(negative_prompt=BIG), 400, "negative_prompt"),
    # steps, seed, guidance, true CFG, deadline
    ("steps = 0", with_prompt(num_inference_steps=0), 400, "num_inference_steps"),
    ("steps = -1", with_prompt(num_inference_steps=-1), 400, "num_inference_steps"),
    ("steps = 1001", with_prompt(num_inference_steps=1001), 400, "num_inference_steps"),
    ("steps as string", with_prompt(num_inference_steps="4"), 400, "num_inference_steps"),
    ("steps fractional", with_prompt(num_inference_steps=2.5), 400, "num_inference_steps"),
    ("seed = -1", with_prompt(seed=-1), 400, "seed"),
    ("seed as string", with_prompt(seed="1"), 400, "seed"),
    ("seed fractional", with_prompt(seed=1.5), 400, "seed"),
    ("seed = 2^64", post_json('{"prompt": "x", "seed": 18446744073709551616}'), 400, "seed"),
    ("guidance as string", with_prompt(guidance_scale="a"), 400, "guidance_scale"),
    ("guidance negative", with_prompt(guidance_scale=-1), 400, "guidance_scale"),
    ("guidance huge", with_prompt(guidance_scale=1e9), 400, "guidance_scale"),
    ("true_cfg below 1", with_prompt(true_cfg_scale=0.5), 400, "true_cfg_scale"),
    ("true_cfg as string", with_prompt(true_cfg_scale="x"), 400, "true_cfg_scale"),
    ("true_cfg huge", with_prompt(true_cfg_scale=1e9), 400, "true_cfg_scale"),
    ("deadline negative", with_prompt(deadline_ms=-5), 400, "deadline_ms"),
    ("deadline as string", with_prompt(deadline_ms="5"), 400, "deadline_ms"),
    ("deadline fractional", with_prompt(deadline_ms=1.5), 400, "deadline_ms"),
    # Methods and paths.
    ("GET generations", request_bytes("GET", GEN), 405, None),
    ("PUT generations", request_bytes("PUT", GEN, b"{}"), 405, None),
    ("DELETE generations", request_bytes("DELETE", GEN), 405, None),
    ("PATCH generations", request_bytes("PATCH", GEN, b"{}"), 405, None),
    ("POST models", request_bytes("POST", "/v1/models", b"{}"), 405, None),
    ("PUT models", request_bytes("PUT", "/v1/models", b"{}"), 405, None),
    ("DELETE models", request_bytes("DELETE", "/v1/models"), 405, None),
    ("POST metrics", request_bytes("POST", "/metrics", b"x"), 405, None),
    ("unknown path", request_bytes("GET", "/nope"), 404, None),
    ("POST to the playground page", request_bytes("POST", "/", b"{}"), 405, None),
    ("DELETE the playground page", request_bytes("DELETE", "/"), 405, None),
    ("images edits not a form", request_bytes("POST", "/v1/images/edits", b"{}"), 400, "body"),
    ("long unknown path", request_bytes("GET", "/" + "a" * 4000), 404, None),
    ("generations with a trailing slash", request_bytes("POST", GEN + "/", b"{}"), 404, None),
    # The video endpoint on an image model, and its methods (the video cases of a video model are
    # in tests/parity/wan/wan_local_cli_test.py).
    ("video of an image model", request_bytes("POST", "/v1/videos", b'{"prompt": "x"}',
                                              ["Content-Type: application/json"]), 400, "model"),
    ("video of an unknown model", request_bytes(
        "POST", "/v1/videos", b'{"prompt": "x", "model": "nope"}',
        ["Content-Type: application/json"]), 404, "model"),
    ("video without a prompt", request_bytes("POST", "/v1/videos", b"{}",
                                             ["Content-Type: application/json"]), 400, "prompt"),
    ("video body not JSON", request_bytes("POST", "/v1/videos", b"{x",
                                          ["Content-Type: application/json"]), 400, "body"),
    ("video with an input image", request_bytes(
        "POST", "/v1/videos", b'{"prompt": "x", "input_reference": "x.png"}',
        ["Content-Type: application/json"]), 400, "input_reference"),
    ("unknown video", request_bytes("GET", "/v1/videos/video_123"), 404, "video_id"),
    ("unknown video's content", request_bytes("GET", "/v1/videos/video_123/content"), 404,
     "video_id"),
    ("delete an unknown video", request_bytes("DELETE", "/v1/videos/video_123"), 404, "video_id"),
    ("video content variant", request_bytes("GET", "/v1/videos/video_1/content?variant=x"), 400,
     "variant"),
    ("video list limit 0", request_bytes("GET", "/v1/videos?limit=0"), 400, "limit"),
    ("video list after unknown", request_bytes("GET", "/v1/videos?after=video_9"), 404, "after"),
    ("PUT videos", request_bytes("PUT", "/v1/videos", b"{}"), 405, None),
    ("POST a video id", request_bytes("POST", "/v1/videos/video_1", b"{}"), 405, None),
    ("DELETE video content", request_bytes("DELETE", "/v1/videos/video_1/content"), 405, None),
    # Sizes and framing.
    # The default limit (--max-request-bytes) is 40 MiB: room for an edit's image.
    ("body over the limit", post_json(json.dumps({"prompt": "z" * (41 << 20)})), 413, None),
    ("Content-Length over the limit", request_bytes(
        "POST", GEN, headers=["Content-Length: 99999999999"], content_length=False), 413, None),
    ("URI over 8 KiB", request_bytes("GET", "/v1/models?" + "q" * 9000), 414, None),
    ("200 headers", request_bytes("GET", "/v1/models",
                                  headers=[f"X-H{i}: v" for i in range(200)]), 431, None),
    ("40 KiB of headers", request_bytes("GET", "/v1/models",
                                        headers=[f"X-Big{i}: {'b' * 7000}" for i in range(6)]),
     431, None),
]

# Answered with some 4xx and a JSON error body (which one is the HTTP library's choice).
HOSTILE_ANY_4XX = [
    ("garbage request line", b"hello\r\n\r\n"),
    ("binary garbage", bytes(range(256)) + b"\r\n\r\n"),
    ("unknown method", b"FOO /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("no HTTP version", b"GET /v1/models\r\nHost: x\r\n\r\n"),
    ("header line over 8 KiB", request_bytes("GET", "/v1/models", headers=["X-Long: " + "l" * 9000])),
    ("Content-Length not a number", request_bytes("POST", GEN, b"{}",
                                                  ["Content-Length: abc"], content_length=False)),
    ("negative Content-Length", request_bytes("POST", GEN, b"{}", ["Content-Length: -1"],
                                              content_length=False)),
    ("bad chunked body", request_bytes("POST", GEN, b"zz\r\nxx\r\n0\r\n\r\n",
                                       ["Transfer-Encoding: chunked"], content_length=False)),
]


@pytest.mark.parametrize("name,data,status,param", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_request_gets_a_json_error(cluster, name, data, status, param):
    got, headers, body = raw_request(cluster, data)
    assert got == status, (name, got, body[:300])
    error = json.loads(body)["error"]
    assert error["message"] and error["type"] and error["code"], error
    if param is not None:
        assert error["param"] == param, error
    if got == 405:
        assert headers.get("allow") in ("GET", "POST", "GET, POST", "GET, DELETE"), headers


@pytest.mark.parametrize("name,data", HOSTILE_ANY_4XX, ids=[c[0] for c in HOSTILE_ANY_4XX])
def test_malformed_http_gets_a_4xx_with_a_json_error(cluster, name, data):
    got, _, body = raw_request(cluster, data)
    assert 400 <= got < 500, (name, got, body[:300])
    assert json.loads(body)["error"]["message"], body


def test_hostile_battery_is_large_and_leaves_the_server_serving(cluster):
    assert len(HOSTILE) + len(HOSTILE_ANY_4XX) >= 90
    with urllib.request.urlopen(cluster.http_address + "/v1/models", timeout=60) as reply:
        assert reply.status == 200


def test_seeds_up_to_2_to_the_64_minus_1_are_accepted(cluster):
    # As gRPC's uint64 seed: the largest one runs, and comes back exact.
    body = json.dumps({"prompt": "a big seed", "size": "64x64", "num_inference_steps": 1,
                       "seed": 2 ** 64 - 1}).encode()
    got, _, reply = raw_request(cluster, post_json(body), timeout=300)
    assert got == 200, reply[:300]
    assert json.loads(reply)["data"][0]["seed"] == 2 ** 64 - 1
