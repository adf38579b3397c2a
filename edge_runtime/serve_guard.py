"""What stands between the network and the model in `serve`: limits, admission with bounded concurrency,
bearer-token authentication, and the request, rejection and error counters served on /metrics.

Every refusal is a :class:`RequestError` with an HTTP status, a one-line reason for the client and a short
``kind`` that labels the ``edge_serve_rejected_total`` counter.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edge_runtime.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 4096 * 2160  # a DCI 4K frame (UHD 3840x2160 fits too)
MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/healthz"})  # liveness stays open for supervisors; everything else needs the token


class RequestError(Exception):
    """A refused request: HTTP status, a one-line reason, and the kind that labels the rejection counter."""

    def __init__(self, status: int, reason: str, kind: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.kind = kind or {400: "bad_request", 413: "too_large", 415: "unsupported", 422: "invalid_input",
                             503: "unavailable"}.get(status, f"http_{status}")  # fmt: skip


class ServeConfig(BaseModel):
    """Limits and access control of the HTTP service (``edge-runtime serve`` flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1, description="Larger request bodies get 413.")
    max_pixels: int = Field(default=MAX_PIXELS, ge=1,
                            description="Images whose header declares more pixels get 413, before decoding.")
    workers: int = Field(default=2, ge=1, description="Requests decoded and predicted at once (worker threads).")
    queue: int = Field(default=8, ge=0, description="Requests waiting for a worker; beyond that 503 at once.")
    body_timeout_s: float = Field(default=30.0, gt=0, description="A body not received by then gets 408 (a slow "
                                  "client cannot hold an admission slot for long).")  # fmt: skip
    token: SecretStr | None = Field(default=None, description="Bearer token required on every path but /healthz.")


def load_token(path: str | Path) -> SecretStr:
    """The bearer token in ``path`` (one line); ConfigError when missing, empty, short or containing spaces."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {p}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
    if len(text) < MIN_TOKEN_CHARS or any(c.isspace() for c in text):
        raise ConfigError(f"--token-file {p}: the token must be one word of at least {MIN_TOKEN_CHARS} characters "
                          "(make one with: openssl rand -hex 32)")  # fmt: skip
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--token-file %s is readable by other users (chmod 600 it)", p)
    return SecretStr(text)


class ServeCounters:
    """Requests by status, rejections by kind, internal errors: updated from the event loop and worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def request(self, status: int) -> None:
        with self._lock:
            self.requests[str(status)] += 1

    def reject(self, kind: str) -> None:
        with self._lock:
            self.rejected[kind] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"requests": dict(self.requests), "rejected": dict(self.rejected), "errors": dict(self.errors)}

    def collector(self) -> Any:
        """A prometheus-client collector: edge_serve_requests_total{status}, edge_serve_rejected_total{reason},
        edge_serve_errors_total{reason}."""
        from prometheus_client.core import CounterMetricFamily

        counters = self

        class ServeCollector:
            def collect(self) -> Iterator[Any]:
                snap = counters.snapshot()
                for name, label, helptext in (("requests", "status", "HTTP /predict requests by response status"),
                                              ("rejected", "reason", "Requests refused, by reason"),
                                              ("errors", "reason", "Requests that failed inside the service")):
                    family = CounterMetricFamily(f"edge_serve_{name}", helptext, labels=[label])
                    for value, n in sorted(snap[name].items()):
                        family.add_metric([value], n)
                    yield family

        return ServeCollector()


class WorkGate:
    """Bounded concurrency: at most ``workers`` requests run in a thread pool of that size and ``queue`` more wait;
    any further request is refused with 503 at once, before its body is read (so bodies in memory are bounded too).
    Admission is counted on the event loop only, so it needs no lock."""

    def __init__(self, workers: int, queue: int) -> None:
        self.limit = workers + queue
        self.active = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serve-worker")

    @contextmanager
    def admitted(self) -> Iterator[None]:
        if self.active >= self.limit:
            raise RequestError(503, f"busy: {self.active} requests in progress, retry later", kind="busy")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread: the event loop keeps answering /healthz while images decode."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class TokenAuth:
    """ASGI middleware: every HTTP path except OPEN_PATHS needs ``Authorization: Bearer <token>``. The comparison
    is constant-time (of SHA-256 digests, so not even the token's length leaks)."""

    def __init__(self, app: Any, token: SecretStr, counters: ServeCounters) -> None:
        self.app = app
        self._digest = _digest(token.get_secret_value().encode())
        self._counters = counters

    def authorized(self, header: bytes | None) -> bool:
        scheme, _, given = (header or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(given.strip()), self._digest)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        if self.authorized(header):
            await self.app(scope, receive, send)
            return
        self._counters.reject("unauthorized")
        if scope["path"] == "/predict":
            self._counters.request(401)
        body = json.dumps({"error": "missing or wrong bearer token (Authorization: Bearer ...)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="edge-runtime"')]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

