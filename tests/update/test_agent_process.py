"""The OTA fault suite against real `edge-runtime agent` processes: own config file and state folder each, a real
mosquitto, real sources (a looped video file, an MJPEG stream, a pty serial port). Every wait is on a status the
agent published; each scenario is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.sources.media import MjpegServer, write_video
from tests.update.harness import FleetSide, device_config, spawn_agent

pytestmark = pytest.mark.mqtt
FINAL = ("committed", "failed")


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _spawn(agents: list, config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    proc = spawn_agent(config, tmp / f"{config.stem}.log")
    agents.append(proc)
    return proc


def _log(tmp: Path, device: str) -> str:
    return (tmp / f"{device}.log").read_text(errors="replace")[-3000:]


def test_a_model_that_raises_on_every_frame_is_rolled_back_in_process(tmp_path, broker, ota_keys, ota_packages,
                                                                      agents) -> None:
    """Given an agent on a (looped) video file of noisy frames serving v1, when it is offered a model that passes
    its golden pairs but raises inside onnxruntime on every live frame, then it switches back to v1 within the
    health window, reports the real reason, keeps running and keeps serving v1."""
    rng = np.random.default_rng(1)  # black and white 4x4 blocks: a pixel spread no JPEG or resize smooths away
    blocks = [np.kron(rng.integers(0, 2, (12, 16, 1)), np.ones((4, 4, 3))).astype(np.uint8) * 255 for _ in range(60)]
    clip = write_video(tmp_path / "noise.avi", blocks)
    top = {"source": str(clip), "source_options": {"fps_limit": 30, "loop": True}}
    config = device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"], top, live_report_s=1)
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        proc = _spawn(agents, config, tmp_path)
        fleet.wait_for("cam-1", lambda d: d["serving"] == "tiny-1.0.0", timeout=60)
        fleet.desire(fleet.upload(ota_packages["raising"]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL, timeout=60)
        fleet.clear("cam-1")
        # a whole live period after the switch back: v1 serves the clip again, without errors
        after = fleet.wait_for("cam-1", lambda d: (d.get("live") or {}).get("inferences", 0) > 0
                               and d["live"]["errors"] == 0, timeout=30)
    finally:
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", "unhealthy", "tiny-1.0.0"), done
    assert "inference errors 100% over" in done["reason"], done
    assert done["health"]["raised"] == done["health"]["attempts"] > 0
    assert proc.poll() is None, _log(tmp_path, "cam-1")  # alive, not exit 2
    assert after["serving"] == "tiny-1.0.0" and after["state"] == "failed"


def test_an_agent_on_an_mjpeg_stream_updates_and_reports_a_source_fault(tmp_path, broker, ota_keys, ota_packages,
                                                                        agents) -> None:
    """The agent starts while its network camera is still down (it reports the fault, keeps retrying, and serves
    once the camera is up), commits v2 over the live stream, and reports the fault again, alive, when the camera
    goes away; the fault clears when it comes back."""
    server = MjpegServer(fps=30).start()
    server.stop()  # the port is known; nothing serves it yet
    top = {"source": server.url, "stall_timeout_s": 2,
           "source_options": {"reconnect": {"initial_delay_s": 0.2, "max_delay_s": 0.5, "max_attempts": 2}}}
    config = device_config(tmp_path, "cam-2", broker.port, ota_keys["pub"], ota_packages["v1"], top)
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        proc = _spawn(agents, config, tmp_path)
        down = fleet.wait_for("cam-2", lambda d: (d.get("source") or {}).get("fault"), timeout=60)
        server.start()
        fleet.wait_for("cam-2", lambda d: (d.get("source") or {}).get("fault") is None, timeout=60)
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-2")
        done = fleet.wait_for("cam-2", lambda d: d["state"] in FINAL, timeout=60)
        server.stop()
        fleet.clear("cam-2")
        fault = fleet.wait_for("cam-2", lambda d: (d.get("source") or {}).get("fault"), timeout=60)
        server.start()
        fleet.clear("cam-2")
        clear = fleet.wait_for("cam-2", lambda d: (d.get("source") or {}).get("fault") is None, timeout=60)
    finally:
        server.stop()
        fleet.close()
    assert down["serving"] == "tiny-1.0.0" and down["state"] == "idle"
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), done
    assert server.url in fault["source"]["fault"] and proc.poll() is None, _log(tmp_path, "cam-2")
    assert clear["serving"] == "tiny-2.0.0"


def test_an_agent_on_a_pty_serial_sensor_is_updated_end_to_end(tmp_path, broker, ota_keys, agents) -> None:
    """The agent reads CSV lines from a serial port (a pty pair), windows them by the package's input shape, and
    takes a sensor-model update from v1 to v2."""
    from edge_runtime.package import load_private_key
    from tests.model_factory import tensor_package

    key = load_private_key(ota_keys["priv"])
    v1 = tensor_package(tmp_path / "s1", window=8, channels=3, version="1.0.0", sign_key=key).root
    v2 = tensor_package(tmp_path / "s2", window=8, channels=3, version="2.0.0", sign_key=key, seed=1).root
    master, slave = os.openpty()
    stop = threading.Event()

    def sensor() -> None:  # a device writing 3-channel samples at ~200 Hz
        i = 0
        while not stop.wait(0.005):
            try:
                os.write(master, f"{i % 7},{i % 5 * 0.5},{-(i % 3)}\n".encode())
            except OSError:
                return
            i += 1

    writer = threading.Thread(target=sensor, daemon=True)
    writer.start()
    top = {"source": f"serial:{os.ttyname(slave)}?baud=115200"}
    config = device_config(tmp_path, "imu-1", broker.port, ota_keys["pub"], v1, top)
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        proc = _spawn(agents, config, tmp_path)
        fleet.wait_for("imu-1", lambda d: d["serving"] == "sensor-1.0.0", timeout=60)
        fleet.desire(fleet.upload(v2), "imu-1")
        done = fleet.wait_for("imu-1", lambda d: d["state"] in FINAL, timeout=60)
    finally:
        stop.set()
        fleet.close()
    assert (done["state"], done["serving"]) == ("committed", "sensor-2.0.0"), (done, _log(tmp_path, "imu-1"))
    assert done["health"]["attempts"] >= 5 and done["health"]["errors"] == 0
    assert proc.poll() is None
    writer.join(2)
    os.close(master)
    os.close(slave)


def test_kill9_during_the_health_window_resumes_and_commits(tmp_path, broker, ota_keys, ota_packages,
                                                            agents) -> None:
    """Given an agent killed (-9) while the new model is in its health window, when it starts again, then v1
    serves at once, the attempt resumes (bounded) from staged and commits v2: the document is not failed for
    good. Stale download temp files are removed at start; the rollback target is kept."""
    config = device_config(tmp_path, "cam-3", broker.port, ota_keys["pub"], ota_packages["v1"],
                           dwell_s={"health_check": 2.0})
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        proc = _spawn(agents, config, tmp_path)
        fleet.wait_for("cam-3", lambda d: d["serving"] == "tiny-1.0.0", timeout=60)
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-3")
        fleet.wait_for("cam-3", lambda d: d["state"] == "health_check", timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stale = tmp_path / "cam-3" / "downloads" / ".abc.progress.x1y2.tmp"
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("{}")
        fleet.clear("cam-3")
        _spawn(agents, config, tmp_path)
        resumed = fleet.wait_for("cam-3", lambda d: d["state"] == "staged", timeout=60)
        done = fleet.wait_for("cam-3", lambda d: d["state"] in FINAL, timeout=60)
    finally:
        fleet.close()
    assert resumed["code"] == "restarted" and resumed["serving"] == "tiny-1.0.0" and resumed["recoveries"] == 1
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), (done, _log(tmp_path, "cam-3"))
    assert not stale.exists()
    from edge_runtime.update.slots import SlotStore

    slots = SlotStore(tmp_path / "cam-3" / "slots")  # slots are keyed by content: read what each one holds
    p = slots.pointers()
    assert p.active and p.previous
    assert (slots.name_version(p.active), slots.name_version(p.previous)) == (("tiny", "2.0.0"), ("tiny", "1.0.0"))
