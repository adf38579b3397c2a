"""Inference backends, registered in one explicit table.

Each entry names the module implementing it; a module exports ``probe() -> str | None`` (None when usable, else
the reason it is not) and ``open_model(path, options) -> Backend``. A missing optional dependency disables its
entry with that reason instead of breaking ``import edge_runtime``: nothing here imports a backend library until
a model is opened or a probe is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from edge_runtime.backends.base import Backend, BackendOptions, TensorInfo
from edge_runtime.errors import BackendError

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEntry",
    "BackendOptions",
    "TensorInfo",
    "backend_for_format",
    "backend_status",
    "open_backend",
]


@dataclass(frozen=True)
class BackendEntry:
    """One row of the registry."""

    name: str
    module: str
    formats: tuple[str, ...]
    install_hint: str


BACKENDS: dict[str, BackendEntry] = {
    "tflite": BackendEntry("tflite", "edge_runtime.backends.litert", ("tflite",), "pip install 'edge-runtime[tflite]'"),
    "onnxruntime": BackendEntry(
        "onnxruntime", "edge_runtime.backends.onnxruntime", ("onnx",), "pip install onnxruntime"
    ),
}


def _entry(name: str) -> BackendEntry:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None


def _module(name: str) -> ModuleType:
    return importlib.import_module(_entry(name).module)


@cache
def _probe(name: str) -> str | None:
    return _module(name).probe()


def backend_status() -> dict[str, str | None]:
    """Backend name -> None when it can run here, else the reason it cannot (one line)."""
    return {name: _probe(name) for name in BACKENDS}


def backend_for_format(fmt: str) -> str:
    """The backend that runs a model file format ('tflite' or 'onnx')."""
    for entry in BACKENDS.values():
        if fmt in entry.formats:
            return entry.name
    raise BackendError(f"no backend runs {fmt!r} models")


def open_backend(name: str, path: str, options: BackendOptions, fmt: str | None = None) -> Backend:
    """Open ``path`` with backend ``name``; a disabled backend or a format it cannot run is a BackendError."""
    entry = _entry(name)
    if fmt is not None and fmt not in entry.formats:
        raise BackendError(f"backend {name!r} cannot run {fmt!r} models (it runs: {', '.join(entry.formats)})")
    reason = _probe(name)
    if reason is not None:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    backend: Backend = _module(name).open_model(path, options)
    return backend
