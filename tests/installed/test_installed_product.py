"""The product as a device installs it: the wheel in a fresh venv with the device extras, no TensorFlow, no torch.

Every command here is the installed ``edge-runtime`` console script of that venv, with nothing of this checkout on
its path; the packages it runs are built by the laptop side (this test process), as a user's would be.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.installed.device_env import LAPTOP_ONLY, DeviceEnv
from tests.integration.helpers import get, reap, wait_until
from tests.mqtt_broker import free_port
from tests.sources.media import MjpegServer, write_video

pytestmark = pytest.mark.slow
PROFILES = {"raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "x86-laptop"}


def _run(env: DeviceEnv, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*env.cli, *args], capture_output=True, text=True, timeout=timeout, env=env.env(),
                          cwd=cwd or env.root)  # fmt: skip


@pytest.fixture(scope="module")
def pi_package(tmp_path_factory: pytest.TempPathFactory, device_keys: tuple[Path, Path]) -> Path:
    """A signed full-int8 TFLite classifier built for raspberry-pi-4, packed as the .erpkg a device receives."""
    from edge_runtime.package import load_private_key, pack_archive
    from tests.model_factory import classifier_package

    work = tmp_path_factory.mktemp("pi-pkg")
    pkg = classifier_package(work / "tiny", fmt="tflite", profile="raspberry-pi-4",
                             sign_key=load_private_key(device_keys[0]))  # fmt: skip
    return pack_archive(pkg.root, work / "tiny-1.0.0.erpkg")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    frames = [np.roll(base, 4 * i, axis=1) for i in range(30)]
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", frames)


def test_the_device_venv_holds_no_laptop_stack(device_env: DeviceEnv) -> None:
    assert device_env.importable(LAPTOP_ONLY) == []
    assert device_env.importable(("onnxruntime", "ai_edge_litert", "cv2", "paho", "prometheus_client")) == [
        "onnxruntime", "ai_edge_litert", "cv2", "paho", "prometheus_client"]  # fmt: skip


def test_profiles_list_shows_the_five_builtin_profiles(device_env: DeviceEnv) -> None:
    proc = _run(device_env, "profiles", "list")
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert PROFILES <= names, proc.stdout
    shown = _run(device_env, "profiles", "show", "raspberry-pi-4")
    assert shown.returncode == 0 and "cortex-a72" in shown.stdout.lower(), shown.stdout + shown.stderr


def test_run_a_signed_package_on_a_clip_with_the_pi4_profile(device_env: DeviceEnv, pi_package: Path, clip: Path,
                                                            device_keys: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    proc = _run(device_env, "run", "--package", str(pi_package), "--key", str(device_keys[1]), "--profile",
                "raspberry-pi-4", "--source", str(clip), "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "not known here" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 30
    assert all(r["classes"][0]["label"] in ("a", "b", "c") for r in results), \
        results[0]


def test_a_tampered_package_is_refused_by_the_installed_run(device_env: DeviceEnv, pi_package: Path, clip: Path,
                                                           tmp_path: Path) -> None:
    from edge_runtime.package import generate_keypair

    _, other_pub = generate_keypair(tmp_path / "other")
    proc = _run(device_env, "run", "--package", str(pi_package), "--key", str(other_pub), "--source", str(clip))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_serve_answers_predict_health_and_metrics(device_env: DeviceEnv, pi_package: Path,
                                                  device_keys: tuple[Path, Path], tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([*device_env.cli, "serve", "--package", str(pi_package), "--key", str(device_keys[1]),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=device_env.env(), cwd=tmp_path)  # fmt: skip
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200, timeout=60, proc=proc)
        frame = np.full((48, 64, 3), 90, np.uint8)
        ok, jpeg = cv2.imencode(".jpg", frame)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=jpeg.tobytes(),
                                     headers={"content-type": "image/jpeg"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 - loopback
            body = json.loads(r.read())
        assert r.status == 200 and body["classes"][0]["label"] in ("a", "b", "c"), body
        code, text = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "edge_" in text, text[:500]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        finally:
            reap(proc)


@pytest.mark.mqtt
def test_one_ota_update_end_to_end_with_the_installed_agent(device_env: DeviceEnv, device_keys: tuple[Path, Path],
                                                           broker, tmp_path: Path) -> None:
    """The laptop's ``fleet publish`` (this checkout) → real mosquitto → the installed ``edge-runtime agent`` on an
    MJPEG camera stream."""
    from edge_runtime.package import load_private_key, pack_archive
    from tests.model_factory import classifier_package
    from tests.update.harness import FleetSide

    key = load_private_key(device_keys[0])
    v1 = pack_archive(classifier_package(tmp_path / "v1", version="1.0.0", sign_key=key).root, tmp_path / "v1.erpkg")
    v2 = pack_archive(classifier_package(tmp_path / "v2", version="2.0.0", sign_key=key, seed=1).root,
                      tmp_path / "v2.erpkg")  # fmt: skip
    camera = MjpegServer(fps=30).start()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "pi-1", "profile": "x86-laptop", "state_dir": str(tmp_path / "state"),
        "trusted_keys": [str(device_keys[1])], "initial_package": str(v1), "source": camera.url, "fps": 30,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "update": {"smoke_budget_ms": 2000,
                   "health": {"window_s": 1.0, "min_inferences": 5, "latency_p95_ms": 2000}},
    }))  # fmt: skip
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([*device_env.cli, "-v", "agent", "--config", str(config)], stdout=log,
                             stderr=subprocess.STDOUT, env=device_env.env(), cwd=tmp_path)  # fmt: skip
    fleet = FleetSide(broker.port, device_keys[0])
    try:
        fleet.wait_for("pi-1", lambda s: s["serving"] == "tiny-1.0.0", timeout=90)
        publish = subprocess.run(
            [*_laptop_cli(), "fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "publish", str(v2),
             "--target", "pi-1", "--key", str(device_keys[0])], capture_output=True, text=True, timeout=120)
        assert publish.returncode == 0, publish.stderr
        final = fleet.wait_for("pi-1", lambda s: s["state"] in ("committed", "failed") and s["at"] > 0, timeout=120)
        assert (final["state"], final["serving"]) == ("committed", "tiny-2.0.0"), final
        assert agent.poll() is None, "the agent exited during the update"
    finally:
        fleet.close()
        camera.stop()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        finally:
            reap(agent)
            log.close()
    tail = (tmp_path / "agent.log").read_text(errors="replace")
    assert "Traceback" not in tail, tail[-3000:]


def _laptop_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "edge_runtime.cli"]
