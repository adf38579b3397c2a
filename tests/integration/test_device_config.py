"""The device config file: the shipped example parses, paths and ${VAR}s resolve, and every mistake ends as one
line with exit code 2, before the model is loaded where possible."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.device_config import embedded_device_config, load_device_config
from edge_runtime.errors import ConfigError
from edge_runtime.monitoring.service import source_info
from edge_runtime.sync.mqtt import MqttSettings
from tests.integration.helpers import CLI, write_config
from tests.model_factory import trust_args
from tests.sources.media import write_numbered_video

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "device.example.yaml"


def test_the_shipped_example_parses_with_its_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "s3cret")
    cfg = load_device_config(EXAMPLE)
    assert cfg.device_id == "cam-042" and cfg.mqtt is not None
    assert cfg.mqtt.device_id == "cam-042" and cfg.mqtt.password == "s3cret" and cfg.mqtt.port == 8883
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_cert == Path("/etc/edge-runtime/mqtt/ca.crt")
    assert cfg.outbox is not None and cfg.outbox.path == Path("/var/lib/edge-runtime/outbox.db")
    assert cfg.http is not None and cfg.http.port == 9100 and cfg.monitor.period_s == 10


def test_relative_paths_are_relative_to_the_file_and_the_outbox_has_a_default(tmp_path):
    base = tmp_path / "conf"
    base.mkdir()
    path = write_config(base / "d.yaml", device_id="d1", mqtt={"host": "h", "tls": {"ca_cert": "certs/ca.crt"}},
                        monitor={"samples": {"directory": "s"}})
    cfg = load_device_config(path)
    assert cfg.outbox.path == base / "outbox.db"
    assert cfg.mqtt.tls.ca_cert == base / "certs" / "ca.crt"
    assert cfg.monitor.samples.directory == base / "s"


def test_the_agent_section_gets_its_outbox_in_the_state_dir(tmp_path):
    mqtt = MqttSettings(host="h", device_id="a1")
    cfg = embedded_device_config("a1", mqtt, {"monitor": {"period_s": 5}}, tmp_path, "agent config x: monitoring")
    assert cfg.outbox.path == tmp_path / "outbox.db" and cfg.mqtt == mqtt and cfg.monitor.period_s == 5
    with pytest.raises(ConfigError, match="device_id is set at the top"):
        embedded_device_config("a1", mqtt, {"device_id": "b"}, tmp_path, "agent config x: monitoring")


def test_health_never_shows_a_source_password():
    assert source_info("rtsp://admin:hunter2@10.0.0.5:554/stream1", "frame") == {
        "spec": "rtsp://***@10.0.0.5:554/stream1", "kind": "frame"}
    assert source_info("clip.mp4")["spec"] == "clip.mp4"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numbered_video(tmp_path_factory.mktemp("clip") / "clip.avi", count=5)


MISTAKES = [
    ({"device_id": "cam", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"device_id": "cam/1"}, "invalid device_id 'cam/1'"),
    ({"device_id": "cam", "mqtt": {"port": 1883}}, "mqtt.host: Field required"),
    ({"device_id": "cam", "mqtt": {"host": "h", "device_id": "other"}}, "mqtt.device_id differs from device_id"),
    ({"device_id": "cam", "mqtt": {"host": "h"}, "outbox": None}, "a broker needs the outbox"),
    ({"device_id": "cam", "monitor": {"period_s": 0}}, "monitor.period_s: Input should be greater than 0"),
    ({"device_id": "cam", "mqtt": {"host": "h", "username": "u", "password": "${EDGE_TEST_UNSET_VAR}"}},
     "mqtt.password: environment variable EDGE_TEST_UNSET_VAR is not set"),
    ({"device_id": "cam", "mqtt": {"host": "h", "tls": {"ca_cert": "missing-ca.crt"}}},
     "mqtt.tls.ca_cert:"),
]


@pytest.mark.parametrize(("doc", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_config_mistakes_are_one_line_errors(tiny_onnx_package, clip, tmp_path, capsys, doc, message):
    cfg = write_config(tmp_path / "device.yaml", **doc)
    code = main(["run", "--package", str(tiny_onnx_package.root), *trust_args(),
                 "--source", str(clip), "--config", str(cfg),
                 "--no-summary", "--out", str(tmp_path / "out.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and err.startswith("edge-runtime: error: "), err


@pytest.mark.parametrize(
    ("text", "message"),
    [("device_id: [cam\n", "is not valid YAML at line 2"), ("- a\n- b\n", "expected a mapping")],
)
def test_unreadable_config_files_are_one_line_errors(tiny_onnx_package, clip, tmp_path, capsys, text, message):
    cfg = tmp_path / "device.yaml"
    cfg.write_text(text)
    code = main(["run", "--package", str(tiny_onnx_package.root), *trust_args(),
                 "--source", str(clip), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_option_mistakes_are_one_line_errors(tiny_onnx_package, clip, tmp_path, capsys):
    base = ["run", "--package", str(tiny_onnx_package.root), *trust_args(), "--source", str(clip), "--no-summary",
            "--out", str(tmp_path / "o.jsonl")]  # fmt: skip
    cases = [
        (["--mqtt", "mqtt://127.0.0.1:1883"], "--mqtt needs --device-id"),
        (["--mqtt", "http://x", "--device-id", "d"], "must look like mqtt://host:1883"),
        (["--config", str(tmp_path / "nope.yaml")], "cannot read device config"),
    ]
    with socket.socket() as busy:  # a port already taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append((["--http", str(busy.getsockname()[1])], "cannot listen on 127.0.0.1:"))
        for extra, message in cases:
            code = main([*base, *extra])
            err = capsys.readouterr().err
            assert code == 2 and message in err and err.count("\n") == 1, (extra, err)


def test_a_bad_config_file_ends_the_process_with_one_line_and_exit_2(tiny_onnx_package, clip, tmp_path):
    cfg = write_config(tmp_path / "device.yaml", device_id="cam", mqtt={"host": "h", "qos": 2})
    proc = subprocess.run([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(), "--source", str(clip),
                           "--config", str(cfg)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edge-runtime: error: invalid device config {cfg}: mqtt.qos: Extra inputs are not permitted"]
    assert proc.stdout == ""
