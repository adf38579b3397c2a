"""Real media for source tests: video files written with cv2.VideoWriter and an MJPEG HTTP stream server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

LEVEL_STEP = 8  # frame i is a flat grey of i * LEVEL_STEP, so its index survives JPEG compression


def numbered_frame(i: int, hw: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.full((*hw, 3), (i * LEVEL_STEP) % 256, dtype=np.uint8)


def frame_number(frame: np.ndarray) -> int:
    """Inverse of numbered_frame (for up to 32 frames)."""
    return int(round(float(frame.mean()) / LEVEL_STEP))


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """An MJPG .avi with these BGR frames."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_numbered_video(path: Path, count: int = 30, hw: tuple[int, int] = (48, 64)) -> Path:
    return write_video(path, [numbered_frame(i, hw) for i in range(count)])


class MjpegServer:
    """multipart/x-mixed-replace MJPEG over HTTP on 127.0.0.1, like an IP camera; stop() and restart() on the
    same port simulate a camera that drops off the network and comes back. ``stall_after``: once this many frames
    are served, every connection (new ones too) stays open and silent, like a camera that hangs."""

    def __init__(self, fps: float = 50.0, hw: tuple[int, int] = (48, 64), stall_after: int | None = None,
                 frames: Callable[[int], np.ndarray] | None = None) -> None:
        """``frames``: the i-th frame to serve (default: numbered_frame(i % 32))."""
        self.fps, self.hw, self.stall_after = fps, hw, stall_after
        self.frames = frames or (lambda i: numbered_frame(i % 32, hw))
        self.port = 0
        self.served = 0
        self._server: ThreadingHTTPServer | None = None
        self._live = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while owner._live.is_set():
                        if owner.stall_after is not None and owner.served >= owner.stall_after:
                            time.sleep(0.05)
                            continue
                        ok, buf = cv2.imencode(".jpg", owner.frames(i))
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(buf)
                        self.wfile.write(head + buf.tobytes() + b"\r\n")
                        owner.served += 1
                        i += 1
                        time.sleep(1.0 / owner.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> MjpegServer:
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._live.set()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._live.clear()  # open streams end
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()
