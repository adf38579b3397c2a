"""Monitoring of several sources on one model: each source has its own drift windows, its own metric record per
period and its own captured samples, so one camera's drift does not hide in another's frames."""

from __future__ import annotations

from edge_runtime.monitoring.config import DriftConfig, MonitorConfig, SampleConfig
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.pipeline import FrameResult
from tests.monitoring.helpers import frame_result, frames, manifest_with_reference
from tests.monitoring.schemas import validate


def _from(source: str, result: FrameResult) -> FrameResult:
    return FrameResult(result.index, result.timestamp, result.prediction, result.frame, result.capture_wait_ms,
                       result.end_to_end_ms, source=source)


def test_an_over_exposed_camera_drifts_alone_among_two_sources(tmp_path):
    # given one monitor on a pipeline with two sources, against the package reference (photos)
    cfg = MonitorConfig(system=False, period_s=3600, drift=DriftConfig(reference="package"),
                        samples=SampleConfig(directory=tmp_path / "samples", low_confidence=None, random_rate=1.0,
                                             min_interval_s=0.0, seed=1))
    m = Monitor(cfg, manifest_with_reference(seed=0))
    m.set_sources(["door", "yard"])
    # when "door" sees in-distribution content and "yard" is washed out, frames interleaved at 30 fps
    normal = frames(600, seed=123)
    washed = frames(600, seed=8, gain=2.5, offset=60)
    for i, (a, b) in enumerate(zip(normal, washed, strict=True)):
        m(_from("door", frame_result(2 * i, a, confidence=0.8, top=1, fps=60.0)))
        m(_from("yard", frame_result(2 * i + 1, b, confidence=0.8, top=1, fps=60.0)))
    m.flush()
    drift = [d for k, d in m.recent if k == "event" and d["type"] == "drift"]
    # then drift is raised for yard only, and says so
    assert drift and {e["source"] for e in drift} == {"yard"} and "brightness" in {e["feature"] for e in drift}
    for e in drift:
        validate(e, "event.json")
    assert not any(dict(m.drift_detectors())["door"].state.values())
    # and the period ends in one record per source, each with its own frames and drift windows
    m.report()
    records = {d["source"]: d for k, d in m.recent if k == "metrics"}
    assert sorted(records) == ["door", "yard"]
    for name, d in records.items():
        validate(d, "metrics.json")
        assert d["frames"] == 600 and d["latency_ms"]["inference"]["count"] == 600
        assert d["drift"]["predictions"]["samples"] > 0
    alarms = {n: any(s["drifted"] for s in d["drift"]["features"].values()) for n, d in records.items()}
    assert alarms == {"door": False, "yard": True}
    # and captured samples name their source
    m.samples.flush()
    assert {s.get("source") for s in m.samples.list()} == {"door", "yard"}
    m.close()
