"""A small Python client for dgrid's public gRPC API (dgrid.v1.Generation).

The gRPC stubs are generated from protos/dgrid/v1 with grpcio-tools the first time the package is
imported (into dgrid_client/_gen, not committed), so the client always matches the protos it ships
with.

    from dgrid_client import Client
    with Client("127.0.0.1:50050") as client:
        result = client.generate("a red circle", width=64, height=64, seed=7,
                                 on_event=print)
        open("out.png", "wb").write(result.image.data)

        # A video model (Wan): an MP4, or raw RGB frames with output_format="raw".
        video = client.generate_video("a red circle", num_frames=33, fps=16)
        open("out.mp4", "wb").write(video.data)
"""
import os
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
_GEN = os.path.join(_HERE, "_gen")
_PROTO_ROOT = os.path.abspath(os.path.join(_HERE, "..", "..", "..", "protos"))
_PROTOS = ["dgrid/v1/tensor.proto", "dgrid/v1/generation.proto", "dgrid/v1/stages.proto",
           "dgrid/v1/registry.proto"]
_lock = threading.Lock()


def _generate_stubs():
    """Runs protoc (grpcio-tools) when the generated modules are missing or older than the protos."""
    stamp = os.path.join(_GEN, "dgrid", "v1", "generation_pb2_grpc.py")
    newest = max(os.path.getmtime(os.path.join(_PROTO_ROOT, p)) for p in _PROTOS)
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= newest:
        return
    from grpc_tools import protoc
    import importlib.resources
    os.makedirs(_GEN, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{_PROTO_ROOT}", f"-I{well_known}", f"--python_out={_GEN}",
            f"--grpc_python_out={_GEN}"] + [os.path.join(_PROTO_ROOT, p) for p in _PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed for " + ", ".join(_PROTOS))
    for d in (os.path.join(_GEN, "dgrid"), os.path.join(_GEN, "dgrid", "v1")):
        open(os.path.join(d, "__init__.py"), "a").close()


with _lock:
    _generate_stubs()
if _GEN not in sys.path:
    sys.path.insert(0, _GEN)

import grpc  # noqa: E402
from dgrid.v1 import generation_pb2 as pb  # noqa: E402
from dgrid.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402

MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class Client:
    """Blocking client. `generate` returns the GenerateResult message; errors raise grpc.RpcError."""

    def __init__(self, address="127.0.0.1:50050"):
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.GenerationStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def generate(self, prompt, *, on_event=None, timeout=None, **fields):
        """Runs one request; `fields` are GenerateRequest fields (width, height, seed, ...).
        `on_event(event)` sees every GenerateEvent of the stream."""
        request = pb.GenerateRequest(prompt=prompt, **fields)
        result = None
        for event in self.stub.Generate(request, timeout=timeout):
            if on_event is not None:
                on_event(event)
            if event.HasField("result"):
                result = event.result
        if result is None:
            raise RuntimeError("stream ended without a result")
        return result

    def generate_video(self, prompt, *, num_frames=0, fps=0, output_format="mp4", on_event=None,
                       timeout=None, **fields):
        """Runs one video request and returns its Video message (format, width, height,
        num_frames, fps, data): an MP4's bytes, with output_format="webp" an animated WebP's, or
        with output_format="raw" the frames' RGB bytes one after another. num_frames / fps 0: the model's defaults. `fields` are further
        GenerateRequest fields (guidance_scale, guidance_scale_2, seed, ...)."""
        formats = {"mp4": pb.OUTPUT_FORMAT_MP4, "webp": pb.OUTPUT_FORMAT_WEBP,
                   "raw": pb.OUTPUT_FORMAT_RAW_RGB8}
        if output_format not in formats:
            raise ValueError(f"output_format must be one of {sorted(formats)}")
        result = self.generate(prompt, num_frames=num_frames, fps=fps,
                               output_format=formats[output_format], on_event=on_event,
                               timeout=timeout, **fields)
        if not result.HasField("video"):
            raise RuntimeError("the model returned a picture, not a video")
        return result.video

    def stream(self, prompt, *, timeout=None, **fields):
        """The raw event stream (a grpc call object: iterate it, or .cancel() it)."""
        return self.stub.Generate(pb.GenerateRequest(prompt=prompt, **fields), timeout=timeout)

    def cancel(self, request_id, timeout=10):
        return self.stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=timeout)

    def list_models(self, timeout=10):
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout).models)


__all__ = ["Client", "pb", "pb_grpc", "grpc"]
