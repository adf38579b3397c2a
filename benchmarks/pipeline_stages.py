"""Where a frame's CPU goes: `edge-runtime run` stage by stage against the hand-written loop, per thread.

    .venv/bin/python benchmarks/pipeline_stages.py run  PKG CLIP FRAMES   # the real `run` command, instrumented
    .venv/bin/python benchmarks/pipeline_stages.py hand ONNX CLIP FRAMES  # OpenCV decode -> resize -> ort -> argmax

Each prints one JSON line. CPU is thread CPU time (``time.thread_time``), summed per stage over the frames after the
first (start-up left out), in microseconds per frame; ``threads`` is each thread's whole CPU time per frame
(``/proc/self/task/*/stat`` user + system ticks, read when the run ends), so what the wrapped stages do not cover
(waking, waiting on the GIL, the queues) shows as the difference. The run path is `edge_runtime.cli.main`, the
command as a user starts it, with a thin timing wrapper around the functions named in STAGES (a wrapper costs about
a microsecond a call, counted in the figures). Called by benchmarks/multisource_figures.py in a fresh process.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_TOTALS: dict[str, float] = defaultdict(float)
_CALLS: dict[str, int] = defaultdict(int)
_DEPTH = threading.local()


def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose thread CPU time adds to ``stage`` (nested timed calls count only in the innermost stage)."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        stack = getattr(_DEPTH, "stack", None)
        if stack is None:
            stack = _DEPTH.stack = []
        t0 = time.thread_time()
        stack.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            spent = time.thread_time() - t0
            inner = stack.pop()
            _TOTALS[stage] += spent - inner
            _CALLS[stage] += 1
            if stack:
                stack[-1] += spent

    return wrapper


def patch(owner: Any, name: str, stage: str) -> None:
    setattr(owner, name, timed(stage, getattr(owner, name)))


# (module, attribute path, stage): the pipeline's steps, in the order a frame meets them
STAGES = [
    ("edge_runtime.sources.camera", "VideoSource._read", "decode (reader thread)"),
    ("edge_runtime.sources.base", "SampleQueue.put", "queue put + wake (reader thread)"),
    ("edge_runtime.api", "Model.prepare", "preprocess (reader thread)"),
    ("edge_runtime.multisource", "LaneScheduler.take", "scheduler take (inference thread)"),
    ("edge_runtime.backends.onnxruntime", "OnnxRuntimeBackend.run", "inference (inference thread)"),
    ("edge_runtime.api", "Model.predict_prepared", "postprocess + Prediction (inference thread)"),
    ("edge_runtime.pipeline", "Pipeline._process", "result + counters + latency (inference thread)"),
    ("edge_runtime.sinks", "result_record", "result to dict (sink)"),
    ("json", "dumps", "JSON encoding (sink)"),
    ("edge_runtime.sinks", "JsonLinesSink.__call__", "write + flush (sink)"),
]


def _install() -> None:
    import importlib

    for module, path, stage in STAGES:
        mod = importlib.import_module(module)
        owner_name, _, attr = path.rpartition(".")
        owner = getattr(mod, owner_name) if owner_name else mod
        patch(owner, attr, stage)
    import edge_runtime.sinks as sinks

    sinks.json.dumps = json.dumps  # the sink module's own reference to the patched function


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def _keep_thread_times() -> dict[str, float]:
    """Threads that end before the run does (the readers, the preparer) record their CPU time on the way out."""
    ended: dict[str, float] = defaultdict(float)
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        try:
            original(self)
        finally:
            ended[self.name.split("-")[0]] += time.thread_time()

    threading.Thread.run = run  # type: ignore[method-assign]
    return ended


def profile_run(pkg: str, clip: str, frames: int, sources: int = 1) -> dict[str, Any]:
    from edge_runtime.cli import main

    _install()
    ended = _keep_thread_times()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"stages-{os.getpid()}.jsonl"
    argv = ["run", "--package", pkg, "--threads", "1", "--out", str(out), "--no-summary", "--allow-unsigned",
            "--max-frames", str(frames)]
    for i in range(sources):
        argv += ["--source", f"s{i}={clip}"]
    import edge_runtime.pipeline as pipeline

    started: dict[str, float] = {}
    original = pipeline.Pipeline.run

    def run(self: Any) -> Any:  # the inference thread's CPU from here on: model load and start-up left out
        started["main"], started["process"] = time.thread_time(), time.process_time()
        return original(self)

    pipeline.Pipeline.run = run  # type: ignore[method-assign]
    code = main(argv)
    cpu = time.process_time() - started["process"]
    n = sum(1 for _ in out.open())
    out.unlink()
    main_thread = time.thread_time() - started["main"]
    return {"what": "run", "code": code, "frames": n, "process_cpu_us": cpu / n * 1e6,
            "stages_us": {k: v / n * 1e6 for k, v in _TOTALS.items()}, "calls": dict(_CALLS),
            "threads_us": {**{k: v / n * 1e6 for k, v in ended.items()}, "main (inference)": main_thread / n * 1e6},
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def profile_hand(onnx: str, clip: str, frames: int) -> dict[str, Any]:
    import cv2
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    s = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    name, nhwc = inp.name, inp.shape[-1] == 3
    cap = cv2.VideoCapture(clip)
    t: dict[str, float] = defaultdict(float)
    n = 0
    cpu0 = time.process_time()
    while n < frames:
        a = time.thread_time()
        ok, f = cap.read()
        b = time.thread_time()
        if not ok:
            break
        x = cv2.cvtColor(cv2.resize(f, (224, 224), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = x.astype(np.float32) / 127.5 - 1.0 if "float" in inp.type else (x.astype(np.int16) - 128).astype(np.int8)
        x = x[None] if nhwc else np.transpose(x, (2, 0, 1))[None]
        c = time.thread_time()
        y = s.run(None, {name: x})[0]
        d = time.thread_time()
        int(np.argmax(y))
        e = time.thread_time()
        for k, v in (("decode", b - a), ("preprocess", c - b), ("inference", d - c), ("argmax", e - d)):
            t[k] += v
        n += 1
    cpu = time.process_time() - cpu0
    return {"what": "hand", "frames": n, "process_cpu_us": cpu / n * 1e6,
            "stages_us": {k: v / n * 1e6 for k, v in t.items()},
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    what, model, clip, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sources = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    doc = profile_run(model, clip, frames, sources) if what == "run" else profile_hand(model, clip, frames)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
