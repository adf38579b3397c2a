"""End-to-end OTA on one device in this process: real mosquitto, real packages, real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.update.harness import FleetSide, InProcessDevice, device_config

pytestmark = pytest.mark.mqtt


def test_update_commits_and_serves_new_model(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = InProcessDevice(device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"])).start()
    try:
        pub = fleet.upload(ota_packages["v2"])
        fleet.desire(pub, "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in ("committed", "failed"))
        assert done["state"] == "committed", done
        assert done["serving"] == "tiny-2.0.0"
        assert fleet.states("cam-1")[-6:] == ["downloading", "verifying", "staged", "activating", "health_check",
                                              "committed"]
    finally:
        stats = dev.stop()
        fleet.close()
    assert stats.errors == 0
    assert stats.version == "2.0.0"
