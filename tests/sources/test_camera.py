"""Camera and video sources against real files and a real MJPEG HTTP stream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError, SourceError
from edge_runtime.sources import END, DropPolicy, ReconnectPolicy, SourceOptions, ThreadedSource, open_source
from tests.sources.media import MjpegServer, frame_number, write_numbered_video


def drain(source, delay: float = 0.0, limit: int = 1000) -> list:
    out = []
    while len(out) < limit:
        item = source.get(timeout=5.0)
        assert item is not None, "source stalled"
        if item is END:
            break
        out.append(item)
        time.sleep(delay)
    return out


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) for ``cond()``: the tests wait on what the source did, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_video_file_block_policy_yields_every_frame_in_order(tmp_path: Path) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=30)
    source = open_source(str(video))
    source.start()
    try:
        samples = drain(source, delay=0.002)
    finally:
        source.close()
    assert [frame_number(s.data) for s in samples] == list(range(30))
    assert [s.index for s in samples] == list(range(30))
    assert source.counters.dropped == 0
    assert samples[0].data.shape == (48, 64, 3)


def test_newest_only_drops_and_keeps_the_latest_frame(tmp_path: Path) -> None:
    """Given a consumer slower than the reader, when newest-only is used, then drops are counted and the last frame
    seen is the newest one."""
    video = write_numbered_video(tmp_path / "clip.avi", count=30)
    source = open_source(str(video), SourceOptions(drop_policy=DropPolicy.NEWEST_ONLY))
    source.start()
    try:
        samples = drain(source, delay=0.05)
    finally:
        source.close()
    numbers = [frame_number(s.data) for s in samples]
    assert source.counters.captured == 30
    assert source.counters.dropped > 0
    assert len(samples) + source.counters.dropped == 30
    assert numbers == sorted(numbers) and numbers[-1] == 29


def test_drop_oldest_keeps_a_bounded_queue(tmp_path: Path) -> None:
    video = write_numbered_video(tmp_path / "clip.avi", count=30)
    source = open_source(str(video), SourceOptions(drop_policy=DropPolicy.DROP_OLDEST, queue_size=3))
    source.start()
    try:
        wait_until(lambda: source.counters.captured == 30 and source.counters.dropped == 27)  # reader at the end
        samples = drain(source)
    finally:
        source.close()
    assert [frame_number(s.data) for s in samples] == [27, 28, 29]
    assert source.counters.dropped == 27


def test_missing_file_and_unopenable_camera_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.mp4"))
    camera = open_source("/dev/video99")
    with pytest.raises(SourceError, match="cannot open camera /dev/video99"):
        camera.start()
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(SourceError, match="cannot open video file"):
        open_source(str(not_video)).start()
    with pytest.raises(ConfigError, match="unsupported source scheme"):
        open_source("ftp://example.org/cam")


def test_mjpeg_stream_reconnects_after_the_server_restarts() -> None:
    """Given an MJPEG camera that goes away and comes back, the source reconnects (counted) and frames resume."""
    server = MjpegServer(fps=50).start()
    options = SourceOptions(reconnect=ReconnectPolicy(initial_delay_s=0.1, max_delay_s=0.3, max_attempts=30))
    source = open_source(server.url, options)
    source.start()
    try:
        first = drain(source, limit=10)
        assert len(first) == 10 and first[0].data.shape == (48, 64, 3)
        server.stop()
        wait_until(lambda: source.counters.reconnect_attempts >= 1)  # camera gone: the source tries to reconnect
        attempts_while_down = source.counters.reconnect_attempts
        server.start()
        resumed = drain(source, limit=10)
    finally:
        source.close()
        server.stop()
    assert attempts_while_down >= 1
    assert source.counters.reconnects >= 1
    assert len(resumed) == 10
    assert resumed[0].index > first[-1].index


def test_stream_that_never_comes_back_ends_with_source_error() -> None:
    server = MjpegServer(fps=50).start()
    options = SourceOptions(reconnect=ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.1, max_attempts=3))
    source = open_source(server.url, options)
    source.start()
    try:
        assert len(drain(source, limit=3)) == 3
        server.stop()
        with pytest.raises(SourceError, match="after 3 reconnect attempt"):
            drain(source)
    finally:
        source.close()
    assert source.counters.reconnect_attempts == 3


class _OpensButNeverReads(ThreadedSource):
    """An input that always reopens and never gives a frame: a UDP-only RTSP server seen by OpenCV."""

    def __init__(self, policy: ReconnectPolicy) -> None:
        super().__init__("silent-stream", DropPolicy.NEWEST_ONLY)
        self.policy, self.opens = policy, 0

    def _open(self) -> None:
        self.opens += 1

    def _loop(self) -> None:
        while self._reconnect_with(self.policy, lambda: bool(self._open() or True)):
            pass


def test_reopens_that_yield_no_frame_count_toward_the_reconnect_bound() -> None:
    """Given a stream that opens every time but never yields a frame, the attempt bound still applies: each
    reopen is no recovery until a frame follows (before: every reopen reset the count, forever)."""
    source = _OpensButNeverReads(ReconnectPolicy(initial_delay_s=0.01, max_delay_s=0.02, max_attempts=4))
    source.start()
    try:
        with pytest.raises(SourceError, match="after 4 reconnect attempt.*4 reopened without a sample"):
            drain(source)
    finally:
        source.close()
    assert source.opens == 5 and source.counters.captured == 0


def test_a_source_that_never_gives_up_reports_its_fault() -> None:
    source = _OpensButNeverReads(ReconnectPolicy(initial_delay_s=0.01, max_delay_s=0.02, max_attempts=2,
                                                 give_up=False))
    source.start()
    try:
        wait_until(lambda: source.counters.reconnect_attempts >= 5)
        assert source.get(timeout=0.05) is None  # still running, nothing yielded
        assert "yields nothing; reconnecting" in (source.counters.fault or "")
        assert source.counters.stalled_s() > 0
    finally:
        source.close()
