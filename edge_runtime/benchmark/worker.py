"""One benchmark variant in its own process (so its peak RSS is its own), driven over stdin/stdout JSON lines.

Requests: {"cmd": "load", "path", "format", "backend", "threads", "seed", "package"}, {"cmd": "warmup", "n"},
{"cmd": "run", "n"} or {"cmd": "run", "seconds"}, {"cmd": "validate", "data", "out"}, {"cmd": "finish"}.
Every reply is one JSON object with "ok"; a failed request gives {"ok": false, "reason": ...}.
Library chatter on stdout is redirected to stderr so it cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: Any
    scale: float = 0.0
    zero_point: int = 0


@dataclass
class Runner:
    """A loaded model: its inputs and outputs, and a call that runs one inference."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    precision: str | None = None


def _static(shape: Any) -> tuple[int, ...]:
    """Concrete shape: dynamic dimensions (None, names, -1) become 1."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape)


def open_onnxruntime(path: str, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    ins = [TensorInfo(i.name, _static(i.shape), _ORT_DTYPES.get(i.type, np.float32)) for i in sess.get_inputs()]
    outs = [TensorInfo(o.name, _static(o.shape or ()), _ORT_DTYPES.get(o.type, np.float32)) for o in sess.get_outputs()]
    names = [i.name for i in ins]

    def run(feeds: list[np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, dict(zip(names, feeds, strict=True)))

    return Runner(ins, outs, run)


def _tflite_info(d: dict[str, Any]) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(d["name"], _static(d["shape"]), d["dtype"], float(scale), int(zp))


def open_tflite(path: str, threads: int) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    in_d, out_d = it.get_input_details(), it.get_output_details()
    in_idx, out_idx = [d["index"] for d in in_d], [d["index"] for d in out_d]
    int8 = any(np.dtype(t["dtype"]) in (np.int8, np.uint8) for t in it.get_tensor_details())

    def run(feeds: list[np.ndarray]) -> list[np.ndarray]:
        for i, x in zip(in_idx, feeds, strict=True):
            it.set_tensor(i, x)
        it.invoke()
        return [it.get_tensor(i) for i in out_idx]

    return Runner([_tflite_info(d) for d in in_d], [_tflite_info(d) for d in out_d], run, "int8" if int8 else None)


def open_runtime(package: str, backend: str, threads: int) -> Runner:
    """The edge_runtime API on a package: what a device runs, for the overhead-over-raw-backend comparison."""
    from edge_runtime.api import load  # type: ignore[import-not-found]

    model = load(package, backend=backend, threads=threads, allow_unsigned=True)  # a benchmark, not a deployment
    man = model.manifest

    def info(t: Any) -> TensorInfo:
        q = t.quantization
        return TensorInfo(t.name, _static(t.shape), np.dtype(t.dtype), q.scale[0] if q else 0.0,
                          q.zero_point[0] if q else 0)

    return Runner([info(t) for t in man.inputs], [info(t) for t in man.outputs.tensors],
                  lambda feeds: list(model.predict_tensors(feeds)))


def random_inputs(inputs: list[TensorInfo], seed: int) -> list[np.ndarray]:
    """Fixed-seed inputs of the right shape and type (values in the range a normalised image would have)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in inputs:
        dt = np.dtype(t.dtype)
        if dt.kind == "f":
            out.append(rng.uniform(-1.0, 1.0, t.shape).astype(dt))
        elif dt == np.bool_:
            out.append(rng.integers(0, 2, t.shape).astype(dt))
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            lo, hi = (int(info.min), int(info.max) + 1) if dt.itemsize == 1 else (0, 10)
            out.append(rng.integers(lo, hi, t.shape).astype(dt))
        else:
            raise ValueError(f"input {t.name}: unsupported dtype {dt}")
    return out


def _prepare(sample: np.ndarray, t: TensorInfo) -> np.ndarray:
    """One float validation sample -> this input (layout fixed NHWC<->NCHW, quantized for int inputs)."""
    x = sample[None] if sample.ndim == len(t.shape) - 1 else sample
    if x.shape != t.shape and x.ndim == 4 and x.transpose(0, 3, 1, 2).shape == t.shape:
        x = x.transpose(0, 3, 1, 2)
    elif x.shape != t.shape and x.ndim == 4 and x.transpose(0, 2, 3, 1).shape == t.shape:
        x = x.transpose(0, 2, 3, 1)
    if x.size != int(np.prod(t.shape)):
        raise ValueError(f"a validation sample of shape {sample.shape} does not fit input {t.name} {t.shape}")
    x = x.reshape(t.shape)
    dt = np.dtype(t.dtype)
    if dt.kind in "iu" and t.scale > 0:
        info = np.iinfo(dt)
        return np.clip(np.round(x / t.scale) + t.zero_point, info.min, info.max).astype(dt)
    return x.astype(dt)


def _dequant(y: np.ndarray, t: TensorInfo) -> np.ndarray:
    if y.dtype.kind in "iu" and t.scale > 0:
        return (y.astype(np.float32) - t.zero_point) * t.scale
    return y.astype(np.float32)


class Session:
    """Worker state between requests."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.feeds: list[np.ndarray] = []

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        backend, threads = req["backend"], int(req["threads"])
        if backend.startswith("runtime:"):
            self.runner = open_runtime(req["package"], backend.split(":", 1)[1], threads)
        elif backend == "onnxruntime":
            self.runner = open_onnxruntime(req["path"], threads)
        elif backend == "tflite":
            self.runner = open_tflite(req["path"], threads)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        load_ms = (time.perf_counter() - t0) * 1e3
        self.feeds = random_inputs(self.runner.inputs, int(req["seed"]))
        return {"ok": True, "load_ms": load_ms, "precision": self.runner.precision}

    def timed(self, n: int | None, seconds: float | None) -> list[float]:
        assert self.runner is not None
        run, feeds, times = self.runner.run, self.feeds, []
        end = time.perf_counter() + (seconds or 0.0)
        while True:
            t0 = time.perf_counter_ns()
            run(feeds)
            times.append((time.perf_counter_ns() - t0) / 1e6)
            if (n is not None and len(times) >= n) or (n is None and time.perf_counter() >= end):
                return times

    def validate(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.runner is not None
        if len(self.runner.inputs) != 1:
            return {"ok": False, "reason": "validation needs a single-input model"}
        x = np.load(req["data"])
        t_in, t_out = self.runner.inputs[0], self.runner.outputs[0]
        outs = [_dequant(self.runner.run([_prepare(s, t_in)])[0], t_out)[0] for s in x]
        np.save(req["out"], np.stack(outs))
        return {"ok": True, "samples": len(outs)}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "load":
            return self.load(req)
        if cmd == "warmup":
            times = self.timed(max(1, int(req["n"])), None)
            return {"ok": True, "first_ms": times[0]}
        if cmd == "run":
            n = req.get("n")
            return {"ok": True, "times_ms": self.timed(int(n) if n else None, req.get("seconds"))}
        if cmd == "validate":
            return self.validate(req)
        if cmd == "finish":
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return {"ok": True, "peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024}
        return {"ok": False, "reason": f"unknown request {cmd!r}"}


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native libraries that print to stdout now print to stderr
    session = Session()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = session.handle(req)
        except Exception as exc:  # noqa: BLE001 - any failure of the measured library is a reported skip
            reply = {"ok": False, "reason": f"{type(exc).__name__}: {exc}".strip()[:500]}
        proto.write(json.dumps(reply) + "\n")
        if req.get("cmd") == "finish":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
