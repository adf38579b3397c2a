"""The runtime as a small HTTP microservice (the "REST API" deployment mode). FastAPI is an optional extra.

    POST /predict   an image (raw JPEG/PNG/BMP body, or multipart/form-data with one file) or a JSON array
                    -> the prediction as JSON. Bad requests get a 4xx with a one-line reason.
    GET  /healthz   liveness: the process answers (always open, even with a token).
    GET  /readyz    readiness: the model is loaded and passed a smoke test (503 until then, with the reason).
    GET  /metrics   Prometheus metrics: requests, rejections and errors of the service (and, with device
                    services, the monitor's metrics of the predictions served, see create_app).
    GET  /health    model, source (requests), outbox and broker status as JSON (with device services).

Hostile requests are refused before they cost memory or block the service (see serve_guard): the body is bounded
while it streams, an image's size is read from its header and checked against a pixel limit before it is decoded,
decoding and inference run on a bounded pool of worker threads off the event loop (excess requests get 503), and
with a token every path but /healthz needs ``Authorization: Bearer <token>``.
"""


import asyncio
import email.parser
import email.policy
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_runtime.errors import EdgeRuntimeError, InputError, MissingDependencyError, first_line
from edge_runtime.imageheader import ImageHeaderError, image_size
from edge_runtime.serve_guard import (
    MAX_BODY_BYTES,
    MAX_PIXELS,
    RequestError,
    ServeConfig,
    ServeCounters,
    TokenAuth,
    WorkGate,
)

if TYPE_CHECKING:
    from edge_runtime.monitoring.service import DeviceServices
    from edge_runtime.pipeline import FrameResult

