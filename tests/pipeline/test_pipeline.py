"""The pipeline on real packages and real sources: results, bounds, drops, failing sinks, swaps, bad input."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.errors import ConfigError, InputError
from edge_runtime.pipeline import FrameResult, Pipeline, PipelineConfig
from edge_runtime.sinks import JsonLinesSink
from edge_runtime.sources import DropPolicy, IterableSource, SourceOptions, open_source, window_spec_for
from edge_runtime.sources.motion import MotionGate
from tests.model_factory import factory_trust, sample_frames
from tests.sources.media import frame_number, numbered_frame, write_numbered_video, write_video


@pytest.fixture
def classifier(packages):
    with load(packages["classifier"], trust=factory_trust()) as model:
        yield model


def collect() -> tuple[list[FrameResult], callable]:
    got: list[FrameResult] = []
    return got, got.append


def test_video_file_every_frame_predicted_like_a_direct_call(classifier, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", sample_frames(20, hw=(48, 64)))
    got, sink = collect()
    out = io.StringIO()
    stats = Pipeline(classifier, open_source(str(video)), [sink, JsonLinesSink(out)]).run()
    assert stats.processed == stats.captured == 20 and stats.dropped == 0 and stats.errors == 0
    assert [r.index for r in got] == list(range(20))
    for r in got:  # the pipeline gives what the model gives on the same decoded frame
        direct = classifier.predict(r.frame)
        assert [c.index for c in r.prediction.classes] == [c.index for c in direct.classes]
        assert np.allclose([c.score for c in r.prediction.classes], [c.score for c in direct.classes], atol=1e-6)
        assert r.end_to_end_ms >= r.prediction.timings.inference_ms
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 20 and lines[3]["index"] == 3
    assert lines[3]["classes"][0]["label"] == got[3].prediction.top.label
    assert set(stats.to_dict()) >= {"processed", "dropped", "errors", "uptime_s"}


def test_bounds_by_frames_and_by_time(classifier, tmp_path: Path) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=30)
    stats = Pipeline(classifier, open_source(str(video)), config=PipelineConfig(max_frames=7)).run()
    assert stats.processed == 7
    paced = open_source(str(video), SourceOptions(fps_limit=20))  # 30 frames would take 1.5 s
    stats = Pipeline(classifier, paced, config=PipelineConfig(duration_s=0.4)).run()
    assert 1 <= stats.processed < 30


def test_slow_sink_drops_frames_and_keeps_the_newest(classifier, tmp_path: Path) -> None:
    """Given a source much faster than the consumer, newest-only drops (counted) and never loses the last frame."""
    video = write_numbered_video(tmp_path / "clip.avi", count=30)
    source = open_source(str(video), SourceOptions(drop_policy=DropPolicy.NEWEST_ONLY))
    got, keep = collect()

    def slow(result: FrameResult) -> None:
        keep(result)
        time.sleep(0.03)

    stats = Pipeline(classifier, source, [slow]).run()
    numbers = [frame_number(r.frame) for r in got]
    assert stats.dropped > 0
    assert stats.processed + stats.dropped == stats.captured == 30
    assert numbers == sorted(numbers) and numbers[-1] == 29


def test_a_failing_sink_does_not_stop_the_others(classifier, tmp_path: Path) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=10)
    got, good = collect()
    calls = []

    def flaky(result: FrameResult) -> None:
        calls.append(result.index)
        if result.index % 2 == 0:
            raise RuntimeError("disk full")

    stats = Pipeline(classifier, open_source(str(video)), [flaky, good]).run()
    assert len(got) == 10 and len(calls) == 10
    assert stats.sink_errors == 5 and stats.processed == 10


def test_stage_hook_gets_every_stage(classifier) -> None:
    frames = sample_frames(3)
    seen = []
    pipeline = Pipeline(classifier, IterableSource(frames))
    pipeline.add_stage_hook(seen.append)
    pipeline.run()
    assert len(seen) == 3
    assert set(seen[0]) == {"capture_wait", "preprocess", "inference", "postprocess", "sinks", "end_to_end"}
    summary = pipeline.latency.summary()
    assert summary["inference"]["count"] == 3 and summary["end_to_end"]["p99"] >= summary["inference"]["p50"]
    assert "end_to_end" in pipeline.latency.format()


def test_motion_gate_skips_still_frames(classifier) -> None:
    still, moved = numbered_frame(3), numbered_frame(20)
    frames = [still] * 6 + [moved] * 3
    pipeline = Pipeline(classifier, IterableSource(frames), motion_gate=MotionGate(0.05))
    stats = pipeline.run()
    assert stats.skipped_still == 5 + 2  # first frame and the change run; repeats are skipped
    assert stats.processed == 2


def test_sample_frames_the_model_rejects_are_counted_and_skipped(classifier) -> None:
    good = sample_frames(4)
    bad = np.zeros((48, 64, 5), np.uint8)  # five channels
    got, sink = collect()
    stats = Pipeline(classifier, IterableSource([good[0], bad, good[1], bad, good[2]]), [sink]).run()
    assert stats.errors == 2 and stats.processed == 3
    assert "5" in stats.last_error
    with pytest.raises(InputError):
        Pipeline(classifier, IterableSource([bad] * 10), config=PipelineConfig(max_consecutive_errors=4)).run()


def test_swap_model_between_frames(packages, classifier) -> None:
    frames = sample_frames(12)
    got, keep = collect()
    new = load(packages["classifier2"], trust=factory_trust())
    pipeline = Pipeline(classifier, IterableSource(frames))
    swapped = []

    def swap_after_five(result: FrameResult) -> None:
        keep(result)
        if len(got) == 5:
            swapped.append(pipeline.swap_model(new))

    pipeline.add_sink(swap_after_five)
    pipeline.run()
    assert swapped == [classifier]
    versions = [r.prediction.version for r in got]
    assert versions[:5] == ["1.0.0"] * 5 and versions[-1] == "2.0.0"
    assert versions == sorted(versions) and len(got) == 12
    for r in got[6:]:  # frames after the swap are predicted by the new model
        assert r.prediction.top.index == new.predict(r.frame).top.index
    with load(packages["sensor"], trust=factory_trust()) as sensor, pytest.raises(ConfigError, match="cannot swap"):
        pipeline.swap_model(sensor)
    new.close()


def test_source_kind_must_match_the_model(packages, classifier, tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("1,2,3\n")
    with load(packages["sensor"], trust=factory_trust()) as sensor:
        with pytest.raises(ConfigError, match="tensor input"):
            Pipeline(sensor, IterableSource([np.zeros((4, 4, 3), np.uint8)]))
        window = window_spec_for(sensor.input_spec)
        with pytest.raises(ConfigError, match="motion gate"):
            Pipeline(sensor, open_source(str(csv), window=window), motion_gate=MotionGate(0.1))
    with pytest.raises(ConfigError, match="image input"):
        Pipeline(classifier, open_source(str(csv), window=window))


def test_sensor_csv_windows_give_the_models_real_outputs(packages, tmp_path: Path) -> None:
    """The raw sensor model returns each window's per-channel mean: check it against numpy on the same data."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (40, 3)).round(4)
    csv = tmp_path / "imu.csv"
    rows = ["ax,ay,az"] + [",".join(map(str, r)) for r in data]
    rows.insert(10, "1,2")  # a bad line: counted, skipped
    csv.write_text("\n".join(rows) + "\n")
    got, sink = collect()
    with load(packages["sensor"], trust=factory_trust()) as model:
        window = window_spec_for(model.input_spec, hop=4)
        stats = Pipeline(model, open_source(str(csv), window=window), [sink]).run()
    assert stats.bad_lines == 1
    assert len(got) == (40 - 8) // 4 + 1
    for k, r in enumerate(got):
        expected = data[4 * k : 4 * k + 8].mean(axis=0)
        np.testing.assert_allclose(np.asarray(r.prediction.raw["mean"]).ravel(), expected, atol=1e-4)


