"""`edge-runtime run --package PKG --source SRC`: run a package on a camera, video or sensor stream, offline.

Results go to stdout (or --out) as JSON lines; counters and a per-stage latency summary go to stderr at the end.
SIGINT and SIGTERM end the run cleanly (exit 0, summary printed). With ``--config device.yaml`` (or the shortcuts
``--http``, ``--mqtt``, ``--device-id``, ``--outbox``) the run is monitored: metric records and events go to a
durable outbox and from there to MQTT when a broker is reachable, and /metrics + /health are served locally.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from edge_runtime.errors import ConfigError, InputError
from edge_runtime.pipeline import Pipeline, PipelineConfig, PipelineStats, Sink, SourceLane, stop_on_signals
from edge_runtime.sources import DropPolicy, SourceOptions, open_source, source_kind, window_spec_for

if TYPE_CHECKING:
    from edge_runtime.device_config import DeviceConfig
    from edge_runtime.monitoring.service import DeviceServices
    from edge_runtime.multisource import NamedSource


DEFAULT_STALL_S = 30.0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options that pick and verify the package and its backend (shared with `serve`)."""
    p.add_argument("--package", required=True, help="package directory or .erpkg archive")
    from edge_runtime.commands.package_cmds import add_trust_flags

    add_trust_flags(p)  # --trust KEY.pub (release role; alias --key), --allow-unsigned
    p.add_argument("--profile", help="device profile name or YAML file (default: the package's profile)")
    p.add_argument("--backend", help="backend to use: tflite or onnxruntime (default: from the package format)")
    p.add_argument("--threads", type=int, help="inference threads (default: from the profile)")  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--source", action="append",
                   help="0 | /dev/video0 | rtsp://... | http://...mjpg | clip.mp4 | data.csv | data.jsonl | stdin | "
                        "serial:/dev/ttyUSB0?baud=115200 | udp://0.0.0.0:9000; repeat it to serve several sources "
                        "with one model, each optionally named: --source cam1=rtsp://... (results carry the name); "
                        "or list them under sources: in --config")
    p.add_argument("--max-frames", type=int, help="stop after N samples from the source")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--drop-policy", choices=[d.value for d in DropPolicy],
                   help="when inference is slower than the source (default: block for files and stdin, newest-only "
                        "for cameras, drop-oldest for live sensors)")
    p.add_argument("--queue-size", type=int, help="samples queued for drop-oldest/block (default 4)")
    p.add_argument("--motion-gate", type=float, metavar="THRESH",
                   help="skip frames while the scene is still: share of changed pixels, e.g. 0.01")
    p.add_argument("--window-hop", type=int, help="sensor sources: samples between windows (default: window size)")
    p.add_argument("--fps-limit", type=float, help="pace a video source at this frame rate (simulate a camera)")
    p.add_argument("--stall-timeout", type=float, metavar="S",
                   help=f"end with an error when a live source (camera, stream, serial, UDP) yields no sample for S "
                        f"seconds (default {DEFAULT_STALL_S:g}; files and stdin: no bound unless given)")
    p.add_argument("--batching", choices=["auto", "on", "off"], default="auto",
                   help="several sources on a model with a dynamic batch dimension: one backend call for the frames "
                        "ready from different sources when timing batch 1 against batch N at the start says it pays "
                        "(auto, default), always (on) or never (off)")
    p.add_argument("--out", help="write JSON lines to this file instead of stdout")
    p.add_argument("--save-detections", metavar="DIR", help="save annotated frames with detections into DIR")
    p.add_argument("--max-saved", type=int, default=100, help="at most this many saved files (default 100)")
    p.add_argument("--clip-frames", type=int, default=0, help="save clips of N frames instead of single frames")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary on stderr")  # fmt: skip
    add_device_arguments(p, http=True)


