"""The project's standard benchmark suite (issue 6): the figures users choose a variant by.

    python benchmarks/run_suite.py [--quick] [--json OUT] [--report DIR] [--compare benchmarks/reference/X.json]

Groups, each measured side by side in interleaved rounds (see edge_runtime.benchmark.runner):
  1. MobileNetV2-224 float and int8, ONNX Runtime and LiteRT, 1 and 2 threads, plus the edge_runtime API on the
     int8 packages at 1 thread (runtime overhead over the raw backend);
  2. the demo model (BlazeFace package); 3. a small sensor model (1-D conv, float and int8);
  4. the end-to-end camera pipeline on a video clip (edge_runtime.pipeline.Pipeline on a video-file source):
     throughput, and capture-to-prediction latency p50/p95 at the clip's 30 fps.
Prints: int8/float speedup (one thread, both backends), size ratio int8/float, runtime overhead at p50, each with
its spread, and the machine. Models are built once into a cache ($EDGE_RUNTIME_CACHE or ~/.cache/edge-runtime).
Exit code 1 when --compare finds a regression beyond the tolerance.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_runtime.benchmark.compare import compare, format_outcome, load_reference  # noqa: E402
from edge_runtime.benchmark.report import format_table, write_report  # noqa: E402
from edge_runtime.benchmark.runner import BenchOptions, BenchRun, run_bench  # noqa: E402
from edge_runtime.benchmark.schema import BenchReport, RatioResult  # noqa: E402
from edge_runtime.benchmark.stats import paired_speedup  # noqa: E402
from edge_runtime.benchmark.variants import expand_variants  # noqa: E402
from edge_runtime.fsutil import atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    base = os.environ.get("EDGE_RUNTIME_CACHE") or Path.home() / ".cache" / "edge-runtime"
    return Path(base) / "bench-suite-v1"


def build_models(cache: Path) -> Path:
    """Build (once) in a subprocess so TensorFlow never sits in the measuring process."""
    pk = cache / "packages"
    subprocess.run([sys.executable, str(HERE / "suite_models.py"), str(cache)], check=True)
    return pk


def _opts(quick: bool, **kw: object) -> BenchOptions:
    base = {"warmup": 5, "runs": 40, "rounds": 5} if quick else {"warmup": 20, "runs": 300, "rounds": 10}
    return BenchOptions(**{**base, **kw})  # type: ignore[arg-type]


def _pair(run: BenchRun, variant: str, baseline: str) -> RatioResult | None:
    v, b = run.report.variant(variant), run.report.variant(baseline)
    if not v or not b or v.status != "ok" or b.status != "ok":
        return None
    size = v.file_size_bytes / b.file_size_bytes if v.file_size_bytes and b.file_size_bytes else None
    return paired_speedup(variant, baseline, v.round_p50_ms, b.round_p50_ms, size)


def mobilenet_group(pk: Path, quick: bool) -> tuple[BenchRun, dict[str, float], list[str]]:
    names = [f"mobilenet_v2_{p}_{f}" for f in ("tflite", "onnx") for p in ("float", "int8")]
    variants = expand_variants([str(pk / n) for n in names], ["onnxruntime", "tflite"], [1, 2])
    variants += expand_variants([str(pk / f"mobilenet_v2_int8_{f}") for f in ("tflite", "onnx")],
                                ["runtime:onnxruntime", "runtime:tflite"], [1])
    variants = [v for v in variants if "cannot run" not in (v.skip_reason or "")]
    run = run_bench(variants, _opts(quick, baseline="mobilenet-v2-float-tflite@1.0.0/tflite/t1"), _progress)
    figures: dict[str, float] = {}
    lines = []
    for fmt, backend in (("tflite", "tflite"), ("onnx", "onnxruntime")):
        fl, q = f"mobilenet-v2-float-{fmt}@1.0.0/{backend}/t1", f"mobilenet-v2-int8-{fmt}@1.0.0/{backend}/t1"
        r = _pair(run, q, fl)
        if r is None:
            lines.append(f"int8/float speedup, {backend}, 1 thread: not measured")
            continue
        figures[f"mobilenet_int8_{backend}_speedup"] = r.speedup
        figures[f"mobilenet_{fmt}_size_ratio"] = r.size_ratio or 0.0
        verdict = "meets" if r.speedup >= 1.8 else "MISSES"
        lines.append(f"int8/float speedup MobileNetV2-224, {backend}, 1 thread: {r.speedup:.2f}x "
                     f"(IQR over rounds {r.speedup_q1:.2f}-{r.speedup_q3:.2f}; {verdict} target >= 1.8x)")
        lines.append(f"size ratio int8/float ({fmt}): {r.size_ratio:.3f} (target about 0.27)")
        rt = _pair(run, q, f"mobilenet-v2-int8-{fmt}@1.0.0/runtime:{backend}/t1")
        if rt is not None:
            # speedup of raw over runtime = runtime p50 / raw p50; overhead = that - 1
            over, lo, hi = rt.speedup - 1, rt.speedup_q1 - 1, rt.speedup_q3 - 1
            figures[f"runtime_over_raw_{backend}_p50_ratio"] = rt.speedup  # ~1.0; a ratio compares stably
            lines.append(f"runtime overhead over raw {backend} at p50 (int8, 1 thread): {over:+.1%} "
                         f"(IQR {lo:+.1%}..{hi:+.1%}; {'meets' if over <= 0.05 else 'MISSES'} target <= 5%)")
    return run, figures, lines


def simple_group(paths: list[Path], backends: list[str], quick: bool) -> BenchRun:
    variants = [v for v in expand_variants([str(p) for p in paths], backends, [1])
                if "cannot run" not in (v.skip_reason or "")]
    return run_bench(variants, _opts(quick), _progress)


CLIP_FPS = 30.0


def write_clip(path: Path, frames: int = 60) -> Path:
    """A 640x480 MJPG clip panning and zooming over real photos (skimage), written with cv2.VideoWriter."""
    import cv2
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (640, 480))
    for i in range(frames):
        zoom = 1.0 + 0.5 * i / frames
        big = cv2.resize(img, None, fx=1.6 * zoom, fy=1.6 * zoom)
        x0 = int((big.shape[1] - 640) * (i / frames))
        writer.write(np.ascontiguousarray(big[:480, x0:x0 + 640]))
    writer.release()
    return path


def end_to_end(pkg: Path, quick: bool) -> tuple[dict[str, float], str]:
    """The camera pipeline on a video clip: edge_runtime.pipeline.Pipeline on a video-file source, as
    `edge-runtime run --source clip.avi` builds it (decode -> preprocess -> infer -> decode -> sinks).

    After a short warm-up run, two runs on the same loaded model: one as fast as the pipeline goes (throughput,
    from the pipeline's stats), one paced at the clip's 30 fps like a camera (end-to-end latency, capture to
    prediction, from the pipeline's latency recorder; unpaced, that figure would mostly be time queued).
    """
    try:
        from edge_runtime.api import load
        from edge_runtime.pipeline import FrameResult, Pipeline, PipelineConfig
        from edge_runtime.sources import SourceOptions, open_source
    except ImportError as exc:
        return {}, f"end-to-end: skipped ({exc})"
    detections = 0

    def count(result: FrameResult) -> None:
        nonlocal detections
        detections += len(result.prediction.detections)

    config = PipelineConfig(keep_frames=False)
    with tempfile.TemporaryDirectory() as tmp:
        clip = str(write_clip(Path(tmp) / "clip.avi", 60 if quick else 150))
        model = load(pkg, threads=1)
        try:
            Pipeline(model, open_source(clip), config=PipelineConfig(max_frames=5, keep_frames=False)).run()
            fast = Pipeline(model, open_source(clip), config=config).run()
            paced = Pipeline(model, open_source(clip, SourceOptions(fps_limit=CLIP_FPS)), [count], config)
            stats = paced.run()
        finally:
            model.close()
    lat = paced.latency.summary()
    if "end_to_end" not in lat:
        return {}, f"end-to-end: no frame processed ({stats.errors} errors; last: {stats.last_error})"
    e2e, inf = lat["end_to_end"], lat["inference"]
    line = (f"end-to-end camera pipeline on a video clip (demo model, 1 thread): {fast.fps:.0f} frames/s unpaced "
            f"({fast.processed} frames); paced at {CLIP_FPS:.0f} fps, capture -> prediction p50 {e2e['p50']:.2f} ms, "
            f"p95 {e2e['p95']:.2f} ms (inference p50 {inf['p50']:.2f} ms), {detections} detections over "
            f"{stats.processed} frames, {stats.dropped + fast.dropped} dropped, {stats.errors + fast.errors} errors")
    figures = {"e2e_demo_p50_ms": e2e["p50"], "e2e_demo_p95_ms": e2e["p95"], "e2e_demo_fps": fast.fps}
    return figures, line


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True) if os.environ.get("BENCH_VERBOSE") else None


def merge(runs: list[BenchRun], figures: dict[str, float], name: str | None) -> BenchReport:
    first = runs[0].report
    return BenchReport(
        created=first.created, reference_name=name, machine=first.machine, settings=first.settings,
        variants=[v for r in runs for v in r.report.variants], ratios=[x for r in runs for x in r.report.ratios],
        schedule=[s for r in runs for s in r.report.schedule], warnings=[w for r in runs for w in r.report.warnings],
        figures=figures,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs (CI)")
    p.add_argument("--json", type=Path, help="write the merged results (a reference file when --reference-name)")
    p.add_argument("--report", type=Path, help="write PNG plots and report.html here")
    p.add_argument("--compare", type=Path, help="reference JSON, e.g. benchmarks/reference/ci-laptop.json")
    p.add_argument("--tolerance", type=float, default=0.15, help="relative tolerance for --compare")
    p.add_argument("--reference-name", help="device name stored in the JSON")
    args = p.parse_args(argv)
    reference = load_reference(args.compare) if args.compare else None
    pk = build_models(cache_dir())
    print("measuring MobileNetV2-224 (8 variants + runtime API), demo, sensor, end-to-end ...", file=sys.stderr)
    mob, figures, lines = mobilenet_group(pk, args.quick)
    demo = simple_group([pk / "demo_blazeface"], ["tflite", "onnxruntime"], args.quick)
    sensor = simple_group([pk / "sensor_float", pk / "sensor_int8"], ["onnxruntime"], args.quick)
    e2e_figs, e2e_line = end_to_end(pk / "demo_blazeface", args.quick)
    figures.update(e2e_figs)
    for r in sensor.report.ratios:
        figures["sensor_int8_speedup"] = r.speedup
    report = merge([mob, demo, sensor], figures, args.reference_name)
    print(format_table(report))
    print("\nFigures (" + ("quick mode; " if args.quick else "") + "machine may be shared: see load average):")
    for line in [*lines, *(f"sensor int8/float speedup (onnxruntime, 1 thread): {r.speedup:.2f}x "
                           f"(IQR {r.speedup_q1:.2f}-{r.speedup_q3:.2f})" for r in sensor.report.ratios), e2e_line]:
        print(f"  {line}")
    print(f"  machine: {report.machine.describe()}")
    if args.json:
        atomic_write_text(args.json, report.model_dump_json(indent=2) + "\n", mode=0o644)
    if args.report:
        samples = {**mob.samples_ms, **demo.samples_ms, **sensor.samples_ms}
        write_report(report, samples, args.report)
    if reference is not None:
        outcome = compare(report, reference, args.tolerance)
        print(format_outcome(outcome, str(args.compare), args.tolerance))
        return 1 if outcome.regressions else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
