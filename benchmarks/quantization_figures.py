"""Issue-2 figures: MobileNetV2-224 int8 vs float, size and single-thread latency, on onnxruntime and LiteRT.

    .venv/bin/python benchmarks/quantization_figures.py [--rounds 7] [--runs 20] [--cache DIR] [--json OUT]

Builds (once, cached) a MobileNetV2-224 Keras model with seeded random weights, then float and full-int8 models
in both formats through the converter's own targets: TFLite (TFLiteConverter float / ``quantize_tflite``) and
ONNX (tf2onnx / onnxruntime static QDQ per-channel; uint8 activations x int8 weights, the converter's choice for
the x86-laptop profile since onnxruntime's CPU kernels are tuned for that pair, and for comparison the symmetric
int8 activations a TensorRT profile asks for).
Calibration: scikit-image photos through the device's preprocessing. Latency: batch 1, one thread, warm-up
first, then ``rounds`` rounds that run every variant in turn (interleaved, so background load hits all
variants alike), ``runs`` invocations each. Prints p50/p90 per variant, the spread of the per-round medians,
int8/float speedups and size ratios, and the machine.
Targets (issue 2): size ratio about 0.25-0.27, speedup >= 1.8x on both runtimes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.zoo.mobilenet import INPUT_SHAPE, save_mobilenet_v2  # noqa: E402
from edge_runtime.benchmark.machine import describe_machine, machine_summary  # noqa: E402
from edge_runtime.benchmark.schema import MachineInfo  # noqa: E402
from edge_runtime.package.manifest import InputSpec, Normalization  # noqa: E402
from edge_runtime.preprocess import ImagePreprocessor  # noqa: E402

SPEC = InputSpec(
    name="input", shape=(1, *INPUT_SHAPE), dtype="float32", kind="image", layout="NHWC", color_order="RGB",
    resize="center_crop", normalization=Normalization(mean=(127.5,), std=(127.5,)),
)  # fmt: skip


def calibration() -> Iterator[list[np.ndarray]]:
    """Real photos (and mirrors) through the device's preprocessing, float32 [-1, 1]."""
    from converters.zoo.blazeface import demo_photos

    pre = ImagePreprocessor(SPEC, "RGB")
    for _, img in demo_photos():
        for frame in (img, np.ascontiguousarray(img[:, ::-1])):
            yield [pre(frame)[0]]


