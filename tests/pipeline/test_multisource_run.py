"""`edge-runtime run` with several --source options: one process, one model, per-source results and failures."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.pipeline import Pipeline, SourceLane
from edge_runtime.sources import IterableSource
from tests.model_factory import factory_trust, trust_args
from tests.sources.media import MjpegServer, frame_number, numbered_frame, write_numbered_video

CLI = [sys.executable, "-m", "edge_runtime.cli"]


@pytest.fixture(scope="module")
def classifier(packages):
    with load(packages["classifier"], trust=factory_trust()) as model:
        yield model


def _results(stdout: str) -> dict[str, list[dict]]:
    by_source: dict[str, list[dict]] = {}
    for line in stdout.splitlines():
        rec = json.loads(line)
        by_source.setdefault(rec["source"], []).append(rec)
    return by_source


def test_two_video_files_give_every_frame_labelled_by_source(packages, tmp_path: Path) -> None:
    """Given two clips of different lengths, when one run serves both, then every frame of each comes out once,
    in order, carrying its source's name, and the summary has a line per source."""
    a = write_numbered_video(tmp_path / "a.avi", count=12)
    b = write_numbered_video(tmp_path / "b.avi", count=7)
    proc = subprocess.run([*CLI, "run", "--package", str(packages["classifier"]), *trust_args(),
                           "--source", f"left={a}", "--source", str(b)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = _results(proc.stdout)
    assert sorted(got) == ["b.avi", "left"]
    assert [r["index"] for r in got["left"]] == list(range(12))
    assert [r["index"] for r in got["b.avi"]] == list(range(7))
    assert "19 processed of 19 captured" in proc.stderr
    assert "left: 12 processed" in proc.stderr and "b.avi: 7 processed" in proc.stderr


def test_two_sources_with_the_same_name_are_one_line_and_exit_2(packages, tmp_path: Path) -> None:
    a = write_numbered_video(tmp_path / "a.avi", count=3)
    proc = subprocess.run([*CLI, "run", "--package", str(packages["classifier"]), *trust_args(),
                           "--source", str(a), "--source", str(a)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "name each one, --source NAME=SPEC" in proc.stderr and "Traceback" not in proc.stderr


def test_a_camera_that_goes_away_is_reported_while_the_other_source_goes_on(packages, tmp_path: Path) -> None:
    """Given an MJPEG camera and a clip played at 15 fps, when the camera's server stops mid-run, then the clip's
    frames keep coming to its end, the camera is reported failed by name, and the run exits 2 at the end."""
    clip = write_numbered_video(tmp_path / "clip.avi", count=60)
    server = MjpegServer(fps=30).start()
    proc = subprocess.Popen([*CLI, "run", "--package", str(packages["classifier"]), *trust_args(),
                             "--source", f"cam={server.url}", "--source", f"clip={clip}", "--fps-limit", "15",
                             "--stall-timeout", "1.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while True:  # wait until both sources produce
            lines.append(proc.stdout.readline())
            seen = {json.loads(line)["source"] for line in lines if line}
            if seen == {"cam", "clip"}:
                break
        server.stop()
        clip_at_stop = sum(json.loads(line)["source"] == "clip" for line in lines)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    got = _results("".join(lines) + out)
    assert proc.returncode == 2, err
    assert [r["index"] for r in got["clip"]] == list(range(60))  # every clip frame, also after the camera went
    assert clip_at_stop < 60
    assert "cam" in err.splitlines()[-1] and "1 of 2 sources failed" in err and "Traceback" not in err
    assert "clip: 60 processed" in err and "FAILED" in err


def test_a_fast_source_does_not_starve_a_slow_one(classifier) -> None:
    """Given an endless source that is always ready and one that gives a frame now and then, when both share the
    model, then each of the slow source's frames is processed (round-robin), not crowded out."""
    stop = threading.Event()

    def endless():
        while not stop.is_set():
            yield numbered_frame(1)

    def slow():
        for i in range(5):
            stop.wait(0.05)
            yield numbered_frame(10 + i)

    got: list[tuple[str, int]] = []
    lanes = [SourceLane("fast", IterableSource(endless())),
             SourceLane("slow", IterableSource(slow()))]
    pipeline = Pipeline(classifier, lanes, [lambda r: got.append((r.source, frame_number(r.frame)))])
    watcher = threading.Thread(target=lambda: (_wait_for(lambda: sum(s == "slow" for s, _ in got) == 5),
                                               pipeline.stop()))
    watcher.start()
    stats = pipeline.run()
    stop.set()
    watcher.join(timeout=30)
    assert [n for s, n in got if s == "slow"] == [10, 11, 12, 13, 14]
    assert stats.sources["fast"]["processed"] > 0 and stats.sources["slow"]["processed"] == 5


def _wait_for(cond, timeout: float = 60.0) -> None:
    done = threading.Event()
    while not cond() and not done.wait(0.02):
        timeout -= 0.02
        if timeout <= 0:
            return


def test_one_model_swap_reaches_every_source(packages, classifier) -> None:
    """Given two sources on one pipeline, when the model is swapped mid-run, then results of both sources after
    the swap come from the new model (one host, one model)."""
    frames = [numbered_frame(i % 8) for i in range(40)]
    got: list[tuple[str, str]] = []
    lanes = [SourceLane("a", IterableSource(iter(frames))), SourceLane("b", IterableSource(iter(frames)))]
    with load(packages["classifier2"], trust=factory_trust()) as new:
        pipeline = Pipeline(classifier, lanes)

        def sink(r) -> None:
            got.append((r.source, r.prediction.version))
            if len(got) == 10:
                pipeline.swap_model(new)

        pipeline.add_sink(sink)
        stats = pipeline.run()
    assert stats.processed == 80
    after = got[10:]
    assert {s for s, _ in after} == {"a", "b"} and {v for _, v in after} == {"2.0.0"}
    assert np.all([v == "2.0.0" for _, v in after])


def test_metrics_count_each_source_under_its_name(packages) -> None:
    """Given two cameras on one run with --http, when /metrics is scraped, then the source counters have one
    sample per source name."""
    import re
    import urllib.request

    servers = [MjpegServer(fps=20).start() for _ in range(2)]
    proc = subprocess.Popen([*CLI, "run", "--package", str(packages["classifier"]), *trust_args(), "--http", "0",
                             "--source", f"door={servers[0].url}", "--source", f"yard={servers[1].url}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "the run ended before serving /metrics"
            found = re.search(r"http://[\d.]+:(\d+)/metrics", line)
            port = int(found.group(1)) if found else None
        seen: set[str] = set()
        while seen != {"door", "yard"}:  # both sources produce
            seen.add(json.loads(proc.stdout.readline())["source"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
        proc.terminate()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in servers:
            s.stop()
    captured = dict(re.findall(r'edge_source_frames_captured_total\{source="(\w+)"\} (\S+)', text))
    assert set(captured) == {"door", "yard"} and all(float(v) > 0 for v in captured.values()), text[:2000]


def test_run_config_sources_label_results_and_metric_records_per_source(packages, tmp_path: Path) -> None:
    """Given a device config listing two sources (the agent's schema, one with its own queue size), when `run
    --config` serves them, then results carry each source's name and the outbox holds one metric record per
    source, whose frames are that source's; --source beside sources: is refused in one line."""
    from edge_runtime.sync.outbox import Outbox, OutboxConfig
    from tests.monitoring.schemas import validate

    a = write_numbered_video(tmp_path / "a.avi", count=9)
    b = write_numbered_video(tmp_path / "b.avi", count=5)
    cfg = tmp_path / "device.yaml"
    cfg.write_text(f"device_id: cam-2\noutbox: {{path: outbox.db}}\nmonitor: {{period_s: 3600, system: false}}\n"
                   f"sources:\n  - {{name: door, source: '{a}'}}\n"
                   f"  - {{name: yard, source: '{b}', options: {{queue_size: 2}}}}\n")
    base = [*CLI, "run", "--package", str(packages["classifier"]), *trust_args(), "--config", str(cfg)]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = _results(proc.stdout)
    assert {k: [r["index"] for r in v] for k, v in got.items()} == {"door": list(range(9)), "yard": list(range(5))}
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    try:
        docs = [json.loads(r.payload) for r in outbox.pending(0, 100) if r.kind == "metrics"]
    finally:
        outbox.close()
    for d in docs:
        validate(d, "metrics.json")
    assert {d["source"]: d["frames"] for d in docs} == {"door": 9, "yard": 5}
    assert {d["source"]: d["pipeline"]["processed"] for d in docs} == {"door": 9, "yard": 5}
    both = subprocess.run([*base, "--source", str(a)], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr
