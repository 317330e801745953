"""Python client for dgrid's public gRPC API (dgrid.v1.Generation).

    from dgrid_client import Client
    with Client("127.0.0.1:50050") as client:
        result = client.generate("a red circle", width=64, height=64, seed=7)
        open("out.png", "wb").write(result.image.data)

See README.md beside this package for streaming with previews, cancelling, image-to-image, videos
and secured clusters (TLS, API keys). Requests and results are the protobuf messages of
protos/dgrid/v1/generation.proto (`pb`), typed by the generated .pyi stubs.
"""
import os
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _stubs

_stubs.ensure()

import grpc  # noqa: E402
from dgrid.v1 import generation_pb2 as pb  # noqa: E402
from dgrid.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402

MAX_MESSAGE_BYTES = 512 * 1024 * 1024

# bytes, or the path of a file to read them from
BytesOrPath = Union[bytes, str, "os.PathLike[str]"]
EventCallback = Callable[[pb.GenerateEvent], None]
PreviewCallback = Callable[[pb.Preview], None]

_OUTPUT_FORMATS = {"png": pb.OUTPUT_FORMAT_PNG, "webp": pb.OUTPUT_FORMAT_WEBP,
                   "raw": pb.OUTPUT_FORMAT_RAW_RGB8, "mp4": pb.OUTPUT_FORMAT_MP4}


# A step-caching setting: a pb.StepCache, a dict of its fields, or "method[:threshold]"
# ("fbcache", "teacache:0.4", "none").
StepCacheSetting = Union[pb.StepCache, Dict[str, Any], str]


def step_cache(setting: StepCacheSetting) -> pb.StepCache:
    """The pb.StepCache of `setting`. The server checks the values (INVALID_ARGUMENT naming
    cache.method / cache.threshold / ...); this only reads the string form."""
    if isinstance(setting, pb.StepCache):
        return setting
    if isinstance(setting, dict):
        return pb.StepCache(**setting)
    method, sep, threshold = setting.partition(":")
    if not sep:
        return pb.StepCache(method=method)
    try:
        return pb.StepCache(method=method, threshold=float(threshold))
    except ValueError:
        raise ValueError(f"cache: '{setting}' is not method[:threshold]") from None