def build_models(cache: Path) -> dict[str, Path]:
    """{variant: model file}; every file is built once into ``cache``."""
    from converters.sources.keras import keras_to_onnx, load_keras
    from converters.targets import onnx_int8
    from converters.targets.tflite_int8 import quantize_tflite
    from edge_runtime.profiles import load_profile

    profile = load_profile("x86-laptop")
    out = {
        "tflite-float": cache / "mobilenet_v2_float.tflite",
        "tflite-int8": cache / "mobilenet_v2_int8.tflite",
        "onnx-float": cache / "mobilenet_v2_float.onnx",
        "onnx-int8": cache / "mobilenet_v2_int8.onnx",
        "onnx-int8-s8a": cache / "mobilenet_v2_int8_s8act_sym.onnx",
    }
    if all(p.is_file() for p in out.values()):
        return out
    src = save_mobilenet_v2(cache / "mobilenet_v2.keras")
    fm = load_keras(src, cache / "work")
    if not out["tflite-float"].is_file():
        import tensorflow as tf

        out["tflite-float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(fm.keras_model).convert())
    if not out["tflite-int8"].is_file():
        quantize_tflite(fm, calibration, profile, out["tflite-int8"])
    if not out["onnx-float"].is_file():
        keras_to_onnx(fm).replace(out["onnx-float"])
    if not out["onnx-int8"].is_file():
        prepared = onnx_int8.preprocess(out["onnx-float"], cache / "work" / "prepared.onnx")
        onnx_int8.quantize_onnx(prepared, calibration, profile, out["onnx-int8"])
    if not out["onnx-int8-s8a"].is_file():  # symmetric int8 activations (TensorRT profiles), for comparison
        prepared = onnx_int8.preprocess(out["onnx-float"], cache / "work" / "prepared.onnx")
        q = profile.quantization.model_copy(update={"symmetric_activations": True})
        onnx_int8.quantize_onnx(
            prepared, calibration, profile.model_copy(update={"quantization": q}), out["onnx-int8-s8a"]
        )
    return out


def _runner(path: Path, x: np.ndarray) -> Callable[[], object]:
    """A zero-argument callable running one single-threaded inference of ``path`` on ``x``."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feed = {name: x}
        return lambda: sess.run(None, feed)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    if np.dtype(d["dtype"]).kind == "i":
        scale, zp = d["quantization"]
        x = np.clip(np.rint(x / scale) + zp, -128, 127).astype(d["dtype"])
    interp.set_tensor(d["index"], x)
    return interp.invoke


def measure(models: dict[str, Path], rounds: int, runs: int, warmup: int = 10) -> dict[str, list[list[float]]]:
    """Per variant, per round, the latencies in ms; variants interleaved within every round."""
    x = next(calibration())[0]
    runners = {name: _runner(path, x) for name, path in models.items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[list[float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            lat = []
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                lat.append((time.perf_counter() - t0) * 1000)
            times[name].append(lat)
    return times


def summarize(models: dict[str, Path], times: dict[str, list[list[float]]]) -> dict[str, object]:
    stats: dict[str, dict[str, float]] = {}
    for name, per_round in times.items():
        flat = np.concatenate(per_round)
        medians = [float(np.median(r)) for r in per_round]
        stats[name] = {
            "p50_ms": float(np.percentile(flat, 50)),
            "p90_ms": float(np.percentile(flat, 90)),
            "round_median_min_ms": min(medians),
            "round_median_max_ms": max(medians),
            "size_bytes": float(models[name].stat().st_size),
        }
    ratios = {}
    for fmt, variant in (("onnx", "onnx-int8"), ("onnx", "onnx-int8-s8a"), ("tflite", "tflite-int8")):
        f, q = stats[f"{fmt}-float"], stats[variant]
        ratios[variant] = {"size_ratio": q["size_bytes"] / f["size_bytes"], "speedup_p50": f["p50_ms"] / q["p50_ms"]}
    return {"variants": stats, "int8_vs_float": ratios}


def report(summary: dict[str, object], info: MachineInfo, rounds: int, runs: int) -> None:
    print(f"machine: {machine_summary(info)}")
    print(f"MobileNetV2-224, random weights, batch 1, 1 thread, {rounds} interleaved rounds x {runs} runs\n")
    print(f"{'variant':<14}{'size MB':>9}{'p50 ms':>9}{'p90 ms':>9}   round medians (min..max)")
    for name, s in summary["variants"].items():  # type: ignore[attr-defined]
        print(
            f"{name:<14}{s['size_bytes'] / 1e6:>9.2f}{s['p50_ms']:>9.2f}{s['p90_ms']:>9.2f}   "
            f"{s['round_median_min_ms']:.2f}..{s['round_median_max_ms']:.2f}"
        )
    print()
    for variant, r in summary["int8_vs_float"].items():  # type: ignore[attr-defined]
        runtime = f"{'onnxruntime' if variant.startswith('onnx') else 'LiteRT'} {variant}"
        size_ok = "ok" if 0.25 <= r["size_ratio"] <= 0.27 else "MISS"  # the printed target, not a wider one
        speed_ok = "ok" if r["speedup_p50"] >= 1.8 else "MISS"
        print(
            f"{runtime:<27} int8/float size {r['size_ratio']:.3f} (target ~0.25-0.27: {size_ok}), "
            f"speedup p50 {r['speedup_p50']:.2f}x (target >= 1.8x: {speed_ok})"
        )


def default_cache() -> Path:
    """A cache folder keyed by the code that builds the models, so a converter change never measures stale files."""
    root = Path(__file__).resolve().parent.parent
    targets = sorted((root / "converters" / "targets").glob("*.py"))
    sources = [Path(__file__), *targets, root / "converters" / "zoo" / "mobilenet.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-runtime-qfig-{digest}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="Interleaved measurement rounds.")
    ap.add_argument("--runs", type=int, default=20, help="Invocations per variant per round.")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="Where built models are kept.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures as JSON here.")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    models = build_models(args.cache)
    info = describe_machine(extra_libraries=("tensorflow", "tensorflow-cpu"))
    summary = summarize(models, measure(models, args.rounds, args.runs))
    report(summary, info, args.rounds, args.runs)
    if args.json:
        args.json.write_text(json.dumps({"machine": info.model_dump(), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
