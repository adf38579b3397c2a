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
        out = capsys.readouterr().out
        assert "cam-9" in out and "fleet-cli" not in out  # a CLI is no device: no retained state, no will
        assert main([*base, "rollback", "--target", "cam-9", "--to", "1.0.0", "--key", str(ota_keys["priv"])]) == 2
        assert "never published" in capsys.readouterr().err
    finally:
        dev.stop()
        watch.close()


def test_every_cli_process_has_its_own_client_id() -> None:
    """Two CLIs with one client id kick each other off the broker (a `fleet status` during a rollout did)."""
    from fleet.command import client_id

    ids = {client_id() for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("fleet-cli-") for i in ids)


def test_rollback_matches_the_model_name_not_only_the_version(tmp_path: Path, broker, ota_keys, ota_packages,
                                                              capsys) -> None:
    """Given two models published at 1.0.0 (tiny and other), a rollback of a device serving tiny goes to tiny."""
    from edge_runtime.package import load_private_key
    from tests.model_factory import classifier_package

    sign = load_private_key(ota_keys["priv"])
    other = classifier_package(tmp_path / "other", version="1.0.0", name="other", seed=4, sign_key=sign).root
    base = ["fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--registry", str(tmp_path / "reg.json")]
    key = str(ota_keys["priv"])
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    dev = InProcessDevice(device_config(tmp_path, "cam-9", broker.port, ota_keys["pub"], ota_packages["v1"])).start()
    try:
        assert main([*base, "publish", str(other)]) == 0  # registered first: the old lookup took it
        assert main([*base, "publish", str(ota_packages["v1"])]) == 0
        assert main([*base, "publish", str(ota_packages["v2"]), "--target", "cam-9", "--key", key]) == 0
        watch.wait_for("cam-9", lambda d: d["state"] == "committed" and d["serving"] == "tiny-2.0.0")
        capsys.readouterr()
        assert main([*base, "rollback", "--target", "cam-9", "--to", "1.0.0", "--key", key]) == 0
        assert "to tiny 1.0.0" in capsys.readouterr().out
        back = watch.wait_for("cam-9", lambda d: d["state"] == "committed" and d["rollback"])
        assert main([*base, "rollback", "--target", "nobody", "--to", "1.0.0", "--key", key]) == 2
        assert "published for models other, tiny: name one (--name)" in capsys.readouterr().err
    finally:
        dev.stop()
        watch.close()
    assert back["serving"] == "tiny-1.0.0"


def test_tls_and_a_password_from_a_file_or_the_environment(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.mqtt_broker import Mosquitto, make_tls

    tls = make_tls(tmp_path / "tls")
    b = Mosquitto(tmp_path / "b", tls=tls, passwords={"fleet": "fpw"}).start()
    try:
        base = ["fleet", "--broker", f"mqtts://localhost:{b.port}", "--ca", str(tls.ca_cert), "--username", "fleet",
                "--registry", str(tmp_path / "reg.json")]
        pw = tmp_path / "pw"
        pw.write_text("fpw\n")
        assert main([*base, "--password-file", str(pw), "status", "--wait", "0.2"]) == 0
        monkeypatch.setenv("EDGE_RUNTIME_MQTT_PASSWORD", "fpw")
        assert main([*base, "status", "--wait", "0.2"]) == 0
        monkeypatch.setenv("EDGE_RUNTIME_MQTT_PASSWORD", "wrong")
        assert main([*base, "status", "--wait", "0.2"]) == 2
        assert "cannot reach broker" in capsys.readouterr().err
    finally:
        b.stop()