log = logging.getLogger(__name__)
JSON_IMAGE_VALUES = 320 * 320 * 3  # a frame as JSON nested lists: at most 320x320 (about 10 MiB once parsed)
__all__ = ["MAX_BODY_BYTES", "ModelService", "RequestError", "ServeConfig", "create_app", "decode_image"]


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A BGR frame from JPEG, PNG or BMP bytes; the size its header declares is checked before decoding."""
    if not data:
        raise RequestError(400, "empty request body", kind="empty")
    try:
        size = image_size(data)
    except ImageHeaderError as exc:
        status, kind = (415, "image_format") if exc.unsupported else (400, "image_header")
        raise RequestError(status, f"the body is not a decodable image: {exc}", kind=kind) from None
    if size.pixels > max_pixels:
        raise RequestError(413, f"the {size.format} image is {size.width}x{size.height} "
                           f"({size.pixels / 1e6:.1f} megapixels), over the limit of {max_pixels / 1e6:.1f} "
                           "(--max-pixels)", kind="image_pixels")  # fmt: skip
    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise RequestError(400, f"the body is not a decodable image: {first_line(exc)}", kind="image_decode") from None
    if frame is None:
        raise RequestError(400, f"the body is not a decodable image: the {size.format} data is corrupt or truncated",
                           kind="image_decode")  # fmt: skip
    return frame


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The first file part of a multipart/form-data body (stdlib parser: no python-multipart needed)."""
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not msg.is_multipart():
        raise RequestError(400, "malformed multipart body", kind="multipart")
    for part in msg.iter_parts():
        if part.get_filename() or part.get_param("name", header="content-disposition") in ("file", "image"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise RequestError(400, "multipart body has no file part (send the image as field 'file')", kind="multipart")


def json_value_limit(spec: Any) -> int:
    """How many values a JSON body may hold for a model input: Python's parsed lists cost ~32 bytes per value, so a
    16 MiB body of numbers would cost 200+ MiB. A tensor input needs prod(shape) values; a frame sent as JSON is
    meant for small frames (larger ones go as JPEG/PNG)."""
    if spec.kind == "image":
        return JSON_IMAGE_VALUES
    return 4 * math.prod(max(d, 1) for d in spec.shape) + 64


def _json_array(body: bytes, image_input: bool, max_values: int = JSON_IMAGE_VALUES) -> np.ndarray:
    values = body.count(b",") + body.count(b":") + 1  # an upper bound of what json.loads would build, read in C
    if values > max_values:
        hint = " (send frames as JPEG or PNG)" if image_input else ""
        raise RequestError(413, f"JSON body holds up to {values} values, this model takes at most {max_values}{hint}",
                           kind="json_size")  # fmt: skip
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"invalid JSON: {exc}", kind="json") from exc
    except RecursionError:
        raise RequestError(400, "invalid JSON: nested too deeply", kind="json") from None
    if isinstance(doc, dict):
        doc = doc.get("array", doc.get("inputs"))
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range numbers become inf, refused below
            arr = np.asarray(doc, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise RequestError(400, "JSON must be a numeric array (or {\"array\": [...]}) of a regular shape",
                           kind="json") from exc
    if arr.ndim == 0 or arr.size == 0:
        raise RequestError(400, "JSON must be a non-empty numeric array", kind="json")
    if not np.isfinite(arr).all():  # NaN, Infinity, null, or beyond float32's range
        raise RequestError(422, "JSON array values must be finite numbers (no NaN, Infinity or null)", kind="json")
    if image_input:  # a frame as nested lists: whole numbers 0..255
        if np.any((arr < 0) | (arr > 255)) or np.any(arr != np.round(arr)):
            raise RequestError(422, "an image array must hold whole numbers 0..255", kind="json")
        return arr.astype(np.uint8)
    return arr


_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``: a huge upload is never held
    in memory whole (checked against Content-Length first, then while streaming, for chunked uploads)."""
    from starlette.requests import ClientDisconnect

    size_text = f"{limit / 1048576:g} MiB" if limit >= 1048576 else f"{limit} bytes"
    too_big = RequestError(413, f"body larger than {size_text}", kind="body_size")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _CONTENT_LENGTH.fullmatch(declared.strip()):
            raise RequestError(400, f"bad Content-Length {declared[:40]!r}", kind="bad_request")
        if int(declared) > limit:
            raise too_big
    body = bytearray()  # grown in place: a list of chunks joined at the end would hold the body twice
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise too_big
            body += chunk
    except ClientDisconnect:
        raise RequestError(400, "the client went away before sending its whole body", kind="disconnected") from None
    return body  # type: ignore[return-value] # bytes-like: every consumer takes a bytearray


async def _read_body_in_time(request: Any, config: ServeConfig) -> bytes:
    try:
        async with asyncio.timeout(config.body_timeout_s):
            return await read_body(request, config.max_body_bytes)
    except TimeoutError:
        raise RequestError(408, f"request body not received within {config.body_timeout_s:g} s",
                           kind="body_timeout") from None


def request_input(content_type: str, body: bytes, image_input: bool, max_pixels: int = MAX_PIXELS,
                  max_values: int = JSON_IMAGE_VALUES) -> np.ndarray:
    """Turn a request body into the model's input (a BGR frame or an array), or raise RequestError."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        return _json_array(body, image_input, max_values)
    if ctype == "multipart/form-data":
        data = _multipart_file(content_type, body)
    elif ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        data = body
    else:
        raise RequestError(415, f"unsupported content type {ctype[:60]!r}: send an image or application/json",
                           kind="content_type")
    if not image_input:
        raise RequestError(415, "this model takes arrays: send application/json", kind="content_type")
    return decode_image(data, max_pixels)


class ModelService:
    """Loads the model in the background, smoke-tests it, and serialises predictions (backends are not
    thread-safe)."""

    def __init__(self, loader: Callable[[], Any], observe: "Callable[[FrameResult], None] | None" = None) -> None:
        self._loader = loader
        self.model: Any = None
        self.not_ready_reason = "loading"
        self._lock = threading.Lock()
        self.observe = observe  # gets every prediction as a FrameResult (the monitor), under the lock
        self.requests = 0
        self.rejected = 0

    def load(self, raise_errors: bool = False) -> None:
        """Load and smoke-test the model (once); failures are kept as the not-ready reason, or raised."""
        if self.model is not None:
            return
        try:
            model = self._loader()
            self._smoke_test(model)
        except EdgeRuntimeError as exc:
            self.not_ready_reason = f"model failed to load: {exc}"
            if raise_errors:
                raise
            log.error("%s", self.not_ready_reason)
            return
        self.model = model
        self.not_ready_reason = ""

    @staticmethod
    def _smoke_test(model: Any) -> None:
        """One prediction on a blank input of the right shape: the backend really runs."""
        spec = model.input_spec
        if spec.kind == "image":
            h, w, _ = spec.height_width_channels
            model.predict(np.zeros((h, w, 3), np.uint8))
        else:
            model.predict(np.zeros([max(d, 1) for d in spec.shape], np.float32))

    @property
    def ready(self) -> bool:
        return self.model is not None

    def predict(self, x: np.ndarray, received: float | None = None) -> dict[str, Any]:
        """Predict (one at a time); ``received``: time.monotonic() when the request arrived, for latency."""
        if self.model is None:
            raise RequestError(503, f"not ready: {self.not_ready_reason}", kind="not_ready")
        received = time.monotonic() if received is None else received
        with self._lock:
            started = time.monotonic()
            try:
                pred = self.model.predict(x)
            except InputError as exc:
                self.rejected += 1
                raise RequestError(422, str(exc), kind="model_input") from exc
            self.requests += 1
            pid = self.requests
            if self.observe is not None:
                self._observe(x, pred, received, started)
        return {**pred.to_dict(), "id": pid}  # the id a feedback label names (POST /feedback)

    def _observe(self, x: np.ndarray, pred: Any, received: float, started: float) -> None:
        """Hand the prediction to the monitor like a pipeline frame; a monitor bug never fails the request."""
        from edge_runtime.pipeline import FrameResult

        now = time.monotonic()
        result = FrameResult(index=self.requests, timestamp=time.time() - (now - received), prediction=pred, frame=x,
                             capture_wait_ms=(started - received) * 1000.0, end_to_end_ms=(now - received) * 1000.0)
        try:
            self.observe(result)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - like a pipeline sink: guarded, logged
            log.exception("monitoring a prediction failed")

    def stats(self) -> dict[str, Any]:
        """Counters for health and metric records (the service's "source" is its requests)."""
        return {"requests": self.requests, "rejected": self.rejected, "ready": self.ready}

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


def create_app(service: ModelService, load_in_background: bool = True,
               services: "DeviceServices | None" = None,
               config: ServeConfig | None = None):  # type: ignore[no-untyped-def]
    """The FastAPI application around a ModelService, with the limits, worker pool and token of ``config``.
    With ``services`` (monitor, outbox, MQTT) it feeds every prediction to the monitor, adds the monitor's metrics
    and /health, and closes them at shutdown. ``app.state.counters`` holds the service's ServeCounters."""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise MissingDependencyError("FastAPI (for `serve`)", "serve") from exc
    config = config or ServeConfig()
    counters, gate = ServeCounters(), WorkGate(config.workers, config.queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        if load_in_background:
            threading.Thread(target=service.load, name="model-load", daemon=True).start()
        else:
            service.load()
        yield
        gate.close()
        if services is not None:
            services.close()
        service.close()

    app = FastAPI(title="edge-runtime", lifespan=lifespan)
    app.state.counters = counters
    if config.token is not None:
        app.add_middleware(TokenAuth, token=config.token, counters=counters)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"ready": False, "reason": service.not_ready_reason}, status_code=503)
        m = service.model.manifest
        return JSONResponse({"ready": True, "model": m.name, "version": m.version})

    _add_predict_route(app, service, config, counters, gate)
    endpoints = _monitor_endpoints(service, services)
    _add_metrics_route(app, counters, endpoints)
    if endpoints is not None:
        _add_monitor_routes(app, endpoints, config)
    return app


