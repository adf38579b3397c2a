"""Round 3: samples kept for upload under one collection policy were still uploaded after a newer policy changed the
redaction (say, added blur_faces because faces were found): the operator's tightened redaction did not reach them.
Pending samples kept under other redaction steps than the policy now in force are withheld (``upload: withheld``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.monitoring.collect import CollectionPolicy, Redaction
from edge_runtime.monitoring.config import MonitorConfig, SampleConfig
from edge_runtime.monitoring.monitor import Monitor
from tests.monitoring.helpers import frame_result


def test_a_new_redaction_withholds_samples_kept_under_the_old_one(tmp_path: Path) -> None:
    cfg = MonitorConfig(period_s=3600, system=False, samples=SampleConfig(
        directory=tmp_path / "s", low_confidence=None, min_interval_s=0, upload=True))
    mon = Monitor(cfg, None)
    rng = np.random.default_rng(0)
    try:
        coll = mon.collection
        assert coll is not None and mon.samples is not None

        def keep(i: int) -> None:
            mon(frame_result(i, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), confidence=0.1))
            mon.samples.flush()  # type: ignore[union-attr]

        loose = CollectionPolicy(upload=True, low_confidence=0.5, random_rate=0.0, dedup=None)
        coll.set_policy(loose, True)
        keep(1)
        assert [m["frame_index"] for m in mon.samples.pending()] == [1]
        coll.set_policy(loose, True)  # the same policy again (a restart): still pending
        assert [m["frame_index"] for m in mon.samples.pending()] == [1]
        strict = loose.model_copy(update={"redact": (Redaction(kind="grayscale"),)})
        coll.set_policy(strict, True)
        keep(2)
        assert [m["frame_index"] for m in mon.samples.pending()] == [2]  # the grey one only
        assert {m["frame_index"]: m.get("upload") for m in mon.samples.list()} == {1: "withheld", 2: "pending"}
    finally:
        mon.close()
