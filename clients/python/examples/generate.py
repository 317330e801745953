#!/usr/bin/env python3
"""Generates one image on a running dgrid cluster (`dgrid up`) and prints its progress.

    python clients/python/examples/generate.py "a red circle" out.png [--server 127.0.0.1:50050]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dgrid_client import Client, pb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt")
    parser.add_argument("out")
    parser.add_argument("--server", default="127.0.0.1:50050")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    def show(event: "pb.GenerateEvent") -> None:
        kind = event.WhichOneof("event")
        if kind == "step":
            print(f"step {event.step.step}/{event.step.total} eta {event.step.eta_ms:.0f} ms")
        elif kind != "result":
            print(kind)

    fields = {} if args.seed is None else {"seed": args.seed}
    with Client(args.server) as client:
        result = client.generate(args.prompt, on_event=show, **fields)
    with open(args.out, "wb") as f:
        f.write(result.image.data)
    print(f"wrote {args.out}: {result.image.width}x{result.image.height}, seed {result.seed}")


if __name__ == "__main__":
    main()
