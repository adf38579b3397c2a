"""Drift figures at the defaults: false alarms per 24 h of 30 fps video and detection delay per shift, for the
classifier and the demo's detector, per reference kind (package, device, fleet).

    PYTHONPATH=. python benchmarks/drift_figures.py [--cache DIR] [--hours 6] [--json OUT]

How the streams are made. Real frames are rendered and run through the real packaged models once: a stationary
camera (one photo, sensor noise, a slow 3% exposure wander, 2-pixel jitter) and a moving camera over the
calibration photos (pan and zoom, the demo clip's motion, with mild brightness/noise augmentation); and the same
frames shifted (brightness x0.4, Gaussian blur sigma 3, noise sigma 25, a 45% occlusion, and a new scene: photos
held back from calibration). Their features and outputs (edge_runtime.monitoring.features, as the Monitor takes
them) are then replayed as long streams, one drift sample per ``input_every`` frames at 30 fps capture times, into
edge_runtime.monitoring.drift.DriftDetector with its default config: hours of video in seconds, not real time.

References: ``package`` (the package's statistics), ``device`` (learned in the default 60 s warm-up on the stream
itself), ``fleet`` (learned from 10 minutes of another device's stream of the same kind of content).
A figure past its goal (false alarms > 1 per 24 h; delay > 10 s or none within 60 s) reads MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.monitoring.config import DriftConfig
from edge_runtime.monitoring.drift import DriftDetector
from edge_runtime.monitoring.features import image_features, output_features
from edge_runtime.monitoring.reference import Reference

FPS = 30.0
SIZE = (320, 240)
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat")
HELD_BACK = ("hubble_deep_field", "colorwheel", "retina", "camera", "coins", "clock")
SHIFTS = ("brightness", "blur", "noise", "occlusion", "new_scene")
FA_GOAL_PER_DAY, DELAY_GOAL_S, DELAY_LIMIT_S = 1.0, 10.0, 60.0
MODELS = {"classifier": "mobilenet_v2_int8_onnx", "detector": "demo_blazeface"}


def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)


def _view(photo: np.ndarray, t: float) -> np.ndarray:
    """The demo clip's motion: zoom in from the whole photo while panning (t in 0..1)."""
    h, w = photo.shape[:2]
    W, H = SIZE
    scale = min(W / w, H / h) * (1.0 + 0.35 * t)
    cx, cy = w / 2 + (t - 0.5) * 0.15 * w, h / 2 - 0.1 * t * h
    m = np.float32([[scale, 0, W / 2 - scale * cx], [0, scale, H / 2 - scale * cy]])
    return cv2.warpAffine(photo, m, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def render(content: str, names: tuple[str, ...], k: int, seed: int) -> list[np.ndarray]:
    """``k`` consecutive frames of a stationary camera on names[0], or of a camera moving over all ``names``."""
    rng = np.random.default_rng(seed)
    photos = [_photo(n) for n in names]
    out = []
    for i in range(k):
        if content == "stationary":
            dx, dy = rng.integers(-2, 3, 2)
            base = np.roll(_view(photos[0], 0.3), (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
            f = base * (1.0 + 0.03 * np.sin(2 * np.pi * i / k)) + rng.normal(0, 2.0, base.shape)
        else:
            per = k // len(photos)
            j = min(i // per, len(photos) - 1)
            base = _view(photos[j], (i - j * per) / max(1, per - 1)).astype(np.float32)
            f = base * rng.uniform(0.9, 1.1) + rng.normal(0, 3.0, base.shape)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def shifted(frames: list[np.ndarray], shift: str, content: str, seed: int) -> list[np.ndarray]:
    if shift == "new_scene":
        return render(content, HELD_BACK, len(frames), seed + 1)
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        x = f.astype(np.float32)
        if shift == "brightness":
            x = x * 0.4
        elif shift == "blur":
            x = cv2.GaussianBlur(x, (0, 0), 3)
        elif shift == "noise":
            x = x + rng.normal(0, 25.0, x.shape)
        elif shift == "occlusion":
            h, w = x.shape[:2]
            x[: int(h * 0.67), : int(w * 0.67)] = 20.0  # something parked in front of the lens: 45% of the view
        out.append(np.clip(x, 0, 255).astype(np.uint8))
    return out


Row = tuple[dict[str, float], int | None]


def rows(model: Any, frames: list[np.ndarray], flip: bool) -> list[Row]:
    """Each frame's drift features and top-1 class, computed the Monitor's way on the model's real answers."""
    out = []
    for f in frames:
        p = model.predict(f, frame_order="BGR")
        feats = {**image_features(f, flip), **output_features(p, None)}
        out.append((feats, p.top.index if p.top is not None else None))
    return out


class Stream:
    """Replays rows as a video's drift samples (every input_every frames at 30 fps), walking them in order."""

    def __init__(self, config: DriftConfig, rng: np.random.Generator) -> None:
        self.dt = config.input_every / FPS
        self.ts, self.i = 1.8e9, int(rng.integers(0, 1 << 16))

    def feed(self, det: DriftDetector, data: list[Row], seconds: float) -> float | None:
        """Feed ``seconds`` of video; the capture time of the first alarm raised (None if none)."""
        first = None
        for _ in range(int(seconds / self.dt)):
            feats, top = data[self.i % len(data)]
            self.i += 1
            self.ts += self.dt
            tops = det.top_classes
            if tops:
                feats = {**feats, "class_mix": 1.0 if top in tops else 0.0}
            if first is None and any(s.drifted for s in det.add(feats, top, self.ts)):
                first = self.ts
            elif first is not None:
                det.add(feats, top, self.ts)
        return first


def _alarms(det: DriftDetector, stream: Stream, data: list[Row], seconds: float, chunk: float = 600.0) -> int:
    n = 0
    left = seconds
    while left > 0:
        step = min(chunk, left)
        for _ in range(int(step / stream.dt)):
            feats, top = data[stream.i % len(data)]
            stream.i += 1
            stream.ts += stream.dt
            if det.top_classes:
                feats = {**feats, "class_mix": 1.0 if top in det.top_classes else 0.0}
            n += sum(1 for s in det.add(feats, top, stream.ts) if s.drifted)
        left -= step
    return n


def package_reference(config: DriftConfig, manifest: Any, model: Any, flip: bool) -> Reference:
    """The package's statistics; a package built without them (the suite's MobileNets) gets what `convert`
    records from its calibration photos: brightness, top-1 confidence and the class mix, nothing else."""
    if manifest.reference is not None:
        return Reference.from_package(manifest.reference, manifest.name, manifest.version, config.top_classes)
    stills = [cv2.resize(_photo(n), SIZE, interpolation=cv2.INTER_AREA) for n in CALIBRATION]
    stills += [f[:, ::-1].copy() for f in stills]
    data = rows(model, stills, flip)
    values = {k: [r[0][k] for r in data if k in r[0]] for k in ("brightness", "confidence")}
    return Reference.from_samples("package", manifest.name, manifest.version, values,
                                  [t for _, t in data if t is not None], config.top_classes)


def detector(kind: str, config: DriftConfig, manifest: Any, refs: dict[str, Reference]) -> DriftDetector:
    if kind in refs:
        return DriftDetector(config, refs[kind], manifest.name, manifest.version)
    return DriftDetector(config, None, manifest.name, manifest.version)


def fleet_reference(config: DriftConfig, manifest: Any, data: list[Row], seed: int) -> Reference:
    """A baseline from 10 minutes of another device's stream of the same content (the fleet's control group)."""
    long = replace_config(config, warmup_s=600.0, warmup_samples=config.warmup_samples)
    det = DriftDetector(long, None, manifest.name, manifest.version)
    Stream(long, np.random.default_rng(seed)).feed(det, data, 601.0)
    assert det.reference is not None
    return replace(det.reference, kind="fleet")


def replace_config(config: DriftConfig, **changes: Any) -> DriftConfig:
    return DriftConfig.model_validate({**config.model_dump(), **changes})


def measure(name: str, model: Any, hours: float, seed: int) -> list[dict[str, Any]]:
    config = DriftConfig()
    m = model.manifest
    flip = m.inputs[0].color_order == "RGB"
    results = []
    package = package_reference(config, m, model, flip)
    for content in ("stationary", "moving"):
        frames = render(content, CALIBRATION, 240, seed)
        normal = rows(model, frames, flip)
        shifts = {s: rows(model, shifted(frames, s, content, seed), flip) for s in SHIFTS}
        refs = {"package": package, "fleet": fleet_reference(config, m, normal, seed + 7)}
        for kind in ("package", "device", "fleet"):
            det = detector(kind, config, m, refs)
            stream = Stream(config, np.random.default_rng(seed))
            stream.feed(det, normal, config.warmup_s + 1.0 if kind == "device" else 0.0)
            alarms = _alarms(det, stream, normal, hours * 3600.0)
            row: dict[str, Any] = {"model": name, "content": content, "reference": kind, "hours": hours,
                                   "false_alarms": alarms, "per_24h": alarms * 24.0 / hours, "delay_s": {}}
            for shift, data in shifts.items():
                det = detector(kind, config, m, refs)
                s = Stream(config, np.random.default_rng(seed + 3))
                s.feed(det, normal, (config.warmup_s if kind == "device" else 0.0) + 120.0)
                onset = s.ts
                hit = s.feed(det, data, DELAY_LIMIT_S)
                row["delay_s"][shift] = None if hit is None else round(hit - onset, 2)
            results.append(row)
    return results


def _fmt_delay(d: float | None) -> str:
    if d is None:
        return f"none/{DELAY_LIMIT_S:.0f}s MISS"
    return f"{d:.1f}" + (" MISS" if d > DELAY_GOAL_S else "")


def report(results: list[dict[str, Any]]) -> str:
    head = f"{'model':<11}{'content':<11}{'reference':<10}{'FA/24h':>14}  " + "".join(f"{s:>15}" for s in SHIFTS)
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['model']:<11}{r['content']:<11}{r['reference']:<10}  n/a: {r['error']}")
            continue
        fa = f"{r['per_24h']:.2f}" + (" MISS" if r["per_24h"] > FA_GOAL_PER_DAY else "")
        lines.append(f"{r['model']:<11}{r['content']:<11}{r['reference']:<10}{fa:>14}  "
                     + "".join(f"{_fmt_delay(r['delay_s'][s]):>15}" for s in SHIFTS))
    return "\n".join(lines)


def ensure_packages(cache: Path, names: list[str]) -> None:
    """The suite's packages (built once by suite_models.py); if its int8 demo build fails, the float BlazeFace
    packaged with reference statistics of the calibration photos (what `convert` would record)."""
    packages = cache / "packages"
    if all((packages / MODELS[n] / "manifest.json").is_file() for n in names):
        return
    subprocess.run([sys.executable, str(Path(__file__).with_name("suite_models.py")), str(cache)], check=False)
    demo = packages / MODELS["detector"]
    if "detector" in names and not (demo / "manifest.json").is_file():
        print("drift figures: the int8 demo package did not build; using the float BlazeFace model", file=sys.stderr)
        float_demo(demo)


def float_demo(out: Path) -> None:
    from datetime import UTC, datetime

    from converters.refstats import RefStatsBuilder
    from converters.zoo import blazeface as bf
    from edge_runtime.package.store import write_package

    spec = bf.input_spec()
    b = RefStatsBuilder(spec, "BGR", None, "none")
    for f in render("moving", CALIBRATION, 120, seed=11):
        b.add_input(f)
    fields = {"name": "demo-blazeface", "version": "1.0.0", "created": datetime.now(UTC).isoformat(),
              "format": "tflite", "profile": "x86-laptop", "model_file": "model.tflite",
              "inputs": [spec.model_dump()], "outputs": bf.output_spec().model_dump(),
              "quantization": {"precision": "float32", "method": "none"},
              "reference": b.result(None).model_dump()}
    write_package(out, {"model.tflite": bf.model_path(), bf.ANCHORS_FILE: bf.anchors_npy()}, fields, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGE_RUNTIME_CACHE")
                                                       or Path.home() / ".cache" / "edge-runtime"))
    p.add_argument("--hours", type=float, default=6.0, help="hours of in-distribution video per stream (FA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="classifier,detector")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    from edge_runtime.api import load

    packages = args.cache / "packages"
    ensure_packages(args.cache, args.models.split(","))
    t0 = time.perf_counter()
    results = []
    for name in args.models.split(","):
        with load(packages / MODELS[name], allow_unsigned=True) as model:  # built here; hashes still checked
            results += measure(name, model, args.hours, args.seed)
    print(f"drift figures at the defaults ({DriftConfig().input_every=}, window {DriftConfig().window} samples, "
          f"confirm {DriftConfig().confirm}); {args.hours:g} h of 30 fps video per stream; goals: <= "
          f"{FA_GOAL_PER_DAY:g} false alarm per 24 h, delay <= {DELAY_GOAL_S:g} s")
    print(report(results))
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.node(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
