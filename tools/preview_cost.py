"""What a preview costs on a decoder stage, each way it can be made, next to the final decode.

Sends the decoder of a running cluster (`dgrid up`; its address is in <log-dir>/decoder-0.log)
random latents of an image of the given sizes, inline, as a DecodeRequest: once as the final
picture, once per PreviewMode. Prints the median wall time of each (gRPC round trip included) and
the picture sizes, as JSON lines.

  python tools/preview_cost.py --decoder 127.0.0.1:PORT --sizes 512x512,1024x1024 --repeats 5
"""
import argparse
import json
import os
import statistics
import sys
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python"))
from dgrid_client import _stubs  # noqa: E402,F401  (generates the modules in a source tree)
from dgrid.v1 import stages_pb2, stages_pb2_grpc, tensor_pb2  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--decoder", required=True, help="host:port of a decoder stage")
    parser.add_argument("--sizes", default="512x512,1024x1024")
    parser.add_argument("--channels", type=int, default=16, help="the VAE's latent channels")
    parser.add_argument("--scale", type=int, default=8, help="the VAE's scale factor")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    stub = stages_pb2_grpc.DecoderStub(grpc.insecure_channel(
        args.decoder, options=[("grpc.max_receive_message_length", 256 << 20),
                               ("grpc.max_send_message_length", 256 << 20)]))
    rng = np.random.default_rng(0)
    modes = [("final", stages_pb2.PREVIEW_MODE_UNSPECIFIED),
             ("latent-rgb", stages_pb2.PREVIEW_MODE_LATENT_RGB),
             ("vae", stages_pb2.PREVIEW_MODE_VAE)]
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        latents = rng.standard_normal(
            (1, args.channels, height // args.scale, width // args.scale)).astype(np.float32)
        ref = tensor_pb2.TensorRef(dtype=tensor_pb2.DTYPE_FLOAT32, shape=latents.shape,
                                   byte_size=latents.nbytes, inline_data=latents.tobytes())
        for name, mode in modes:
            times = []
            for i in range(args.repeats + 1):  # the first is a warm-up (and the latent-RGB fit)
                start = time.perf_counter()
                reply = stub.Decode(stages_pb2.DecodeRequest(request_id=f"cost-{name}-{i}",
                                                             latents=ref, preview=mode),
                                    timeout=600)
                if i > 0:
                    times.append((time.perf_counter() - start) * 1e3)
                else:
                    first_ms = (time.perf_counter() - start) * 1e3
            print(json.dumps({"size": size, "mode": name, "median_ms": round(statistics.median(times), 1),
                              "first_ms": round(first_ms, 1),
                              "picture": f"{reply.image.width}x{reply.image.height}",
                              "png_bytes": len(reply.image.data)}))


if __name__ == "__main__":
    main()
