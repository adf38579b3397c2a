"""Drift scoring: fires on shifted input, stays quiet on in-distribution input."""

from __future__ import annotations

import numpy as np

from edge_runtime.monitoring.config import DriftConfig, MonitorConfig
from edge_runtime.monitoring.drift import binned_scores, ks_critical, psi
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.package.manifest import Histogram
from tests.monitoring.helpers import frame_result, frames, manifest_with_reference


def test_psi_and_ks_are_zero_for_identical_and_large_for_disjoint_distributions():
    ref = Histogram(edges=tuple(np.linspace(0, 10, 11)), counts=(0.1,) * 10)
    same = np.repeat(np.arange(10) + 0.5, 20)
    p, ks = binned_scores(same, ref)
    assert p < 1e-9 and ks < 1e-9
    p, ks = binned_scores(np.full(200, 9.5), ref)
    assert p > 2 and ks > 0.85
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0
    assert ks_critical(0.001, 500, 300) < ks_critical(0.001, 50, 300)


_CFG = MonitorConfig(system=False, period_s=3600, drift=DriftConfig(window=300, min_samples=100, input_every=1))


def _run(monitor: Monitor, stream) -> None:
    for i, f in enumerate(stream):
        monitor(frame_result(i, f))


def _drift_events(monitor: Monitor) -> list[dict]:
    monitor.flush()
    return [d for k, d in monitor.recent if k == "event" and d["type"] == "drift"]


def test_in_distribution_frames_raise_no_drift_event():
    m = Monitor(_CFG,
                manifest_with_reference(seed=0))
    _run(m, frames(900, seed=123))
    assert _drift_events(m) == []
    assert m.drift.last["brightness"].drifted is False and m.drift.last["brightness"].psi < 0.25
    m.close()


def test_brightened_frames_raise_a_drift_event_naming_brightness():
    m = Monitor(_CFG,
                manifest_with_reference(seed=0))
    _run(m, frames(300, seed=7))
    assert _drift_events(m) == []
    _run(m, frames(600, seed=8, gain=1.3, offset=50))
    events = _drift_events(m)
    features = {e["feature"] for e in events}
    assert {"brightness", "channel_mean"} <= features
    b = next(e for e in events if e["feature"] == "brightness")
    assert b["scores"]["psi"] > 0.25 and b["scores"]["ks"] > b["scores"]["ks_critical"]
    assert b["schema"] == "event/1" and b["model"] == "unit"
    m.close()