def test_stateful_model_streams_samples_through_its_state(packages, tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    data = np.arange(10, dtype=np.float32).reshape(5, 2)
    csv.write_text("\n".join(f"{a},{b}" for a, b in data) + "\n")
    got, sink = collect()
    with load(packages["stateful"], trust=factory_trust()) as model:
        window = window_spec_for(model.input_spec, streaming=True)
        Pipeline(model, open_source(str(csv), window=window), [sink]).run()
    totals = [np.asarray(r.prediction.raw["total"]).ravel().tolist() for r in got]
    assert totals == np.cumsum(data, axis=0).tolist()


def test_stop_from_another_thread_ends_the_run(classifier) -> None:
    def endless():
        while True:
            yield numbered_frame(1)

    pipeline = Pipeline(classifier, IterableSource(endless()))
    threading.Timer(0.3, pipeline.stop).start()
    stats = pipeline.run()
    assert stats.processed > 0 and not stats.running


def test_json_lines_to_dev_null_close_cleanly(classifier, caplog) -> None:
    """Given --out /dev/null (or a FIFO), when the run ends, then closing the sink logs no failure: it cannot fsync."""
    sink = JsonLinesSink(os.devnull)
    stats = Pipeline(classifier, IterableSource([numbered_frame(i) for i in range(3)]), [sink]).run()
    assert stats.processed == 3 and sink.lines == 3
    assert "closing a sink failed" not in caplog.text
    sink.close()  # closed by the run; a second close is a no-op


def test_a_source_opened_but_never_run_is_released_on_close(packages) -> None:
    """Given a pipeline whose source was opened (the CLI opens it first), when the run never starts, then closing
    the source releases the input: here the UDP port can be bound again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with load(packages["sensor"], trust=factory_trust()) as model:
        window = window_spec_for(model.input_spec)
        pipeline = Pipeline(model, open_source(f"udp://127.0.0.1:{port}", window=window))
        pipeline.open()
        pipeline.open()  # idempotent
        pipeline.source.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))


def test_frame_order_is_checked_up_front() -> None:
    with pytest.raises(ValueError, match="frame_order"):
        PipelineConfig(frame_order="BRG")


def test_a_crashing_frame_iterator_fails_the_run_instead_of_ending_it(classifier) -> None:
    """Given an application's frame iterator that raises, when the pipeline runs, then run() raises that error
    (it used to look like a clean end of stream, the traceback printed only by the reader thread)."""

    def frames():
        yield numbered_frame(0)
        yield numbered_frame(1)
        raise RuntimeError("camera driver crashed")

    pipeline = Pipeline(classifier, IterableSource(frames()))
    with pytest.raises(RuntimeError, match="camera driver crashed"):
        pipeline.run()
    assert pipeline.stats().processed == 2
