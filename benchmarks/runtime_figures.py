"""Issue-3 figures: what the runtime and its pipeline cost on top of the backend, on MobileNetV2-224 int8.

    .venv/bin/python benchmarks/runtime_figures.py [--threads 2] [--rounds 7] [--runs 30] [--cache DIR] [--json OUT]

Packages: MobileNetV2-224 (Keras architecture, seeded random weights) full-int8 TFLite and int8 QDQ ONNX, built
once by benchmarks/suite_models.py (in a subprocess: it imports TensorFlow) and cached. Figures, each printed with
its spread (min-max of per-round medians, or p10-p90) and the machine; nothing is asserted:

1. runtime overhead at p50: Model.predict_prepared vs the raw backend call (LiteRT set_tensor/invoke/get_tensor,
   onnxruntime InferenceSession.run) on the same input, same threads, interleaved rounds   (target <= 5%)
2. preprocessing a 640x480 BGR frame into the 224x224 int8 input vs inference time          (target < 10%)
3. throughput with a source faster than the model (decoded frames in memory, and a real MJPG file) vs the
   model's own back-to-back rate                                                          (target >= 95%)
4. end-to-end latency p95 with a source slower than the model (video paced at half the model's rate) vs
   inference p50 + 5 ms                                                                     (target: below it)
5. cold start to first result in a fresh process (python start, import, verify, load, one predict)  (< 1.5 s)
6. `import edge_runtime.api` (what a device program imports; `edge_runtime` shown too) in a fresh process (< 0.3 s)
Every target line ends in "ok" or "MISS", decided from the figures measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime.api import load  # noqa: E402
from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.pipeline import Pipeline  # noqa: E402
from edge_runtime.preprocess import ImagePreprocessor  # noqa: E402
from edge_runtime.sources import IterableSource, SourceOptions, open_source  # noqa: E402

FORMATS = {"tflite": "mobilenet_v2_int8_tflite", "onnxruntime": "mobilenet_v2_int8_onnx"}


def packages(cache: Path) -> dict[str, Path]:
    pk = cache / "packages"
    if not all((pk / n / "manifest.json").is_file() for n in FORMATS.values()):
        print(f"building MobileNetV2 int8 packages into {cache} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_models.py"), str(cache)], check=True)
    return {backend: pk / name for backend, name in FORMATS.items()}


def raw_runner(model_path: Path, backend: str, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The backend called directly, the way an application would without this runtime."""
    if backend == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(model_path), num_threads=threads)
        it.allocate_tensors()
        i_idx = it.get_input_details()[0]["index"]
        o_idx = [d["index"] for d in it.get_output_details()]

        def run_tflite(x: np.ndarray) -> list[np.ndarray]:
            it.set_tensor(i_idx, x)
            it.invoke()
            return [it.get_tensor(i) for i in o_idx]

        return run_tflite
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def timed(fn: Callable[[], object], runs: int) -> np.ndarray:
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def frame_640() -> np.ndarray:
    from skimage import data

    return cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (640, 480))


def overhead(pkg: Path, backend: str, threads: int, rounds: int, runs: int) -> dict[str, float]:
    """Figures 1 and 2 for one backend."""
    model = load(pkg, backend=backend, threads=threads)
    raw = raw_runner(pkg / model.manifest.model_file, backend, threads)
    frame = frame_640()
    prepared = model.prepare(frame)
    x = prepared.tensors[0]
    pre = ImagePreprocessor(model.input_spec, "BGR")
    for _ in range(10):  # warm-up
        raw(x)
        model.predict_prepared(prepared)
    med_raw, med_rt, med_pre = [], [], []
    for _ in range(rounds):  # interleaved call by call: background load hits both alike
        raw_t, rt_t = np.empty(runs), np.empty(runs)
        for i in range(runs):
            first, second = (raw_t, rt_t) if i % 2 else (rt_t, raw_t)
            calls = (lambda: raw(x), lambda: model.predict_prepared(prepared))
            for arr, fn in zip((first, second), calls[:: 1 if first is raw_t else -1], strict=True):
                t0 = time.perf_counter()
                fn()
                arr[i] = (time.perf_counter() - t0) * 1e3
        med_raw.append(np.median(raw_t))
        med_rt.append(np.median(rt_t))
        med_pre.append(np.median(timed(lambda: pre(frame), runs)))
    model.close()
    r, m, p = np.array(med_raw), np.array(med_rt), np.array(med_pre)
    ratios = (m - r) / r * 100
    return {
        "raw_p50_ms": float(np.median(r)), "raw_spread": (float(r.min()), float(r.max())),
        "runtime_p50_ms": float(np.median(m)), "runtime_spread": (float(m.min()), float(m.max())),
        "overhead_pct": float(np.median(ratios)), "overhead_spread": (float(ratios.min()), float(ratios.max())),
        "preprocess_p50_ms": float(np.median(p)), "preprocess_spread": (float(p.min()), float(p.max())),
        "preprocess_pct_of_inference": float(np.median(p) / np.median(r) * 100),
    }  # fmt: skip


