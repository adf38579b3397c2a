"""The agent config's broker credentials: a password file, the environment, a clear error for a missing file."""

from __future__ import annotations

import pytest

from edge_runtime.commands.agent import AgentConfig, mqtt_settings
from edge_runtime.errors import ConfigError


def _cfg(tmp_path, **mqtt):  # type: ignore[no-untyped-def]
    key = tmp_path / "k.pub"
    key.write_text("x")
    return AgentConfig(device_id="cam-1", profile="x86-laptop", state_dir=tmp_path, trusted_keys=[key],
                       mqtt={"host": "broker", "username": "cam-1", **mqtt})


def test_password_from_file_then_environment(tmp_path, monkeypatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    assert mqtt_settings(_cfg(tmp_path, password_file=str(pw))).password == "from-file"
    monkeypatch.setenv("EDGE_RUNTIME_MQTT_PASSWORD", "from-env")
    assert mqtt_settings(_cfg(tmp_path)).password == "from-env"
    assert mqtt_settings(_cfg(tmp_path, password="inline")).password == "inline"
    with pytest.raises(ConfigError, match="cannot read the MQTT password file"):
        mqtt_settings(_cfg(tmp_path, password_file=str(tmp_path / "missing")))