def _add_predict_route(app: Any, service: ModelService, config: ServeConfig, counters: ServeCounters,
                       gate: WorkGate) -> None:
    """POST /predict: admitted (or 503), body read in time and bounded, decoded and predicted on a worker thread;
    every response counted by status, every refusal by kind."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    def work(content_type: str, body: bytes, received: float) -> bytes:
        """On a worker thread: decode, predict, render (JSON has no NaN: a model can overflow on finite input)."""
        spec = service.model.input_spec
        x = request_input(content_type, body, spec.kind == "image", config.max_pixels, json_value_limit(spec))
        result = service.predict(x, received)
        try:
            return json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:
            raise RequestError(422, "the model's output for this input is not finite (NaN or infinity)",
                               kind="model_output") from None

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            with gate.admitted():  # before the body is read: waiting bodies in memory are bounded too
                if not service.ready:
                    raise RequestError(503, f"not ready: {service.not_ready_reason}", kind="not_ready")
                received = time.monotonic()
                body = await _read_body_in_time(request, config)
                content = await gate.run(work, request.headers.get("content-type", ""), body, received)
            response: Response = Response(content, media_type="application/json")
        except RequestError as exc:
            counters.reject(exc.kind)
            response = JSONResponse({"error": exc.reason}, status_code=exc.status)
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback here, one line for the client
            log.exception("POST /predict failed")
            counters.error("internal")
            response = JSONResponse({"error": "internal error (logged by the server)"}, status_code=500)
        counters.request(response.status_code)
        return response


def _monitor_endpoints(service: ModelService, services: "DeviceServices | None") -> Any:
    """The device monitor's Endpoints (the same as `run`'s server), fed every prediction; None without services."""
    if services is None:
        return None
    from edge_runtime.monitoring.http import Endpoints

    service.observe = services.observe
    services.monitor.pipeline_stats = service.stats
    return Endpoints(services)


def _add_metrics_route(app: Any, counters: ServeCounters, endpoints: Any) -> None:
    """/metrics (Prometheus text): the service's own counters, plus the device monitor's metrics with services."""
    from fastapi.responses import Response

    from edge_runtime.monitoring.http import metrics_response

    registry = endpoints.registry if endpoints is not None else _empty_registry()
    if registry is not None:
        registry.register(counters.collector())

    @app.get("/metrics")
    def metrics() -> Response:
        code, ctype, body = metrics_response(registry)
        return Response(body, status_code=code, media_type=ctype)


def _empty_registry() -> Any:
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    return CollectorRegistry()


def _add_monitor_routes(app: Any, endpoints: Any, config: ServeConfig) -> None:
    """/health (JSON, 503 while unhealthy) and POST /feedback (labels for predictions), as in `run`."""
    from fastapi import Request
    from fastapi.responses import Response

    from edge_runtime.monitoring.http import MAX_FEEDBACK_BYTES

    @app.get("/health")
    def health() -> Response:
        code, ctype, body = endpoints.health()
        return Response(body, status_code=code, media_type=ctype)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_FEEDBACK_BYTES)
        except RequestError as exc:
            return Response(json.dumps({"error": exc.reason}), status_code=exc.status, media_type="application/json")
        code, ctype, out = endpoints.feedback(body)
        return Response(out, status_code=code, media_type=ctype)