def add_device_arguments(p: argparse.ArgumentParser, http: bool) -> None:
    """Monitoring and sync options (shared with `serve`, which serves /metrics on its own port)."""
    g = p.add_argument_group("monitoring and sync (see deploy/device.example.yaml)")
    g.add_argument("--config", metavar="DEVICE_YAML", help="device config: device_id, mqtt, outbox, monitor, http")
    g.add_argument("--device-id", help="this device's id (overrides the config file's)")
    g.add_argument("--mqtt", metavar="URL",
                   help="broker, e.g. mqtt://host:1883 or mqtts://user:pass@host:8883 (needs --device-id or a config)")
    g.add_argument("--mqtt-ca", type=Path, metavar="PEM", help="CA certificate of the broker (implies TLS)")
    g.add_argument("--mqtt-cert", type=Path, metavar="PEM", help="client certificate for mutual TLS")
    g.add_argument("--mqtt-key", type=Path, metavar="PEM", help="private key of --mqtt-cert")
    g.add_argument("--mqtt-username", metavar="USER", help="broker user name")
    g.add_argument("--mqtt-password-file", type=Path, metavar="FILE",
                   help="broker password, first line of FILE (default: $EDGE_RUNTIME_MQTT_PASSWORD)")
    g.add_argument("--outbox", metavar="PATH", help="SQLite outbox file (default with --mqtt: $STATE_DIRECTORY or "
                                                   "~/.local/state/edge-runtime/<device>/outbox.db)")
    if http:
        g.add_argument("--http", type=int, metavar="PORT", help="serve Prometheus /metrics and /health on PORT "
                                                                "(0: a free port, printed on stderr)")
        g.add_argument("--http-host", metavar="ADDR", help="address for --http (default 127.0.0.1)")


