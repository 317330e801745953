#!/usr/bin/env python3
"""Starts a long request, cancels it after a few steps, and shows the CANCELLED status.

    python examples/cancel.py "a red circle" [--after-steps 3] [--server 127.0.0.1:50050]
`Client.cancel(request_id)` cancels from anywhere (another thread or process); ending the stream
(`stream.cancel()`) does the same for the caller that holds it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dgrid_client import Client, grpc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt")
    parser.add_argument("--server", default="127.0.0.1:50050")
    parser.add_argument("--after-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    with Client(args.server) as client:
        stream = client.stream(args.prompt, num_inference_steps=args.steps)
        try:
            for event in stream:
                if event.WhichOneof("event") == "step":
                    print(f"step {event.step.step}/{event.step.total}")
                    if event.step.step >= args.after_steps:
                        client.cancel(stream.request_id)
            print("finished before the cancel arrived")
        except grpc.RpcError as error:
            print(f"request {stream.request_id}: {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
