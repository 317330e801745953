#!/usr/bin/env python3
"""Streams one request: progress per step, preview images as they come, then the result.

    python examples/stream.py "a red circle" out.png --previews 2 [--server 127.0.0.1:50050]
Previews are written beside the output as out.preview-<index>.png.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dgrid_client import Client  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt")
    parser.add_argument("out")
    parser.add_argument("--server", default="127.0.0.1:50050")
    parser.add_argument("--previews", type=int, default=2, help="0-3 preview images")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    stem = os.path.splitext(args.out)[0]
    with Client(args.server) as client:
        stream = client.stream(args.prompt, previews=args.previews, seed=args.seed)
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "step":
                print(f"step {event.step.step}/{event.step.total}, eta {event.step.eta_ms:.0f} ms")
            elif kind == "preview":
                path = f"{stem}.preview-{event.preview.index}.png"
                with open(path, "wb") as f:
                    f.write(event.preview.image.data)
                print(f"preview {event.preview.index} at step {event.preview.step}: {path}")
            elif kind == "result":
                with open(args.out, "wb") as f:
                    f.write(event.result.image.data)
                print(f"wrote {args.out}, seed {event.result.seed}, "
                      f"{event.result.timings.total_ms:.0f} ms")
            else:
                print(kind)


if __name__ == "__main__":
    main()
