"""`edge-runtime run --package PKG --source SRC`: run a package on a camera, video or sensor stream, offline.

Results go to stdout (or --out) as JSON lines; counters and a per-stage latency summary go to stderr at the end.
SIGINT and SIGTERM end the run cleanly (exit 0, summary printed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_runtime.errors import ConfigError
from edge_runtime.pipeline import Pipeline, PipelineConfig, PipelineStats, Sink, stop_on_signals
from edge_runtime.sources import DropPolicy, SourceOptions, open_source, source_kind, window_spec_for


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options that pick and verify the package and its backend (shared with `serve`)."""
    p.add_argument("--package", required=True, help="package directory or .erpkg archive")
    p.add_argument("--key", action="append", default=[], metavar="PUB",
                   help="trusted public key (.pub file or directory); when given, the signature is required")
    p.add_argument("--profile", help="device profile name or YAML file (default: the package's profile)")
    p.add_argument("--backend", help="backend to use: tflite or onnxruntime (default: from the package format)")
    p.add_argument("--threads", type=int, help="inference threads (default: from the profile)")  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--source", required=True,
                   help="0 | /dev/video0 | rtsp://... | http://...mjpg | clip.mp4 | data.csv | data.jsonl | stdin | "
                        "serial:/dev/ttyUSB0?baud=115200 | udp://0.0.0.0:9000")
    p.add_argument("--max-frames", type=int, help="stop after N samples from the source")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--drop-policy", choices=[d.value for d in DropPolicy],
                   help="when inference is slower than the source (default: block for files and stdin, newest-only "
                        "for cameras, drop-oldest for live sensors)")
    p.add_argument("--queue-size", type=int, default=4, help="samples queued for drop-oldest/block (default 4)")
    p.add_argument("--motion-gate", type=float, metavar="THRESH",
                   help="skip frames while the scene is still: share of changed pixels, e.g. 0.01")
    p.add_argument("--window-hop", type=int, help="sensor sources: samples between windows (default: window size)")
    p.add_argument("--fps-limit", type=float, help="pace a video source at this frame rate (simulate a camera)")
    p.add_argument("--out", help="write JSON lines to this file instead of stdout")
    p.add_argument("--save-detections", metavar="DIR", help="save annotated frames with detections into DIR")
    p.add_argument("--max-saved", type=int, default=100, help="at most this many saved files (default 100)")
    p.add_argument("--clip-frames", type=int, default=0, help="save clips of N frames instead of single frames")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary on stderr")  # fmt: skip


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad combinations before loading anything, with one message saying what to change."""
    kind = source_kind(args.source)
    if args.motion_gate is not None and kind != "frame":
        raise ConfigError("--motion-gate works with camera and video sources only")
    if args.window_hop is not None and kind != "window":
        raise ConfigError("--window-hop applies to sensor sources only")
    for name in ("max_frames", "queue_size", "max_saved", "window_hop"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be positive")
    if args.save_detections and kind != "frame":
        raise ConfigError("--save-detections needs a camera or video source")


def load_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Load and verify the package named by the shared model arguments."""
    from edge_runtime.api import load
    from edge_runtime.package.signing import TrustStore

    trust = TrustStore.from_paths(args.key) if args.key else None
    return load(args.package, trust=trust, profile=args.profile, backend=args.backend, threads=args.threads)


def build_pipeline(args: argparse.Namespace, model, sinks: Sequence[Sink]) -> Pipeline:  # type: ignore[no-untyped-def]
    """Source, motion gate and bounds from the arguments, around an already loaded model."""
    from edge_runtime.sources.motion import MotionGate

    spec = model.input_spec
    streaming = bool(model.manifest.state)
    window = window_spec_for(spec, args.window_hop, streaming) if spec.kind == "tensor" else None
    options = SourceOptions(
        drop_policy=DropPolicy(args.drop_policy) if args.drop_policy else None,
        queue_size=args.queue_size,
        fps_limit=args.fps_limit,
    )
    source = open_source(args.source, options, window)
    gate = MotionGate(args.motion_gate) if args.motion_gate is not None else None
    config = PipelineConfig(max_frames=args.max_frames, duration_s=args.duration)
    return Pipeline(model, source, sinks, config, gate)


def format_stats(stats: PipelineStats) -> str:
    s = stats
    line = (f"{s.model} {s.version}: {s.processed} processed of {s.captured} captured in {s.uptime_s:.1f} s "
            f"({s.fps:.1f}/s); dropped {s.dropped}, still {s.skipped_still}, bad lines {s.bad_lines}, "
            f"errors {s.errors}, sink errors {s.sink_errors}, reconnects {s.reconnects}")  # fmt: skip
    return line


def run_pipeline(pipeline: Pipeline, summary: bool) -> int:
    """Run with signal handling; print the summary on stderr even when the source fails."""
    try:
        with stop_on_signals(pipeline):
            pipeline.run()
    finally:
        if summary:
            print(format_stats(pipeline.stats()), file=sys.stderr)
            print(pipeline.latency.format(), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from edge_runtime.sinks import DetectionSnapshotSink, JsonLinesSink

    check_arguments(args)
    model = load_model(args)
    try:
        sinks: list[Sink] = [JsonLinesSink(args.out)]
        if args.save_detections:
            sinks.append(DetectionSnapshotSink(args.save_detections, args.max_saved, clip_frames=args.clip_frames))
        pipeline = build_pipeline(args, model, sinks)
        return run_pipeline(pipeline, summary=not args.no_summary)
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
