"""Cameras and video through OpenCV: device index, V4L2 path, RTSP/HTTP(MJPEG) URL, video file.

The reader thread grabs frames as fast as the input gives them and hands them to the pipeline through the
SampleQueue, whose drop policy decides what happens when inference is slower. A live input that drops is reopened
with bounded exponential backoff; a file ends cleanly at its last frame.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Literal

import cv2
import numpy as np

from edge_runtime.errors import SourceError
from edge_runtime.sources.base import DropPolicy, ReconnectPolicy, ThreadedSource

log = logging.getLogger(__name__)

VideoKind = Literal["file", "device", "stream"]
_STREAM_TIMEOUT_MS = 5000

# FFmpeg prints its own lines ("[tcp @ 0x...] Connection refused") when a stream cannot be opened; our SourceError
# says it in one line. Read by OpenCV when it first uses FFmpeg; set OPENCV_FFMPEG_LOGLEVEL yourself to debug.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
try:  # OpenCV's own warnings ("can't open camera by index") would duplicate our one-line errors
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:  # pragma: no cover - very old OpenCV
    pass


class VideoSource(ThreadedSource):
    """Frames (BGR uint8) from ``cv2.VideoCapture``."""

    kind = "frame"
    # a stream's open or read blocks up to its timeout: wait that long, so the process never exits while OpenCV's
    # FFmpeg thread is inside a call (it aborts with "terminate called without an active exception")
    close_timeout_s = _STREAM_TIMEOUT_MS / 1000 + 2.0

    def __init__(
        self,
        target: str | int,
        video_kind: VideoKind,
        policy: DropPolicy,
        queue_size: int = 4,
        reconnect: ReconnectPolicy | None = None,
        fps_limit: float | None = None,
        loop: bool = False,
    ) -> None:
        super().__init__(str(target), policy, queue_size)
        self.loop = loop and video_kind == "file"
        self.target = target
        self.video_kind = video_kind
        self.reconnect = reconnect or ReconnectPolicy()
        self.fps_limit = fps_limit
        self._cap: cv2.VideoCapture | None = None

    def _capture(self) -> cv2.VideoCapture:
        if self.video_kind == "stream":
            t = _STREAM_TIMEOUT_MS
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, t, cv2.CAP_PROP_READ_TIMEOUT_MSEC, t]
            return cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        if self.video_kind == "device" and isinstance(self.target, str):
            return cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        return cv2.VideoCapture(self.target)

    def _try_open(self) -> bool:
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            return False
        self._cap = cap
        return True

    def _open(self) -> None:
        if not self._try_open():
            what = {"file": "video file", "device": "camera", "stream": "stream"}[self.video_kind]
            raise SourceError(f"cannot open {what} {self.name}")
        log.info("opened %s (%s)", self.name, self.video_kind)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _keeps_trying(self) -> bool:
        return self.video_kind != "file" and not self.reconnect.give_up

    def _read(self) -> np.ndarray | None:
        if self._cap is None:  # not open (yet): a live input reconnects
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None or frame.size == 0:
            return None
        return frame

    def _loop(self) -> None:
        period = 1.0 / self.fps_limit if self.fps_limit else 0.0
        next_due = time.monotonic()
        while not self._stop.is_set():
            frame = self._read()
            if frame is None:
                if self.loop and self.counters.captured and not self._stop.is_set() and self._rewind():
                    continue  # a looped file starts over (a demo or test input that never ends)
                if self.video_kind == "file" or self._stop.is_set():
                    return  # end of file ends cleanly
                if not self._reconnect():
                    return
                continue
            if period:
                next_due += period
                if self._wait(max(0.0, next_due - time.monotonic())):
                    return
            if not self._emit(frame):
                return

    def _rewind(self) -> bool:
        self._release()
        return self._try_open()

    def _reconnect(self) -> bool:
        """Reopen a live input that dropped; False if stopped, SourceError once the bound is reached."""
        return self._reconnect_with(self.reconnect, self._try_open)