def _broker_section(url: str, current: dict[str, Any] | None) -> dict[str, Any]:
    """``mqtt[s]://[user[:pass]@]host[:port]`` over the file's broker section (TLS files, prefix are kept)."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(f"--mqtt {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError(f"--mqtt {url!r}: {exc}") from exc
    out = {**(current or {}), "host": u.hostname, "port": port}
    if u.username is not None:
        out["username"], out["password"] = unquote(u.username), unquote(u.password) if u.password else None
    if u.scheme == "mqtts" and not out.get("tls"):
        out["tls"] = {}
    if u.scheme == "mqtt":
        out["tls"] = None
    return out


def _credentials(args: argparse.Namespace, section: dict[str, Any]) -> dict[str, Any]:
    """The --mqtt-* TLS and credential options over the broker section (they win)."""
    from edge_runtime.sync.mqtt_settings import resolve_password

    def opt(name: str) -> Any:
        return getattr(args, f"mqtt_{name}", None)

    out = dict(section)
    tls = {"ca_cert": opt("ca"), "client_cert": opt("cert"), "client_key": opt("key")}
    if any(v is not None for v in tls.values()):
        out["tls"] = {**(out.get("tls") or {}), **{k: v for k, v in tls.items() if v is not None}}
    if opt("username"):
        out["username"] = opt("username")
    if out.get("password") is None and (opt("password_file") or out.get("username")):
        out["password"] = resolve_password(opt("password_file"))
    return out


def device_config(args: argparse.Namespace) -> DeviceConfig | None:
    """The device config from --config plus the shortcut options (they win); None when nothing asks for one."""
    http_port = getattr(args, "http", None)
    if not (args.config or args.mqtt or args.device_id or args.outbox or http_port is not None):
        return None  # (before the import: a plain run needs none of the sync and monitoring modules)
    from edge_runtime.device_config import default_state_dir, load_device_config, parse_device_config

    base = load_device_config(args.config) if args.config else None
    data: dict[str, Any] = base.model_dump() if base else {"outbox": None}
    if data.get("mqtt"):
        data["mqtt"].pop("device_id", None)
    if args.device_id:
        data["device_id"] = args.device_id
    elif "device_id" not in data:
        if args.mqtt:
            raise ConfigError("--mqtt needs --device-id (the topic level this device writes under) or a --config")
        data["device_id"] = "local"
    if args.mqtt:
        data["mqtt"] = _broker_section(args.mqtt, data.get("mqtt"))
    if data.get("mqtt"):
        data["mqtt"] = _credentials(args, data["mqtt"])
    if args.outbox:
        data["outbox"] = {**(data.get("outbox") or {}), "path": args.outbox}
    elif data.get("mqtt") and not data.get("outbox"):
        data["outbox"] = {"path": default_state_dir() / str(data["device_id"]) / "outbox.db"}
    if http_port is not None:
        host = args.http_host or (data.get("http") or {}).get("host", "127.0.0.1")
        data["http"] = {"host": host, "port": http_port}
    what = f"device config {args.config}" if args.config else "monitoring options"
    return parse_device_config(data, Path.cwd(), what, expand=False)


PER_SOURCE_FLAGS = ("drop_policy", "queue_size", "fps_limit", "motion_gate")


def source_entries(args: argparse.Namespace, device: DeviceConfig | None) -> list[NamedSource]:
    """Every input as a named source, in order: the --source options (with the per-source flags), else the
    device config's ``sources:``; names must differ, one source at most reads standard input."""
    from edge_runtime.multisource import NamedSource, split_named_source

    configured = list(device.sources) if device is not None else []
    given = [args.source] if isinstance(args.source, str) else list(args.source or [])
    if given and configured:
        raise ConfigError(f"give the sources either as --source or under sources: in {args.config}, not both")
    if configured:
        flags = [f"--{n.replace('_', '-')}" for n in PER_SOURCE_FLAGS if getattr(args, n, None) is not None]
        if flags:
            raise ConfigError(f"{', '.join(flags)}: with sources: in {args.config}, set it per source there "
                              "(options:, motion_gate:)")
        entries = configured
    elif given:
        options = SourceOptions(drop_policy=DropPolicy(args.drop_policy) if args.drop_policy else None,
                                queue_size=args.queue_size or 4, fps_limit=args.fps_limit)
        entries = [NamedSource(name=name, source=spec, options=options, motion_gate=args.motion_gate)
                   for name, spec in map(split_named_source, given)]
    else:
        raise ConfigError("give a --source (or list sources: in a --config file)")
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two sources are named {', '.join(twice)}: name each one, --source NAME=SPEC")
    if sum(e.source.strip() in ("stdin", "-") for e in entries) > 1:
        raise ConfigError("only one source can read standard input")
    return entries


