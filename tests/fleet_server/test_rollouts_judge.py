"""Canaries judged against a control group on real metric rows (SQLite): a shift both groups show passes, a
regression only the canaries show fails, and the verdict names its figures."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from fleet.server.rollout_judge import Thresholds, group_figures, judge


def _rows(engine, device: str, version: str, latency: float, drift: float, errors: int = 0, n: int = 10) -> None:
    with engine.begin() as conn:
        conn.execute(insert(t.metrics), [
            {"device": device, "outbox": "e", "record_id": i, "ts": 100.0 + i, "received": 100.0 + i,
             "version": version, "frames": 20, "errors": errors, "latency_p90": latency + i * 0.1,
             "drift_max": drift, "confidence_mean": 0.8, "data": {}} for i in range(n)])


def _verdict(engine) -> tuple[bool, str]:
    with engine.connect() as conn:
        canary = group_figures(conn, ["cam-1"], "2.0.0", 100.0, 200.0)
        control = group_figures(conn, ["cam-2", "cam-3"], "1.0.0", 100.0, 200.0)
    return judge(canary, control, Thresholds())


def test_an_environment_shift_both_groups_show_passes(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    migrate(engine)
    # given every camera's scene drifted (about 4 sigmas on canary and control alike), latencies alike
    _rows(engine, "cam-1", "2.0.0", 10.0, 4.2)
    _rows(engine, "cam-2", "1.0.0", 10.0, 4.0)
    _rows(engine, "cam-3", "1.0.0", 11.0, 3.8)
    # when judged, then the rollout goes on; judged against limits alone it would have been drift everywhere
    passed, reason = _verdict(engine)
    assert passed and "control group" in reason, reason


def test_a_regression_only_the_canaries_show_fails_with_its_figures(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    migrate(engine)
    # given the canary three times slower and drifting while the control group is not
    _rows(engine, "cam-1", "2.0.0", 30.0, 3.0, errors=2)
    _rows(engine, "cam-2", "1.0.0", 10.0, 0.1)
    _rows(engine, "cam-3", "1.0.0", 10.0, 0.1)
    passed, reason = _verdict(engine)
    assert not passed
    assert "latency p95" in reason and "drift 3.000 vs control 0.100" in reason and "error rate 0.100" in reason
    # and a canary that sent nothing in the window is not judged good
    with engine.connect() as conn:
        empty = group_figures(conn, ["cam-9"], "2.0.0", 100.0, 200.0)
    assert judge(empty, None, Thresholds()) == (False, "canaries sent 0 metric records in the window (need 3)")
