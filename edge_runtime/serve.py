"""The runtime as a small HTTP microservice (the "REST API" deployment mode). FastAPI is an optional extra.

    POST /predict   an image (raw JPEG/PNG body, or multipart/form-data with one file) or a JSON array
                    -> the prediction as JSON. Bad requests get a 4xx with a reason.
    GET  /healthz   liveness: the process answers.
    GET  /readyz    readiness: the model is loaded and passed a smoke test (503 until then, with the reason).
    GET  /metrics   Prometheus metrics of the predictions served (with device services, see create_app).
    GET  /health    model, source (requests), outbox and broker status as JSON (with device services).
"""


import email.parser
import email.policy
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_runtime.errors import EdgeRuntimeError, InputError, MissingDependencyError

if TYPE_CHECKING:
    from edge_runtime.monitoring.service import DeviceServices
    from edge_runtime.pipeline import FrameResult

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024 * 1024


class RequestError(Exception):
    """A bad request: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def decode_image(data: bytes) -> np.ndarray:
    if not data:
        raise RequestError(400, "empty request body")
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise RequestError(400, "the body is not a decodable image (JPEG, PNG, BMP, ...)")
    return frame


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The first file part of a multipart/form-data body (stdlib parser: no python-multipart needed)."""
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not msg.is_multipart():
        raise RequestError(400, "malformed multipart body")
    for part in msg.iter_parts():
        if part.get_filename() or part.get_param("name", header="content-disposition") in ("file", "image"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise RequestError(400, "multipart body has no file part (send the image as field 'file')")


def _json_array(body: bytes, image_input: bool) -> np.ndarray:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"invalid JSON: {exc}") from exc
    except RecursionError:
        raise RequestError(400, "invalid JSON: nested too deeply") from None
    if isinstance(doc, dict):
        doc = doc.get("array", doc.get("inputs"))
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range numbers become inf, refused below
            arr = np.asarray(doc, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise RequestError(400, "JSON must be a numeric array (or {\"array\": [...]}) of a regular shape") from exc
    if arr.ndim == 0 or arr.size == 0:
        raise RequestError(400, "JSON must be a non-empty numeric array")
    if not np.isfinite(arr).all():  # NaN, Infinity, null, or beyond float32's range
        raise RequestError(422, "JSON array values must be finite numbers (no NaN, Infinity or null)")
    if image_input:  # a frame as nested lists: whole numbers 0..255
        if np.any((arr < 0) | (arr > 255)) or np.any(arr != np.round(arr)):
            raise RequestError(422, "an image array must hold whole numbers 0..255")
        return arr.astype(np.uint8)
    return arr


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``: a huge upload is never held
    in memory whole (checked against Content-Length first, then while streaming, for chunked uploads)."""
    size_text = f"{limit / 1048576:g} MiB" if limit >= 1048576 else f"{limit} bytes"
    too_big = RequestError(413, f"body larger than {size_text}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def request_input(content_type: str, body: bytes, image_input: bool) -> np.ndarray:
    """Turn a request body into the model's input (a BGR frame or an array), or raise RequestError."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        return _json_array(body, image_input)
    if ctype == "multipart/form-data":
        data = _multipart_file(content_type, body)
    elif ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        data = body
    else:
        raise RequestError(415, f"unsupported content type {ctype!r}: send an image or application/json")
    if not image_input:
        raise RequestError(415, "this model takes arrays: send application/json")
    return decode_image(data)


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
            raise RequestError(503, f"not ready: {self.not_ready_reason}")
        received = time.monotonic() if received is None else received
        with self._lock:
            started = time.monotonic()
            try:
                pred = self.model.predict(x)
            except InputError as exc:
                self.rejected += 1
                raise RequestError(422, str(exc)) from exc
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
               max_body_bytes: int = MAX_BODY_BYTES):  # type: ignore[no-untyped-def]
    """The FastAPI application around a ModelService. With ``services`` (monitor, outbox, MQTT) it feeds every
    prediction to the monitor, adds /metrics and /health, and closes them at shutdown. Larger bodies get 413."""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError as exc:
        raise MissingDependencyError("FastAPI (for `serve`)", "serve") from exc

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        if load_in_background:
            threading.Thread(target=service.load, name="model-load", daemon=True).start()
        else:
            service.load()
        yield
        if services is not None:
            services.close()
        service.close()

    app = FastAPI(title="edge-runtime", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"ready": False, "reason": service.not_ready_reason}, status_code=503)
        m = service.model.manifest
        return JSONResponse({"ready": True, "model": m.name, "version": m.version})

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            if not service.ready:
                raise RequestError(503, f"not ready: {service.not_ready_reason}")
            received = time.monotonic()
            body = await read_body(request, max_body_bytes)
            x = request_input(request.headers.get("content-type", ""), body, service.model.input_spec.kind == "image")
            result = await run_in_threadpool(service.predict, x, received)
        except RequestError as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        try:
            return JSONResponse(result)
        except ValueError:  # JSON has no NaN/Infinity: finite inputs at the edge of float32 can overflow a model
            reason = "the model's output for this input is not finite (NaN or infinity)"
            return JSONResponse({"error": reason}, status_code=422)

    if services is not None:
        _add_monitoring_routes(app, service, services)
    return app


def _add_monitoring_routes(app: Any, service: ModelService, services: "DeviceServices") -> None:
    """/metrics (Prometheus text), /health (JSON, 503 while unhealthy) and POST /feedback (labels): the same
    Endpoints as `run`'s server."""
    from fastapi import Request
    from fastapi.responses import Response

    from edge_runtime.monitoring.http import MAX_FEEDBACK_BYTES, Endpoints

    service.observe = services.observe
    services.monitor.pipeline_stats = service.stats
    endpoints = Endpoints(services)

    @app.get("/metrics")
    def metrics() -> Response:
        code, ctype, body = endpoints.metrics()
        return Response(body, status_code=code, media_type=ctype)

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
