#!/usr/bin/env python3
"""How much eight slow HTTP clients delay a normal request (issue #22 acceptance).

Against a running cluster (the HTTP address is the second word of `dgrid up --ready-file`'s line):
times N GET /v1/models requests, then opens eight connections that send half a request and its
headers and then one byte now and then (as the hostile test in tests/e2e/test_http.py does),
times N more while they are held open, and writes a JSON report of both.

  dgrid up --port 0 --http-port 0 --ready-file /tmp/ready &
  .venv/bin/python bench/http_slow_clients.py --ready-file /tmp/ready --out report.json
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request


def timed(url, n):
    out = []
    for _ in range(n):
        start = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as reply:
            assert reply.status == 200
            reply.read()
        out.append((time.monotonic() - start) * 1e3)
    return out


def summary(values):
    return {"requests": len(values), "median_ms": statistics.median(values),
            "max_ms": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--slow", type=int, default=8)
    parser.add_argument("--card", default="", help="the machine, in words")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    http = open(args.ready_file).read().split()[1]
    host, port = http.removeprefix("http://").split(":")
    url = http + "/v1/models"
    alone = timed(url, args.requests)
    slow = []
    for i in range(args.slow):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ".encode())
        slow.append(s)
    held = []
    try:
        for _ in range(2):
            held += timed(url, args.requests)
            for s in slow:
                s.sendall(b"a")  # a byte now and then: the stall timeout does not close them
    finally:
        for s in slow:
            s.close()
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = {
        "benchmark": "http_slow_clients",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "-C", source, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "card": args.card,
        "endpoint": "GET /v1/models",
        "slow_connections": args.slow,
        "without_slow_clients": summary(alone),
        "with_slow_clients": summary(held),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
