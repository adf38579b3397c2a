"""Motion gate: skip inference while a camera's scene is still, as NVRs do to save power.

Each frame is shrunk to a small grey thumbnail and blurred; the share of pixels that changed by more than
``pixel_delta`` grey levels since the last frame is the motion score. Below ``threshold`` the frame is skipped.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.errors import ConfigError

_THUMB = (64, 48)


class MotionGate:
    """``should_infer(frame)`` is False while the scene is still; ``skipped`` counts those frames."""

    def __init__(self, threshold: float, pixel_delta: int = 20, max_skip: int = 0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"motion threshold is a share of changed pixels in (0, 1), got {threshold}")
        self.threshold = threshold
        self.pixel_delta = pixel_delta
        self.max_skip = max_skip  # 0: no limit; n: infer at least every n+1 frames even if still
        self.skipped = 0
        self.last_score = 1.0
        self._prev: np.ndarray | None = None
        self._run_of_skips = 0

    def score(self, frame: np.ndarray) -> float:
        """Share of thumbnail pixels that changed since the previous frame (1.0 for the first frame)."""
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame[:, :, :3], cv2.COLOR_BGR2GRAY)
        thumb = cv2.GaussianBlur(cv2.resize(grey, _THUMB, interpolation=cv2.INTER_AREA), (5, 5), 0)
        prev, self._prev = self._prev, thumb
        if prev is None:
            return 1.0
        changed = cv2.absdiff(thumb, prev) > self.pixel_delta
        return float(np.count_nonzero(changed)) / changed.size

    def should_infer(self, frame: np.ndarray) -> bool:
        self.last_score = self.score(frame)
        still = self.last_score < self.threshold
        if still and not (self.max_skip and self._run_of_skips >= self.max_skip):
            self.skipped += 1
            self._run_of_skips += 1
            return False
        self._run_of_skips = 0
        return True
