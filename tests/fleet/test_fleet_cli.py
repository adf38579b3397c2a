"""`edge-runtime fleet publish / status / rollback` against a real mosquitto and a real device agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.cli import main
from tests.update.harness import FleetSide, InProcessDevice, device_config

pytestmark = pytest.mark.mqtt


def test_publish_status_rollback(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    base = ["fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--registry", str(tmp_path / "reg.json")]
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    dev = InProcessDevice(device_config(tmp_path, "cam-9", broker.port, ota_keys["pub"], ota_packages["v1"])).start()
    try:
        key = str(ota_keys["priv"])
        assert main([*base, "publish", str(ota_packages["v2"]), "--target", "cam-9", "--key", key]) == 0
        watch.wait_for("cam-9", lambda d: d["state"] == "committed" and d["serving"] == "tiny-2.0.0")
        assert main([*base, "status", "--wait", "0.5"]) == 0
        assert "cam-9" in capsys.readouterr().out
        assert main([*base, "rollback", "--target", "cam-9", "--to", "1.0.0", "--key", str(ota_keys["priv"])]) == 2
        assert "never published" in capsys.readouterr().err
    finally:
        dev.stop()
        watch.close()
