"""The issue's attacks on updates and commands, against a real `edge-runtime agent` process and a real mosquitto:
each ends refused and reported, with the device still serving a verified model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_runtime.package import load_private_key
from tests.sync.subscriber import Subscriber
from tests.update.harness import REPO, FleetSide, device_config, spawn_agent

pytestmark = pytest.mark.mqtt
FINAL = ("committed", "failed")


@pytest.fixture(scope="module")
def same_version_packages(tmp_path_factory, ota_keys):  # noqa: ANN001, ANN201
    """2.0.0 again with other weights; 3.0.0 broken (golden pairs wrong), then 3.0.0 fixed (other bytes)."""
    from tests.model_factory import classifier_package

    d = tmp_path_factory.mktemp("same-version")
    key = load_private_key(ota_keys["priv"])
    return {"v2_other": classifier_package(d / "v2o", version="2.0.0", sign_key=key, seed=7).root,
            "v3_bad": classifier_package(d / "v3b", version="3.0.0", sign_key=key, corrupt_golden=True).root,
            "v3_fixed": classifier_package(d / "v3f", version="3.0.0", sign_key=key, seed=2).root}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _after(fleet: FleetSide, device: str, pub, pred, timeout: float = 90.0):  # noqa: ANN001, ANN202
    """The first final status for ``pub``'s package that ``pred`` accepts."""
    return fleet.wait_for(device, lambda d: d["package_id"] == pub.meta.package_id and d["state"] in FINAL
                          and pred(d), timeout=timeout)


def test_same_version_other_bytes_and_an_oversized_chunk(tmp_path, broker, ota_keys, ota_packages,
                                                         same_version_packages):
    cfg = device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"], max_retries=1,
                        transfer={"chunk_retries": 2, "resubscribe_s": 0.5})
    proc = spawn_agent(cfg, tmp_path / "agent.log")
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        first = fleet.wait_for("cam-1", lambda s: s["serving"] == "tiny-1.0.0", timeout=60)
        assert first["serving_package_id"] is None  # seeded from a folder: no archive known yet
        # the fleet names the very 1.0.0 the device was seeded with: same content, so committed without a swap
        v1 = fleet.upload(ota_packages["v1"])
        fleet.desire(v1, "cam-1")
        same = _after(fleet, "cam-1", v1, lambda d: True)
        assert (same["state"], same["serving_package_id"]) == ("committed", v1.meta.package_id), same
        assert "already serves this content" in same["reason"]
        v2 = fleet.upload(ota_packages["v2"])
        fleet.desire(v2, "cam-1")
        ok = _after(fleet, "cam-1", v2, lambda d: True)
        assert (ok["state"], ok["serving"], ok["serving_package_id"]) == ("committed", "tiny-2.0.0",
                                                                          v2.meta.package_id), ok
        # 2.0.0 re-published with other bytes while 2.0.0 serves: refused, said so, never "committed"
        other = fleet.upload(same_version_packages["v2_other"])
        assert other.meta.package_id != v2.meta.package_id
        fleet.desire(other, "cam-1")
        done = _after(fleet, "cam-1", other, lambda d: True)
        assert (done["state"], done["code"]) == ("failed", "version_conflict"), done
        assert "2.0.0 is installed with different content" in done["reason"]
        assert (done["serving"], done["serving_package_id"]) == ("tiny-2.0.0", v2.meta.package_id)
        # a broken 3.0.0, then the fix published as 3.0.0 again: the fix installs, on its own bytes
        bad = fleet.upload(same_version_packages["v3_bad"])
        fleet.desire(bad, "cam-1")
        assert _after(fleet, "cam-1", bad, lambda d: True)["code"] == "smoke_test_failed"
        fixed = fleet.upload(same_version_packages["v3_fixed"])
        fleet.desire(fixed, "cam-1")
        done = _after(fleet, "cam-1", fixed, lambda d: True)
        assert (done["state"], done["serving"], done["serving_package_id"]) == (
            "committed", "tiny-3.0.0", fixed.meta.package_id), done
        # chunks 16x the declared size (the issue's .part blow-up): refused on length, the model keeps serving
        v1 = fleet.upload(ota_packages["v1_twin"], chunk_size=16 * 1024)
        for i in (1, 2):
            topic = fleet.topics.package_chunk(v1.meta.package_id, i)
            assert fleet.link.publish(topic, os.urandom(16 * 16 * 1024), retain=True).wait(10)
        fleet.desire(v1, "cam-1")
        done = _after(fleet, "cam-1", v1, lambda d: True)
        assert (done["state"], done["code"], done["serving"]) == ("failed", "chunk_wrong_size", "tiny-3.0.0"), done
        part = tmp_path / "cam-1" / "downloads" / f"{v1.meta.package_id}.part"
        assert not part.exists() or part.stat().st_size <= v1.meta.size
        assert proc.poll() is None  # still running
    finally:
        fleet.close()
        _stop(proc)


def _events(sub: Subscriber, kind: str) -> list[dict]:
    out = []
    for t, p, _ in sub.snapshot():
        if t.endswith("/events"):
            out += [r["data"] for r in json.loads(p)["records"] if r["data"].get("type") == kind]
    return out


