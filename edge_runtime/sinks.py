"""Sinks: where results go. A sink is any ``Callable[[FrameResult], None]``; the pipeline guards each one.

- JsonLinesSink: one JSON object per result to stdout or a file, flushed per line (a crash loses at most a line).
- DetectionSnapshotSink: annotated JPEG frames (boxes drawn), or short MJPG clips, for results with detections;
  bounded in number so a busy scene cannot fill the disk.
- callback_sink: wraps an application function (any callable works; this one adds a name for logs).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.pipeline import FrameResult
from edge_runtime.results import Prediction

log = logging.getLogger(__name__)


def result_record(result: FrameResult) -> dict[str, Any]:
    """The JSON form of one result: sample index and time, the prediction, latencies."""
    record: dict[str, Any] = {"source": result.source, "index": result.index, "timestamp": round(result.timestamp, 6)}
    record.update(result.prediction.to_dict())
    record["latency_ms"] = {
        "capture_wait": round(result.capture_wait_ms, 3),
        "end_to_end": round(result.end_to_end_ms, 3),
    }
    return record


class JsonLinesSink:
    """Writes one JSON line per result to a stream or a file (``None`` or ``'-'``: stdout), flushed per line.

    When the reader goes away (``run ... | head -1``: a broken pipe) the sink stops writing and calls
    ``on_reader_gone`` once (the CLI stops the run there) instead of failing on every later result.
    """

    def __init__(self, target: str | Path | IO[str] | None = None, append: bool = False,
                 on_reader_gone: Callable[[], None] | None = None) -> None:  # fmt: skip
        self._owned = False
        self._on_reader_gone = on_reader_gone
        self.reader_gone = False
        if target is None or target == "-":
            self._stream: IO[str] = sys.stdout
        elif isinstance(target, str | Path):
            path = Path(target)
            if path.parent and not path.parent.is_dir():
                raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
            try:
                self._stream = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as exc:  # a directory, no permission, a read-only file system
                raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
            self._owned = True
        else:
            self._stream = target
        self.lines = 0

    def __call__(self, result: FrameResult) -> None:
        if self.reader_gone:
            return
        try:
            self._stream.write(json.dumps(result_record(result), separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()
            return
        self.lines += 1

    def _reader_gone(self) -> None:
        self.reader_gone = True
        log.warning("the reader of the results went away (broken pipe); no more results are written")
        try:  # what is still buffered can never be written: point the descriptor at /dev/null so that
            # flushing at exit does not fail again ("Exception ignored ... BrokenPipeError")
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        if self._on_reader_gone is not None:
            self._on_reader_gone()

    def close(self) -> None:
        if self._owned and not self._stream.closed:
            self._stream.flush()
            fd = self._stream.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/null, a FIFO or a tty cannot be fsynced (EINVAL)
                os.fsync(fd)
            self._stream.close()


def draw_prediction(frame: np.ndarray, prediction: Prediction) -> np.ndarray:
    """A copy of ``frame`` with detection boxes, scores and keypoints (or the top class) drawn on it."""
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    for det in prediction.detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 2)
        text = f"{det.label or det.class_index} {det.score:.2f}"
        cv2.putText(out, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
        for x, y in det.keypoints:
            cv2.circle(out, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1)
    if prediction.top is not None:
        top = prediction.top
        cv2.putText(out, f"{top.label or top.index} {top.score:.2f}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return out


class DetectionSnapshotSink:
    """Saves annotated frames (``clip_frames=0``) or short clips of results that have detections.

    At most ``max_files`` files are written; later detections are counted in ``not_saved``. Snapshots are written
    atomically; a clip is written to a temp name and renamed when complete.
    """

    def __init__(self, out_dir: str | Path, max_files: int = 100, min_score: float = 0.0, clip_frames: int = 0,
                 clip_fps: float = 10.0) -> None:  # fmt: skip
        if max_files < 1 or clip_frames < 0:
            raise ConfigError("max_files must be >= 1 and clip_frames >= 0")
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, no permission
            raise ConfigError(f"cannot save detections in {self.out_dir}: {exc.strerror or exc}") from None
        self.max_files, self.min_score = max_files, min_score
        self.clip_frames, self.clip_fps = clip_frames, clip_fps
        self.saved: list[Path] = []
        self.not_saved = 0
        self._clip: tuple[cv2.VideoWriter, Path, Path] | None = None
        self._clip_left = 0

    def _hit(self, result: FrameResult) -> bool:
        return result.frame is not None and result.frame.ndim in (2, 3) and any(
            d.score >= self.min_score for d in result.prediction.detections
        )

    def __call__(self, result: FrameResult) -> None:
        if self._clip is not None:
            self._add_to_clip(result)
            return
        if not self._hit(result):
            return
        if len(self.saved) >= self.max_files:
            self.not_saved += 1
            return
        assert result.frame is not None
        image = draw_prediction(result.frame, result.prediction)
        if self.clip_frames:
            self._start_clip(result.index, image)
            return
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError("JPEG encoding failed")
        path = self.out_dir / f"detection-{result.index:08d}.jpg"
        atomic_write_bytes(path, buf.tobytes())
        self.saved.append(path)

    def _start_clip(self, index: int, image: np.ndarray) -> None:
        final = self.out_dir / f"clip-{index:08d}.avi"
        tmp = self.out_dir / f".clip-{index:08d}.partial.avi"
        h, w = image.shape[:2]
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), self.clip_fps, (w, h))
        if not writer.isOpened():
            raise OSError(f"cannot write clip {tmp}")
        self._clip, self._clip_size = (writer, tmp, final), (w, h)
        self._clip_left = self.clip_frames
        self._write_clip_frame(image)

    def _add_to_clip(self, result: FrameResult) -> None:
        if result.frame is None:
            return
        image = draw_prediction(result.frame, result.prediction)
        if (image.shape[1], image.shape[0]) != self._clip_size:
            image = cv2.resize(image, self._clip_size)
        self._write_clip_frame(image)

    def _write_clip_frame(self, image: np.ndarray) -> None:
        assert self._clip is not None
        self._clip[0].write(image)
        self._clip_left -= 1
        if self._clip_left <= 0:
            self._finish_clip()

    def _finish_clip(self) -> None:
        if self._clip is None:
            return
        writer, tmp, final = self._clip
        self._clip = None
        writer.release()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.saved.append(final)

    def close(self) -> None:
        self._finish_clip()


def callback_sink(fn: Callable[[FrameResult], None], name: str | None = None) -> Callable[[FrameResult], None]:
    """Wrap an application callback as a named sink (the name shows in failure logs)."""

    def sink(result: FrameResult) -> None:
        fn(result)

    sink.__name__ = sink.__qualname__ = name or getattr(fn, "__name__", "callback")
    return sink
