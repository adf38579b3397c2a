"""onnxruntime backend: the profile's execution providers in order, unavailable ones dropped with a warning.

A Jetson profile asks for TensorRT, then CUDA, then CPU; on a machine without them the session still opens on
what is there, and the log says which providers were dropped and which one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendOptions, TensorInfo
from edge_runtime.errors import BackendError, InferenceError, InputError

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_CPU = "CPUExecutionProvider"
# how onnxruntime words an error raised by a node while the graph runs (any status code), as opposed to feeds it
# refuses before running ("Got invalid dimensions for input", "Unexpected input data type")
_NODE_FAILED = "Non-zero status code returned while running"


def probe() -> str | None:
    """None when onnxruntime can be imported, else why not."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc}): pip install onnxruntime"
    return None


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Keep the wanted providers this machine has, in order; warn about each dropped one; CPU as last resort."""
    chosen = [p for p in wanted if p in available]
    dropped = [p for p in wanted if p not in available]
    if not chosen:
        chosen = [_CPU]
    if dropped:
        log.warning(
            "execution provider(s) %s not available on this machine; falling back to %s",
            ", ".join(dropped),
            ", ".join(chosen),
        )
    return chosen


def _session_options(ort: Any, options: BackendOptions) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    try:
        so.graph_optimization_level = levels[options.graph_optimization]
    except KeyError:
        raise BackendError(f"unknown graph optimisation level {options.graph_optimization!r}") from None
    so.log_severity_level = 3
    return so


def _info(node: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorInfo(node.name, shape, np.dtype(_ORT_DTYPES.get(node.type, np.float32)))


class OnnxRuntimeBackend:
    """One InferenceSession; input and output names fixed at load so a call only zips names with arrays."""

    name = "onnxruntime"

    def __init__(self, path: str, options: BackendOptions) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        self._input_errors: tuple[type[Exception], ...] = (ort_state.InvalidArgument, ValueError, TypeError)
        # every error type onnxruntime defines (Fail, RuntimeException, EPFail, ...), plus the RuntimeError its
        # Python layer raises: a failure while running is the model's, counted as InferenceError
        self._run_errors = (*_ort_error_types(ort_state), RuntimeError)
        providers = choose_providers(options.execution_providers, ort.get_available_providers())
        try:
            self._sess = ort.InferenceSession(path, _session_options(ort, options), providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types for every bad-file case
            raise BackendError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from exc
        active = self._sess.get_providers()
        if active[0] != providers[0]:
            log.warning("execution provider %s failed to start; running on %s", providers[0], active[0])
        self.providers = tuple(active)
        self.inputs = tuple(_info(i) for i in self._sess.get_inputs())
        self.outputs = tuple(_info(o) for o in self._sess.get_outputs())
        self._in_names = tuple(i.name for i in self.inputs)
        self._out_names = [o.name for o in self.outputs]

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self._in_names):
            raise InputError(f"model takes {len(self._in_names)} inputs, got {len(arrays)}")
        try:
            return self._sess.run(self._out_names, dict(zip(self._in_names, arrays, strict=True)))
        except self._input_errors as exc:
            if _NODE_FAILED not in str(exc):  # the feeds were refused before the graph ran
                raise InputError(f"input does not fit the model: {_first(exc)}") from exc
            raise InferenceError(f"onnxruntime failed during inference: {_first(exc)}") from exc
        except self._run_errors as exc:
            raise InferenceError(f"onnxruntime failed during inference: {_first(exc)}") from exc

    def close(self) -> None:
        self._sess = None


def _ort_error_types(module: Any) -> tuple[type[Exception], ...]:
    return tuple(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Exception))


def _first(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def open_model(path: str, options: BackendOptions) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, options)
