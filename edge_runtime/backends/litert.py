"""TFLite backend: LiteRT (ai-edge-litert), else tflite-runtime, else tensorflow.lite, with XNNPACK and threads.

tensorflow.lite is used only when neither interpreter package is installed. tflite-runtime (last release 2.14)
was built against NumPy 1.x and breaks under NumPy 2; that is detected from the installed versions and reported
in one line instead of NumPy's multi-line import failure.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendOptions, TensorInfo
from edge_runtime.errors import BackendError, InferenceError, InputError

log = logging.getLogger(__name__)

_FIRST_NUMPY2_TFLITE = (2, 18)  # TensorFlow 2.18 is the first build against NumPy 2


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def numpy_abi_problem(tflite_runtime_version: str | None, numpy_version: str) -> str | None:
    """The one-line reason a tflite-runtime build cannot run under this NumPy, or None."""
    if tflite_runtime_version is None:
        return None
    if _version_tuple(numpy_version)[0] >= 2 and _version_tuple(tflite_runtime_version) < _FIRST_NUMPY2_TFLITE:
        return (
            f"tflite-runtime {tflite_runtime_version} was built for NumPy 1.x and cannot run under NumPy "
            f"{numpy_version}: install ai-edge-litert (pip install 'edge-runtime[tflite]') or use numpy<2"
        )
    return None


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def find_interpreter() -> tuple[Any, str]:
    """(Interpreter class, provider name) in the order ai-edge-litert, tflite-runtime, tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    problem = numpy_abi_problem(_installed("tflite-runtime"), np.__version__)
    if problem is None and _installed("tflite-runtime") is not None:
        try:
            from tflite_runtime.interpreter import Interpreter as TfliteRuntimeInterpreter

            return TfliteRuntimeInterpreter, "tflite-runtime"
        except (ImportError, AttributeError) as exc:  # NumPy ABI failures surface as either
            problem = f"tflite-runtime cannot be imported: {str(exc).splitlines()[0]}"
    if _installed("tensorflow") or _installed("tensorflow-cpu"):
        if problem:
            log.warning("%s; using tensorflow.lite instead", problem)
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    raise BackendError(problem or "no TFLite interpreter is installed: pip install 'edge-runtime[tflite]'")


def probe() -> str | None:
    """None when a TFLite interpreter can be used here, else why not."""
    try:
        find_interpreter()
    except BackendError as exc:
        return str(exc)
    return None


class LiteRTBackend:
    """One TFLite interpreter; tensors set and read by index so a call does no lookups."""

    name = "tflite"

    def __init__(self, path: str, options: BackendOptions) -> None:
        interpreter_cls, self.provider = find_interpreter()
        kwargs: dict[str, Any] = {"model_path": path, "num_threads": options.threads}
        if not options.xnnpack:
            resolver = sys.modules[interpreter_cls.__module__].OpResolverType
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._it = interpreter_cls(**kwargs)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"cannot load TFLite model {path}: {str(exc).splitlines()[0]}") from exc
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        self.inputs = tuple(_info(d) for d in ins)
        self.outputs = tuple(_info(d) for d in outs)
        self._in_idx = tuple(int(d["index"]) for d in ins)
        self._out_idx = tuple(int(d["index"]) for d in outs)
        self._shapes = [tuple(int(v) for v in d["shape"]) for d in ins]
        self._dynamic = any(-1 in i.shape for i in self.inputs)

    def _resize(self, arrays: Sequence[np.ndarray]) -> None:
        """Dynamic inputs: resize and re-allocate only when a shape actually changes."""
        changed = False
        for i, (idx, a) in enumerate(zip(self._in_idx, arrays, strict=True)):
            if self._shapes[i] != a.shape:
                self._it.resize_tensor_input(idx, list(a.shape))
                self._shapes[i] = a.shape
                changed = True
        if changed:
            self._it.allocate_tensors()

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        it = self._it
        if len(arrays) != len(self._in_idx):
            raise InputError(f"model takes {len(self._in_idx)} inputs, got {len(arrays)}")
        if self._dynamic:
            self._resize(arrays)
        try:
            for idx, a in zip(self._in_idx, arrays, strict=True):
                it.set_tensor(idx, a)
        except ValueError as exc:
            raise InputError(f"input does not fit the model: {str(exc).splitlines()[0]}") from exc
        try:
            it.invoke()
            return [it.get_tensor(i) for i in self._out_idx]
        except (RuntimeError, ValueError) as exc:  # what the interpreter raises when a kernel fails
            lines = str(exc).splitlines()
            raise InferenceError(f"TFLite failed during inference: {lines[0] if lines else type(exc).__name__}") \
                from exc

    def close(self) -> None:
        self._it = None


def _info(d: dict[str, Any]) -> TensorInfo:
    sig = d.get("shape_signature")
    shape = sig if sig is not None and len(sig) else d["shape"]
    return TensorInfo(str(d["name"]), tuple(int(v) for v in shape), np.dtype(d["dtype"]))


def open_model(path: str, options: BackendOptions) -> LiteRTBackend:
    return LiteRTBackend(path, options)
