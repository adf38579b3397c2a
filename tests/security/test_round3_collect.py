"""Round 3: a signed collection policy's ``command`` redaction runs a program on every device that keeps samples,
whether or not it opted in to uploads. Anyone with the operator role on the fleet server (which signs policies
with its operator key) could so run any program on every such device. A device now runs only the redaction
programs its own config names (``monitor.samples.redact_commands``); any other drops the sample, as a failing
redaction does (nothing is kept unredacted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edge_runtime.monitoring.collect import CollectionPolicy, Redaction
from edge_runtime.monitoring.config import MonitorConfig, SampleConfig
from edge_runtime.monitoring.monitor import Monitor
from tests.monitoring.helpers import frame_result


def _kept(tmp_path: Path, allowed: tuple[str, ...], marker: Path) -> tuple[list[dict], int]:
    cfg = MonitorConfig(period_s=3600, system=False, samples=SampleConfig(
        directory=tmp_path / "s", low_confidence=None, min_interval_s=0, redact_commands=allowed))
    mon = Monitor(cfg, None)
    script = f"import sys; open({str(marker)!r}, 'w'); sys.stdout.buffer.write(sys.stdin.buffer.read())"
    try:
        assert mon.collection is not None
        mon.collection.set_policy(CollectionPolicy(low_confidence=0.5, random_rate=0.0, dedup=None, redact=(
            Redaction(kind="command", argv=(sys.executable, "-c", script)),)), False)
        frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        mon(frame_result(1, frame, confidence=0.1))
        mon.samples.flush()  # type: ignore[union-attr]
        return mon.samples.list(), mon.samples.redaction_failed  # type: ignore[union-attr]
    finally:
        mon.close()


def test_a_policy_runs_no_program_the_device_config_does_not_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    kept, failed = _kept(tmp_path, (), marker)
    assert not marker.exists() and kept == [] and failed == 1


def test_a_program_the_device_names_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    kept, failed = _kept(tmp_path, (sys.executable,), marker)
    assert marker.exists() and len(kept) == 1 and failed == 0