def _read(value: Optional[BytesOrPath]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


class Stream:
    """One request's events as they come: iterate it, `cancel()` it, or wait for `result()`.

    Cancelling (or leaving a `with` block early) ends the call, which cancels the request on the
    cluster; `Client.cancel(stream.request_id)` does the same from anywhere."""

    def __init__(self, call: Any, request_id: str) -> None:
        self._call = call
        self.request_id = request_id
        self.result_message: Optional[pb.GenerateResult] = None

    def __iter__(self) -> Iterator[pb.GenerateEvent]:
        return self

    def __next__(self) -> pb.GenerateEvent:
        event: pb.GenerateEvent = next(self._call)
        if event.HasField("result"):
            self.result_message = event.result
        return event

    def cancel(self) -> None:
        self._call.cancel()

    def result(self, on_event: Optional[EventCallback] = None,
               on_preview: Optional[PreviewCallback] = None) -> pb.GenerateResult:
        """Reads the rest of the stream and returns its result (grpc.RpcError on failure)."""
        for event in self:
            if on_event is not None:
                on_event(event)
            if on_preview is not None and event.HasField("preview"):
                on_preview(event.preview)
        if self.result_message is None:
            raise RuntimeError(f"request {self.request_id}: the stream ended without a result")
        return self.result_message

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.result_message is None:
            self.cancel()


class Client:
    """A blocking client of one orchestrator. Errors raise grpc.RpcError (code() and details()).

    address: host:port of the orchestrator's gRPC port.
    api_key: sent as `authorization: Bearer <key>`; defaults to $DGRID_API_KEY.
    tls_ca / tls_cert / tls_key: PEM bytes or file paths; any of them (or tls=True, which uses
    the system's roots) makes the channel TLS. tls_server_name overrides the name the server's
    certificate is checked against."""

    def __init__(self, address: str = "127.0.0.1:50050", *, api_key: Optional[str] = None,
                 tls: bool = False, tls_ca: Optional[BytesOrPath] = None,
                 tls_cert: Optional[BytesOrPath] = None, tls_key: Optional[BytesOrPath] = None,
                 tls_server_name: Optional[str] = None, timeout: Optional[float] = None) -> None:
        options: List[Tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if tls or tls_ca is not None or tls_cert is not None:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key),
                certificate_chain=_read(tls_cert))
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        key = api_key if api_key is not None else os.environ.get("DGRID_API_KEY", "")
        self._metadata: Sequence[Tuple[str, str]] = (
            [("authorization", f"Bearer {key}")] if key else [])
        self._timeout = timeout
        self.stub = pb_grpc.GenerationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stream(self, prompt: str, *, previews: int = 0, timeout: Optional[float] = None,
               **fields: Any) -> Stream:
        """Starts a request and returns its event stream (Accepted, Queued, Encoded, one
        DenoiseStep per step, `previews` Preview images at evenly spaced steps, Decoded, then the
        result). `fields` are further GenerateRequest fields (width, height, num_inference_steps,
        guidance_scale, seed, negative_prompt, model, deadline_ms, ...); a request_id is made up
        when none is given. `cache` (opt-in step caching) may be a pb.StepCache, a dict of its
        fields or "method[:threshold]", e.g. cache="teacache:0.4"; the result's skipped_steps
        says how many steps it skipped."""
        request_id = fields.pop("request_id", "") or f"py-{uuid.uuid4().hex[:16]}"
        if previews:
            fields["preview_images"] = previews
        if fields.get("cache") is not None:
            fields["cache"] = step_cache(fields["cache"])
        request = pb.GenerateRequest(prompt=prompt, request_id=request_id, **fields)
        call = self.stub.Generate(request, timeout=timeout or self._timeout,
                                  metadata=self._metadata)
        return Stream(call, request_id)

    def generate(self, prompt: str, *, previews: int = 0,
                 on_event: Optional[EventCallback] = None,
                 on_preview: Optional[PreviewCallback] = None, timeout: Optional[float] = None,
                 **fields: Any) -> pb.GenerateResult:
        """Runs one request to its result. on_event sees every event, on_preview every preview
        (`previews` of them, 0-3)."""
        return self.stream(prompt, previews=previews, timeout=timeout, **fields).result(
            on_event=on_event, on_preview=on_preview)

    def edit(self, image: BytesOrPath, prompt: str, *, strength: float = 0.6,
             previews: int = 0, on_event: Optional[EventCallback] = None,
             on_preview: Optional[PreviewCallback] = None, timeout: Optional[float] = None,
             **fields: Any) -> pb.GenerateResult:
        """Image-to-image: starts from `image` (PNG or JPEG bytes, or a file path) noised to
        `strength` (0-1: 1 ignores the image). The output size is the model's default unless
        width / height say otherwise (as diffusers' FluxImg2ImgPipeline); the image is resized
        to it."""
        data = _read(image)
        return self.generate(prompt, image=data, strength=strength, previews=previews,
                             on_event=on_event, on_preview=on_preview, timeout=timeout, **fields)

    def generate_video(self, prompt: str, *, num_frames: int = 0, fps: int = 0,
                       output_format: str = "mp4", on_event: Optional[EventCallback] = None,
                       timeout: Optional[float] = None, **fields: Any) -> pb.Video:
        """Runs one video request and returns its Video message (format, width, height,
        num_frames, fps, data): an MP4's bytes, with output_format="webp" an animated WebP's, or
        with output_format="raw" the frames' RGB bytes one after another. num_frames / fps 0: the
        model's defaults."""
        if output_format not in ("mp4", "webp", "raw"):
            raise ValueError("output_format must be one of mp4, raw, webp")
        result = self.generate(prompt, num_frames=num_frames, fps=fps,
                               output_format=_OUTPUT_FORMATS[output_format], on_event=on_event,
                               timeout=timeout, **fields)
        if not result.HasField("video"):
            raise RuntimeError("the model returned a picture, not a video")
        return result.video

    def cancel(self, request_id: str, timeout: float = 10) -> None:
        """Cancels a request by id (NOT_FOUND once it has finished or was never seen)."""
        self.stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=timeout,
                         metadata=self._metadata)

    def list_models(self, timeout: float = 10) -> List[pb.ModelInfo]:
        response = self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout,
                                        metadata=self._metadata)
        return list(response.models)


__all__ = ["Client", "Stream", "step_cache", "pb", "pb_grpc", "grpc"]
