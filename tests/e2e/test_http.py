"""The orchestrator's HTTP front end under clients that misbehave."""
import json
import socket
import urllib.request


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