def throughput(pkg: Path, backend: str, threads: int, video: Path, frames: int) -> dict[str, float]:
    """Figures 3 and 4 for one backend."""
    model = load(pkg, backend=backend, threads=threads)
    frame = frame_640()
    prepared = model.prepare(frame)
    for _ in range(10):
        model.predict_prepared(prepared)
    t0 = time.perf_counter()
    for _ in range(frames):
        model.predict_prepared(prepared)
    model_rate = frames / (time.perf_counter() - t0)

    def pipeline_rate(source) -> float:  # type: ignore[no-untyped-def]
        stamps: list[float] = []
        Pipeline(model, source, [lambda r: stamps.append(time.perf_counter())]).run()
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    mem_rate = pipeline_rate(IterableSource([frame] * frames))
    file_rate = pipeline_rate(open_source(str(video)))
    slow_fps = model_rate / 2
    paced = Pipeline(model, open_source(str(video), SourceOptions(fps_limit=slow_fps)))
    paced.run()
    lat = paced.latency.summary()
    model.close()
    return {
        "model_rate_fps": model_rate, "pipeline_mem_fps": mem_rate, "pipeline_file_fps": file_rate,
        "mem_pct": mem_rate / model_rate * 100, "file_pct": file_rate / model_rate * 100,
        "paced_fps": slow_fps, "e2e_p50_ms": lat["end_to_end"]["p50"], "e2e_p95_ms": lat["end_to_end"]["p95"],
        "inference_p50_ms": lat["inference"]["p50"],
    }  # fmt: skip


COLD = """
import sys, time
from edge_runtime.api import load
import numpy as np
m = load(sys.argv[1], threads=int(sys.argv[2]))
p = m.predict(np.full((480, 640, 3), 128, np.uint8))
print(time.time())
"""
IMPORT = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def subprocess_times(args: list[str], repeats: int, from_launch: bool) -> np.ndarray:
    out = []
    for _ in range(repeats):
        t0 = time.time()
        res = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, cwd=ROOT)
        value = float(res.stdout.strip().splitlines()[-1])
        out.append((value - t0) if from_launch else value)
    return np.array(out) * 1e3


def spread(a: np.ndarray) -> str:
    return f"{np.median(a):8.1f} ms  (min {a.min():.1f}, max {a.max():.1f}, n={a.size})"


def mark(ok: bool) -> str:
    """Every target line ends in a verdict measured in this run: a miss reads MISS."""
    return "ok" if ok else "MISS"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--frames", type=int, default=150, help="frames for the throughput figures")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge-runtime" / "bench")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    a = ap.parse_args()
    pkgs = packages(a.cache)
    machine = machine_summary()
    print(f"machine: {machine}\nthreads: {a.threads}, rounds: {a.rounds} x {a.runs} runs\n")
    results: dict[str, object] = {"machine": machine, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.avi"
        w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
        base = frame_640()
        for i in range(a.frames):
            w.write(np.roll(base, i * 4, axis=1))
        w.release()
        for backend, pkg in pkgs.items():
            o = overhead(pkg, backend, a.threads, a.rounds, a.runs)
            t = throughput(pkg, backend, a.threads, video, a.frames)
            results[backend] = {**o, **t}
            print(f"[{backend}] {pkg.name}")
            print(f"  1. raw backend p50      {o['raw_p50_ms']:7.3f} ms  (round medians {o['raw_spread'][0]:.3f}"
                  f"-{o['raw_spread'][1]:.3f})")
            print(f"     runtime p50          {o['runtime_p50_ms']:7.3f} ms  (round medians "
                  f"{o['runtime_spread'][0]:.3f}-{o['runtime_spread'][1]:.3f})")
            print(f"     overhead             {o['overhead_pct']:+7.2f} %   (rounds {o['overhead_spread'][0]:+.2f}"
                  f" to {o['overhead_spread'][1]:+.2f}; target <= 5 %: {mark(o['overhead_pct'] <= 5)})")
            print(f"  2. preprocess 640x480->224x224 int8 {o['preprocess_p50_ms']:.3f} ms = "
                  f"{o['preprocess_pct_of_inference']:.1f} % of inference (target < 10 %: "
                  f"{mark(o['preprocess_pct_of_inference'] < 10)})")
            print(f"  3. model alone {t['model_rate_fps']:.1f}/s; pipeline, frames in memory "
                  f"{t['pipeline_mem_fps']:.1f}/s ({t['mem_pct']:.1f} %), MJPG file {t['pipeline_file_fps']:.1f}/s "
                  f"({t['file_pct']:.1f} %) (target >= 95 %: memory {mark(t['mem_pct'] >= 95)}, "
                  f"file {mark(t['file_pct'] >= 95)})")
            print(f"  4. source at {t['paced_fps']:.0f} fps: end-to-end p50 {t['e2e_p50_ms']:.2f} ms, p95 "
                  f"{t['e2e_p95_ms']:.2f} ms vs inference p50 + 5 = {t['inference_p50_ms'] + 5:.2f} ms: "
                  f"{mark(t['e2e_p95_ms'] <= t['inference_p50_ms'] + 5)}")
            print()  # fmt: skip
            cold = subprocess_times(["-c", COLD, str(pkg), str(a.threads)], 5, from_launch=True)
            results[backend]["cold_start_ms"] = cold.tolist()  # type: ignore[index]
            print(f"  5. cold start to first result {spread(cold)} (target < 1500 ms: "
                  f"{mark(float(np.median(cold)) < 1500)})\n")
    for mod in ("edge_runtime", "edge_runtime.api"):
        times = subprocess_times(["-c", IMPORT.format(mod=mod)], 7, from_launch=False)
        results[f"import {mod}"] = times.tolist()
        # the target is for what a device program imports to run a model (edge_runtime.api), not the package's
        # 7-line __init__
        target = f"  (target < 300 ms: {mark(float(np.median(times)) < 300)})" if mod == "edge_runtime.api" else ""
        print(f"6. import {mod:<18} {spread(times)}{target}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
