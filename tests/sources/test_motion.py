"""Motion gate on real frames: a still scene is skipped (counted), movement is not."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from edge_runtime.errors import ConfigError
from edge_runtime.sources.motion import MotionGate


def test_still_scene_is_skipped_and_motion_passes() -> None:
    scene = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # 512x512 BGR
    rng = np.random.default_rng(0)
    gate = MotionGate(threshold=0.02)
    assert gate.should_infer(scene)  # first frame always runs
    for _ in range(5):  # sensor noise only
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-3, 4, scene.shape), 0, 255).astype(np.uint8)
        assert not gate.should_infer(noisy)
    moved = np.roll(scene, 60, axis=1)  # the subject moves
    assert gate.should_infer(moved)
    assert gate.last_score > 0.02
    assert gate.skipped == 5


def test_max_skip_forces_a_periodic_inference() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    gate = MotionGate(threshold=0.5, max_skip=2)
    decisions = [gate.should_infer(frame) for _ in range(7)]
    assert decisions == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_threshold_is_validated(bad: float) -> None:
    with pytest.raises(ConfigError):
        MotionGate(threshold=bad)
