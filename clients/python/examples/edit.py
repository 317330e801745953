#!/usr/bin/env python3
"""Image-to-image: redraws an input PNG or JPEG from a prompt.

    python examples/edit.py in.png "a red circle" out.png --strength 0.6 [--server 127.0.0.1:50050]
strength 1.0 ignores the input; smaller values keep more of it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dgrid_client import Client  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("prompt")
    parser.add_argument("out")
    parser.add_argument("--server", default="127.0.0.1:50050")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with Client(args.server) as client:
        result = client.edit(args.image, args.prompt, strength=args.strength, seed=args.seed)
    with open(args.out, "wb") as f:
        f.write(result.image.data)
    print(f"wrote {args.out}: {result.image.width}x{result.image.height}, seed {result.seed}")


if __name__ == "__main__":
    main()
