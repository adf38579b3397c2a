"""Drift through the Monitor on real photographs at 30 fps capture times: a stationary camera learns its own
baseline and stays quiet, a shift is flagged within seconds, the baseline survives a restart and is relearned for
a new model; against the package reference, in-distribution content is quiet and an over-exposed camera is not."""

from __future__ import annotations

import json

import cv2
import numpy as np

from edge_runtime.monitoring.config import DriftConfig, MonitorConfig
from edge_runtime.monitoring.drift import threshold
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.monitoring.reference import Reference
from tests.monitoring.helpers import frame_result, frames, manifest_with_reference, photos
from tests.monitoring.schemas import validate

FPS = 30.0


def _scene(n: int, seed: int, gain: float = 1.0, blur: int = 0) -> list[np.ndarray]:
    """A fixed camera on one scene: the same view with sensor noise (sigma 2) and a slow 2% exposure wander."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(photos()[0], (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = []
    for i in range(n):
        f = base * gain * (1.0 + 0.02 * np.sin(i / 400.0)) + rng.normal(0, 2.0, base.shape)
        f = np.clip(f, 0, 255).astype(np.uint8)
        out.append(cv2.GaussianBlur(f, (0, 0), blur) if blur else f)
    return out


def _feed(m: Monitor, stream: list[np.ndarray], start: int, repeat: int = 1) -> int:
    i = start
    for _ in range(repeat):
        for f in stream:
            m(frame_result(i, f, confidence=0.8 + 0.01 * (i % 5), top=1, fps=FPS))
            i += 1
    return i


def _events(m: Monitor, kind: str) -> list[dict]:
    m.flush()
    return [d for k, d in m.recent if k == "event" and d["type"] == kind]


def _monitor(tmp_path, reference: str = "device", version: str = "1.0.0", **drift) -> Monitor:
    manifest = manifest_with_reference(seed=0).model_copy(update={"version": version})
    cfg = MonitorConfig(system=False, period_s=3600, drift=DriftConfig(reference=reference, **drift))
    return Monitor(cfg, manifest, baseline_file=tmp_path / "baseline.json")


def test_threshold_is_bonferroni_adjusted_for_the_features_scored():
    assert abs(threshold(1, 0.0027) - 3.0) < 0.01
    assert threshold(6, 0.0027) > threshold(3, 0.0027) > threshold(1, 0.0027)


def test_stationary_camera_learns_its_baseline_stays_quiet_and_flags_a_shift_within_seconds(tmp_path):
    # given a fixed camera on one scene: 60 s of warm-up, then 4 more minutes of the same scene
    m = _monitor(tmp_path)
    scene = _scene(600, seed=1)
    i = _feed(m, scene, 0, repeat=15)
    # then the baseline is learned on the device (and kept on disk), and no drift is raised on normal content
    learned = _events(m, "drift_baseline_learned")
    assert len(learned) == 1 and learned[0]["reference"]["kind"] == "device"
    validate(json.loads((tmp_path / "baseline.json").read_text()), "drift-reference.json")
    assert _events(m, "drift") == [] and m.drift.last and not any(m.drift.state.values())
    # when the camera is blurred (defocus), drift is raised within 10 s of video, naming its reference
    onset = i
    i = _feed(m, _scene(300, seed=2, blur=3), i)
    drift = _events(m, "drift")
    assert drift, m.drift.snapshot()
    assert {e["reference"]["kind"] for e in drift} == {"device"} and "sharpness" in {e["feature"] for e in drift}
    for e in drift:
        validate(e, "event.json")
    first = min(e["scores"]["samples"] for e in drift)
    assert first >= 1 and m.frames - onset <= 10 * FPS
    # and it clears once the scene is back
    _feed(m, scene, i)
    assert {e["feature"] for e in _events(m, "drift_cleared")} == {e["feature"] for e in drift}
    record = m.report()
    validate(record, "metrics.json")
    assert record["drift"]["reference"]["kind"] == "device" and record["drift"]["predictions"]["samples"] > 0
    m.close()


def test_device_baseline_survives_a_restart_and_is_relearned_for_another_model(tmp_path):
    m = _monitor(tmp_path)
    _feed(m, _scene(600, seed=1), 0, repeat=4)
    assert m.drift.reference is not None
    m.close()
    # given a restart of the same model: the baseline is reloaded, no warm-up needed
    again = _monitor(tmp_path)
    assert again.drift.reference is not None and again.drift.reference_kind == "device"
    assert again.drift.reference.samples == m.drift.reference.samples
    again.close()
    # given a new model version: the old baseline does not apply, a new warm-up starts
    other = _monitor(tmp_path, version="2.0.0")
    assert other.drift.reference is None and other.drift.reference_kind == "device-warming-up"
    other.close()


def test_package_reference_is_quiet_on_its_own_content_and_flags_an_over_exposed_camera(tmp_path):
    # given the package reference (photos), in-distribution crops of the same photos
    m = _monitor(tmp_path, reference="package")
    assert isinstance(m.drift.reference, Reference) and m.drift.reference.kind == "package"
    i = _feed(m, list(frames(3000, seed=123)), 0)
    assert _events(m, "drift") == [] and m.drift.last
    # when the camera is washed out (over-exposed beyond anything in the reference; a merely darker scene is
    # still inside the spread of a reference made of varied photos, and is not flagged against it)
    _feed(m, list(frames(600, seed=8, gain=2.5, offset=60)), i)
    drift = _events(m, "drift")
    assert "brightness" in {e["feature"] for e in drift}
    assert {e["reference"]["kind"] for e in drift} == {"package"}
    m.close()