def check_flags(args: argparse.Namespace) -> None:
    """Refuse bad option values before anything is read or loaded, with one message saying what to change."""
    if args.motion_gate is not None and not 0.0 < args.motion_gate < 1.0:
        raise ConfigError(f"--motion-gate {args.motion_gate:g}: give the share of changed pixels, between 0 and 1 "
                          "(e.g. 0.01)")
    check_model_arguments(args)
    for name in ("max_frames", "queue_size", "max_saved", "window_hop"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "fps_limit", "stall_timeout"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if args.clip_frames < 0:
        raise ConfigError("--clip-frames must be 0 (single frames) or more")


def check_arguments(args: argparse.Namespace, entries: Sequence[NamedSource] | None = None) -> None:
    """Refuse bad values and combinations of options and sources (default: the --source options) before the model
    is loaded."""
    check_flags(args)
    if entries is None:
        entries = source_entries(args, None) if args.source else []
    if not entries:
        return
    kinds = {source_kind(e.source) for e in entries}
    if len(kinds) > 1:
        raise ConfigError("all sources must be cameras/videos or all sensor streams: one model takes one kind")
    kind = kinds.pop()
    if any(e.motion_gate is not None for e in entries) and kind != "frame":
        raise ConfigError("--motion-gate works with camera and video sources only")
    if args.window_hop is not None and kind != "window":
        raise ConfigError("--window-hop applies to sensor sources only")
    if args.save_detections and kind != "frame":
        raise ConfigError("--save-detections needs a camera or video source")


def check_model_arguments(args: argparse.Namespace) -> None:
    """The shared model arguments (`run` and `serve`), checked before anything is loaded."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")


def load_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Load and verify the package named by the shared model arguments."""
    from edge_runtime.api import load
    from edge_runtime.commands.package_cmds import trust_from_args

    trust = trust_from_args(args)
    if args.trust and not trust:  # an empty store: say so rather than "untrusted key"
        raise ConfigError(f"--trust {' '.join(args.trust)}: no public key (.pub) found there")
    return load(args.package, trust=trust, profile=args.profile, backend=args.backend, threads=args.threads,
                allow_unsigned=args.allow_unsigned)


def build_pipeline(args: argparse.Namespace, model, entries: Sequence[NamedSource],  # type: ignore[no-untyped-def]
                   keep_frames: bool = True) -> Pipeline:
    """Sources, motion gates and bounds around an already loaded model (``keep_frames``: sinks get each input
    frame; False when none needs it, so a preprocessed frame is freed at once)."""
    from edge_runtime.sources.motion import MotionGate

    spec = model.input_spec
    streaming = bool(model.manifest.state)
    window = window_spec_for(spec, args.window_hop, streaming) if spec.kind == "tensor" else None
    lanes: list[SourceLane] = []
    try:
        for e in entries:
            gate = MotionGate(e.motion_gate) if e.motion_gate is not None else None  # one per source
            lanes.append(SourceLane(e.name, open_source(e.source, e.options, window), gate))
    except BaseException:
        for lane in lanes:
            lane.source.close()
        raise
    specs = [e.source for e in entries]
    config = PipelineConfig(max_frames=args.max_frames, duration_s=args.duration, keep_frames=keep_frames,
                            batching=getattr(args, "batching", "auto"),
                            stall_timeout_s=stall_timeout(specs, getattr(args, "stall_timeout", None)))
    return Pipeline(model, lanes, (), config)


def stall_timeout(specs: str | Sequence[str], given: float | None) -> float | None:
    """The stall bound: as given, else the default when a source is live, none for files and stdin only."""
    if given is not None:
        return given
    for s in [specs] if isinstance(specs, str) else specs:
        s = s.strip()
        if s.isdigit() or s.startswith(("/dev/", "serial:", "udp://")) or "://" in s:
            return DEFAULT_STALL_S
    return None


def format_stats(stats: PipelineStats) -> str:
    s = stats
    line = (f"{s.model} {s.version}: {s.processed} processed of {s.captured} captured in {s.uptime_s:.1f} s "
            f"({s.fps:.1f}/s); dropped {s.dropped}, still {s.skipped_still}, bad lines {s.bad_lines}, "
            f"errors {s.errors}, sink errors {s.sink_errors}, reconnects {s.reconnects}")  # fmt: skip
    if s.batch.get("size", 1) > 1:
        b = s.batch
        line += f"\n  batching: {b['batches']} backend calls of up to {b['size']} frames ({b['reason']})"
    if len(s.sources) > 1:
        for name, c in s.sources.items():
            line += (f"\n  {name}: {c['processed']} processed of {c['captured']} captured ({c['fps']:.1f}/s), "
                     f"dropped {c['dropped']}, still {c['skipped_still']}, errors {c['errors']}, "
                     f"reconnects {c['reconnects']}, end-to-end p95 {c['end_to_end_p95_ms']:.1f} ms"
                     + (f"; FAILED: {c['fault']}" if c["fault"] else ""))  # fmt: skip
    return line


def run_pipeline(pipeline: Pipeline, summary: bool) -> int:
    """Run with signal handling; print the summary on stderr even when the source fails mid-run.

    Open the source first (``pipeline.open()``): a source that cannot be opened is a one-line error, no summary.
    """
    try:
        with stop_on_signals(pipeline):
            stats = pipeline.run()
    finally:
        if summary:
            print(format_stats(pipeline.stats()), file=sys.stderr)
            print(pipeline.latency.format(), file=sys.stderr)
    check_processed(stats)
    return 0


def check_processed(stats: PipelineStats) -> None:
    """A run that processed nothing because every sample was refused failed (InputError: one line, exit 2)."""
    if stats.processed == 0 and (stats.bad_lines or stats.errors):
        raise InputError(f"nothing processed: {stats.bad_lines} bad line(s) and {stats.errors} rejected sample(s) "
                         f"of {stats.captured} captured" + (f"; last error: {stats.last_error}" if stats.last_error
                                                              else ""))


def start_monitoring(device: DeviceConfig, model: Any, sources: str | Sequence[tuple[str, str]]) -> DeviceServices:
    """Start the device services for this run and say where their endpoint is (stderr)."""
    from edge_runtime.monitoring.service import source_info, start_services

    pairs = [("", sources)] if isinstance(sources, str) else list(sources)
    info = source_info(pairs[0][1], source_kind(pairs[0][1]))
    if len(pairs) > 1:  # health names every source (URL passwords removed)
        info["sources"] = {name: source_info(spec, source_kind(spec)) for name, spec in pairs}
    services = start_services(device, model.manifest, source=info)
    if services.http is not None:
        host = device.http.host if device.http else "127.0.0.1"
        print(f"edge-runtime: metrics on http://{host}:{services.http.port}/metrics, health on /health",
              file=sys.stderr, flush=True)
    return services


def format_services(services: DeviceServices) -> str:
    """One summary line about where the records went (after close)."""
    if services.outbox is None:
        return f"monitor: {services.monitor.frames} frames observed (no outbox)"
    fwd = services.forwarder
    sent = f"{fwd.counters['records_delivered']} delivered to the broker, " if fwd is not None else "no broker, "
    return f"outbox {services.outbox.path}: {sent}{services.left_in_outbox} waiting"


def run(args: argparse.Namespace) -> int:
    from edge_runtime.sinks import DetectionSnapshotSink, JsonLinesSink

    check_flags(args)
    device = device_config(args)  # a bad config file ends here, before the model is loaded
    entries = source_entries(args, device)
    check_arguments(args, entries)
    model = load_model(args)
    services = None
    sinks: list[Sink] = []
    pipeline: Pipeline | None = None
    running = False
    try:
        # frames reach the sinks only for those that use them: saved detections, monitoring (drift, samples)
        pipeline = build_pipeline(args, model, entries, keep_frames=bool(args.save_detections) or device is not None)
        sinks.append(JsonLinesSink(args.out, on_reader_gone=pipeline.stop))  # `run ... | head -3` ends the run
        if args.save_detections:
            sinks.append(DetectionSnapshotSink(args.save_detections, args.max_saved, clip_frames=args.clip_frames))
        for sink in sinks:
            pipeline.add_sink(sink)
        pipeline.open()  # a camera that cannot be opened ends here: one line, no summary, no services started
        if device is not None:
            services = start_monitoring(device, model, [(e.name, e.source) for e in entries])
            services.attach(pipeline)
        running = True  # from here on, Pipeline.run closes the source and the sinks
        return run_pipeline(pipeline, summary=not args.no_summary)
    finally:
        if not running:  # it never ran: release what was opened for it
            if pipeline is not None:
                pipeline.close_sources()
            _close_sinks(sinks)
        if services is not None:
            services.close()
            if not args.no_summary:
                print(format_services(services), file=sys.stderr)
        close = getattr(model, "close", None)
        if callable(close):
            close()


def _close_sinks(sinks: Sequence[Sink]) -> None:
    for sink in sinks:
        close = getattr(sink, "close", None)
        if callable(close):
            close()