def _fleet_command(broker_port: int, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "fleet", "--broker",
                           f"mqtt://127.0.0.1:{broker_port}", "command", "cam-1", "upload_samples", "--key",
                           str(key), *extra], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def test_unsigned_and_replayed_commands_are_refused_and_reported(tmp_path, broker, ota_keys, ota_packages):
    cfg = device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"])
    doc = yaml.safe_load(cfg.read_text())
    doc["monitoring"] = {"monitor": {"period_s": 3600, "samples": {
        "directory": str(tmp_path / "samples"), "low_confidence": 1.0, "min_interval_s": 0, "max_files": 5}},
        "forwarder": {"poll_s": 0.2}}
    cfg.write_text(yaml.safe_dump(doc))
    sub = Subscriber(broker.port, ["edge/devices/cam-1/#"])
    proc = spawn_agent(cfg, tmp_path / "agent.log")
    samples = lambda: [p for t, p, _ in sub.snapshot() if t.endswith("/samples")]  # noqa: E731
    try:
        assert sub.wait_for(lambda m: any(t.endswith("/update/status") for t, _, _ in m), timeout=60)
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "samples").glob("*.png"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        # the attack: an anonymous, unsigned request for a million samples
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/cam-1/commands", "-q", "1",
                        "-m", json.dumps({"command": "upload_samples", "max": 1000000})], check=True, timeout=10)
        assert sub.wait_for(lambda m: _events(sub, "command_rejected"), timeout=30)
        assert _events(sub, "command_rejected")[0]["code"] == "unsigned" and samples() == []
        # signed by a key the device does not trust: refused too
        rogue = _fleet_command(broker.port, ota_keys["rogue_priv"], "--max", "2")
        assert rogue.returncode == 0, rogue.stderr
        assert sub.wait_for(lambda m: len(_events(sub, "command_rejected")) == 2, timeout=30)
        assert _events(sub, "command_rejected")[1]["code"] == "untrusted_key" and samples() == []
        # the operator's signed command, from the fleet CLI: exactly two samples
        sent = _fleet_command(broker.port, ota_keys["priv"], "--max", "2")
        assert sent.returncode == 0 and "sent upload_samples to cam-1" in sent.stdout, sent.stderr
        assert sub.wait_for(lambda m: _events(sub, "samples_uploaded"), timeout=30)
        assert len(samples()) == 2
        # the very same signed bytes, replayed by anyone who saw them: refused
        signed = [p for t, p, _ in sub.snapshot() if t.endswith("/commands") and b"command-envelope" in p][-1]
        (tmp_path / "replay.json").write_bytes(signed)
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/cam-1/commands", "-q", "1",
                        "-f", str(tmp_path / "replay.json")], check=True, timeout=10)
        assert sub.wait_for(lambda m: len(_events(sub, "command_rejected")) == 3, timeout=30)
        assert _events(sub, "command_rejected")[2]["code"] == "replay"
        assert len(samples()) == 2 and len(_events(sub, "samples_uploaded")) == 1
    finally:
        _stop(proc)
        sub.close()
    # and after a restart the replay is still refused (the accepted sequence is on disk, twice)
    assert json.loads((tmp_path / "cam-1" / "command_replay.json").read_text())["sequence"] > 0


def test_lost_replay_state_refuses_updates_until_an_operator_resets_it(tmp_path, broker, ota_keys, ota_packages):
    """Both copies of the accepted sequence and the update state file unreadable: the agent does not go back to 0
    (which would let every old signed document replay); it refuses, says so, and --reset-replay clears it."""
    cfg = device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"])
    state = tmp_path / "cam-1"
    fleet = FleetSide(broker.port, ota_keys["priv"])
    proc = spawn_agent(cfg, tmp_path / "agent.log")
    try:
        v2 = fleet.upload(ota_packages["v2"])
        fleet.desire(v2, "cam-1")
        assert _after(fleet, "cam-1", v2, lambda d: True)["state"] == "committed"
        _stop(proc)
        for name in ("desired_replay.json", "desired_replay.json.2", "update_state.json"):
            (state / name).write_text("{not json")
        fleet.clear("cam-1")
        proc = spawn_agent(cfg, tmp_path / "agent.log")
        lost = fleet.wait_for("cam-1", lambda d: d["replay_state"] != "ok", timeout=60)
        assert "--reset-replay" in lost["replay_state"] and lost["serving"] == "tiny-2.0.0"
        v3 = fleet.upload(ota_packages["v3"])
        fleet.desire(v3, "cam-1")
        refused = fleet.wait_for("cam-1", lambda d: d.get("rejected") == "replay_state_lost"
                                 and d.get("rejected_sequence") is not None and d["serving"] == "tiny-2.0.0")
        assert refused["state"] != "downloading"
        _stop(proc)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "agent", "--config", str(cfg),
                              "--reset-replay"], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        assert out.returncode == 0 and "replay state reset" in out.stdout, out.stderr
        fleet.clear("cam-1")
        proc = spawn_agent(cfg, tmp_path / "agent.log")
        # the retained v3 document was signed before the reset: refused as a replay, until it is re-published
        assert fleet.wait_for("cam-1", lambda d: d.get("rejected") == "replay")["replay_state"] == "ok"
        fleet.desire(v3, "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL and d["serving"] == "tiny-3.0.0")
        assert done["state"] == "committed"
    finally:
        fleet.close()
        _stop(proc)
