"""A real `edge-runtime agent` whose config lists two sources: one model serves both, one OTA swap reaches both,
and a camera that goes away is reported by name while the other source keeps being served."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.sources.media import MjpegServer, write_numbered_video
from tests.update import conftest as ota_fixtures
from tests.update.harness import FleetSide, device_config, spawn_agent

pytestmark = pytest.mark.mqtt
ota_keys, ota_packages = ota_fixtures.ota_keys, ota_fixtures.ota_packages  # the OTA suite's fixtures, shared


def _per_source(doc: dict) -> dict:
    return (doc.get("source") or {}).get("sources") or {}


def test_an_agent_with_two_sources_updates_both_and_reports_a_failing_one(tmp_path: Path, broker, ota_keys,
                                                                          ota_packages) -> None:
    clip = write_numbered_video(tmp_path / "clip.avi", count=30)
    server = MjpegServer(fps=20).start()
    top = {"sources": [
        {"name": "door", "source": str(clip), "options": {"fps_limit": 20, "loop": True}},
        {"name": "yard", "source": server.url, "options": {"reconnect": {"initial_delay_s": 0.2, "max_delay_s": 0.5}}},
    ], "stall_timeout_s": 2}  # fmt: skip
    config = device_config(tmp_path, "cam-9", broker.port, ota_keys["pub"], ota_packages["v1"], top, live_report_s=1)
    fleet = FleetSide(broker.port, ota_keys["priv"])
    proc = spawn_agent(config, tmp_path / "cam-9.log")
    try:
        fleet.wait_for("cam-9", lambda d: d["serving"] == "tiny-1.0.0"
                       and all(s["processed"] > 0 for s in _per_source(d).values()), timeout=60)
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-9")
        done = fleet.wait_for("cam-9", lambda d: d["state"] in ("committed", "failed"), timeout=90)
        at_commit = {n: s["processed"] for n, s in _per_source(done).items()}
        fleet.clear("cam-9")
        both = fleet.wait_for("cam-9", lambda d: d["serving"] == "tiny-2.0.0" and all(
            s["processed"] > at_commit[n] for n, s in _per_source(d).items()), timeout=60)
        server.stop()
        fleet.clear("cam-9")
        fault = fleet.wait_for("cam-9", lambda d: _per_source(d)["yard"]["fault"], timeout=60)
        seen = _per_source(fault)["door"]["processed"]
        fleet.clear("cam-9")
        going = fleet.wait_for("cam-9", lambda d: _per_source(d)["door"]["processed"] > seen + 10, timeout=60)
    finally:
        server.stop()
        fleet.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), done
    assert set(_per_source(both)) == {"door", "yard"}
    assert server.url.split("//")[1].split("/")[0] in _per_source(fault)["yard"]["fault"]
    assert _per_source(going)["door"]["fault"] is None and _per_source(going)["yard"]["fault"]
    assert proc.returncode in (0, -signal.SIGTERM)
