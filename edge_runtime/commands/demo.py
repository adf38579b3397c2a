"""`edge-runtime demo`: face detection on a clip made from real photos, offline, no camera needed.

Builds (once, cached) an int8 BlazeFace package with the converter, signed with a demo key it creates (and then
trusts, as a device would trust a release key), makes a ~60-frame 640x480 clip by panning and
zooming over scikit-image's sample photos, runs the same pipeline as `edge-runtime run` on it, and prints the
detections per frame and a latency summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import MissingDependencyError
from edge_runtime.pipeline import FrameResult, Pipeline, PipelineConfig
from edge_runtime.sources import SourceOptions, open_source

CLIP_SIZE = (640, 480)
CLIP_FPS = 30.0
PHOTOS = ("astronaut", "coffee", "camera", "chelsea", "rocket")


def cache_dir() -> Path:
    """$EDGE_RUNTIME_CACHE/demo, else ~/.cache/edge-runtime/demo."""
    base = os.environ.get("EDGE_RUNTIME_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edge-runtime") / "demo"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="x86-laptop", help="device profile to build the demo package for")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached package and clip")
    p.add_argument("--frames", type=int, default=60, help="clip length in frames (default 60)")
    p.add_argument("--backend", help="tflite or onnxruntime (default: from the package format)")
    p.add_argument("--threads", type=int, help="inference threads (default: from the profile)")
    p.add_argument("--save-detections", metavar="DIR", help="also save annotated frames into DIR")


def _photos() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError as exc:
        raise MissingDependencyError("scikit-image (demo photos)", "demo") from exc
    out = []
    for name in PHOTOS:
        img = getattr(data, name)()
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
        out.append(img)
    return out


def _view(photo: np.ndarray, t: float) -> np.ndarray:
    """A 640x480 view of ``photo`` at time t in [0, 1]: zooming in from the whole photo while panning."""
    h, w = photo.shape[:2]
    W, H = CLIP_SIZE
    zoom = 1.0 + 0.35 * t
    scale = min(W / w, H / h) * zoom
    cx = w / 2 + (t - 0.5) * 0.15 * w
    cy = h / 2 - 0.1 * t * h
    m = np.float32([[scale, 0, W / 2 - scale * cx], [0, scale, H / 2 - scale * cy]])
    return cv2.warpAffine(photo, m, CLIP_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_clip(path: Path, frames: int = 60, fps: float = CLIP_FPS) -> Path:
    """An MJPG .avi of ``frames`` frames panning and zooming over the sample photos (written, then renamed)."""
    photos = _photos()
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, CLIP_SIZE)
    per = max(1, frames // len(photos))
    for i in range(frames):
        k = min(i // per, len(photos) - 1)
        writer.write(_view(photos[k], (i - k * per) / max(1, per - 1)))
    writer.release()
    os.replace(tmp, path)
    return path


def demo_key() -> tuple[Path, Path]:
    """The demo's own signing key pair in the cache (created once): the demo package is signed like any other."""
    from edge_runtime.package.signing import generate_keypair

    prefix = cache_dir() / "keys" / "demo-release"
    priv, pub = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    if not (priv.is_file() and pub.is_file()):
        priv.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        generate_keypair(prefix)
        print(f"created the demo signing key {priv} (trusted as {pub})", file=sys.stderr)
    return priv, pub


def ensure_package(profile: str, rebuild: bool) -> tuple[Path, Path]:
    """The cached demo package (built with the converter when missing or when ``rebuild``), signed with the demo
    key, and the public key to trust it with."""
    from edge_runtime.package.signing import load_private_key
    from edge_runtime.package.store import sign_package

    priv, pub = demo_key()
    pkg = cache_dir() / f"blazeface-{profile}"
    if rebuild or not (pkg / "manifest.json").is_file():
        try:
            from converters.zoo.blazeface import build_demo_package
        except ImportError as exc:
            raise MissingDependencyError(f"the converter ({exc.name})", "convert") from exc
        print(f"building the demo package for {profile} (once; cached in {pkg}) ...", file=sys.stderr)
        t0 = time.monotonic()
        build_demo_package(pkg, profile=profile, sign_key=load_private_key(priv), force=True)
        print(f"built in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    else:  # (re)sign a cached package: it may predate the demo key, or predate signing
        sign_package(pkg, load_private_key(priv))
    return pkg, pub


def _print_frame(result: FrameResult) -> None:
    dets = result.prediction.detections
    boxes = "  ".join(f"{d.score:.2f}@({d.box[0]:.0f},{d.box[1]:.0f},{d.box[2]:.0f},{d.box[3]:.0f})" for d in dets)
    t = result.prediction.timings
    print(f"frame {result.index:3d}  {len(dets)} face{'s' if len(dets) != 1 else ' '}  "
          f"{t.total_ms:6.2f} ms  {boxes}", flush=True)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from edge_runtime.api import load
    from edge_runtime.commands.run import format_stats
    from edge_runtime.sinks import DetectionSnapshotSink

    if args.frames < 1:
        from edge_runtime.errors import ConfigError

        raise ConfigError("--frames must be at least 1")
    from edge_runtime.package.signing import RELEASE, TrustStore

    pkg, pub = ensure_package(args.profile, args.rebuild)
    trust = TrustStore.from_paths([pub], [RELEASE])
    clip = cache_dir() / f"clip-{args.frames}-{CLIP_FPS:g}fps.avi"
    if args.rebuild or not clip.is_file():
        make_clip(clip, args.frames)
    with load(pkg, trust=trust, profile=args.profile, backend=args.backend, threads=args.threads) as model:
        print(f"{model.name} {model.version} ({model.manifest.format}, {model.manifest.quantization.precision}, "
              f"backend {model.backend}) on {clip.name}: {args.frames} frames 640x480")  # fmt: skip
        sinks = [_print_frame]
        if args.save_detections:
            sinks.append(DetectionSnapshotSink(args.save_detections))
        # played at the clip's own frame rate, as a camera would deliver it, so end-to-end latency means what it
        # would mean on a device (a file read as fast as possible would mostly measure time spent queued)
        source = open_source(str(clip), SourceOptions(fps_limit=CLIP_FPS))
        pipeline = Pipeline(model, source, sinks, PipelineConfig())
        stats = pipeline.run()
    print(format_stats(stats))
    print(pipeline.latency.format())
    return 0
