"""Injected faults, one device in-process, real mosquitto: each case ends serving a verified model, saying why."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.update import transfer
from tests.update.harness import FleetSide, InProcessDevice, device_config

pytestmark = pytest.mark.mqtt
FINAL = ("committed", "failed")


def _run(tmp_path: Path, broker: Any, ota_keys: dict, initial: Path, **update: Any) -> tuple[FleetSide, Any]:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = InProcessDevice(device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], initial, **update))
    return fleet, dev.start()


def _tampered(src: Path, tmp: Path) -> Path:
    dst = tmp / "tampered"
    shutil.copytree(src, dst)
    data = bytearray((dst / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (dst / "model.onnx").write_bytes(bytes(data))
    return dst


# package key -> (expected code); the device stays on 1.0.0
REFUSED = [
    ("bad_golden", "smoke_test_failed"),
    ("other_profile", "wrong_profile"),
    ("unsigned", "signature_missing"),
    ("rogue", "untrusted_key"),
    ("tampered", "package_invalid"),
    ("nan", "unhealthy"),
    ("raising", "unhealthy"),
]


@pytest.mark.parametrize(("which", "code"), REFUSED)
def test_bad_package_is_refused_and_v1_keeps_serving(tmp_path, broker, ota_keys, ota_packages, which, code) -> None:
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"])
    try:
        pkg = _tampered(ota_packages["v2"], tmp_path) if which == "tampered" else ota_packages[which]
        fleet.desire(fleet.upload(pkg), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
    finally:
        stats = dev.stop()
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", code, "tiny-1.0.0"), done
    assert stats.version == "1.0.0"
    if which in ("nan", "raising"):  # the bad model served in its health window; the device switched back itself
        assert fleet.states("cam-1")[-3:] == ["health_check", "rolling_back", "failed"]
        assert done["health"]["error_rate"] > 0.5
    if which == "raising":  # every attempt raised inside onnxruntime: counted, typed, and the pipeline went on
        assert "inference errors 100% over" in done["reason"], done
        assert done["health"]["raised"] == done["health"]["attempts"] >= 5
        assert stats.inference_errors >= 5 and stats.last_error.startswith("onnxruntime failed during inference")


def test_document_signed_by_untrusted_key_is_ignored(tmp_path, broker, ota_keys, ota_packages) -> None:
    from edge_runtime.package import load_private_key

    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"])
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1", key=load_private_key(ota_keys["rogue_priv"]))
        done = fleet.wait_for("cam-1", lambda d: d.get("rejected") is not None)
    finally:
        dev.stop()
        fleet.close()
    assert done["rejected"] == "untrusted_key" and done["state"] == "idle" and done["serving"] == "tiny-1.0.0"


def test_downgrade_and_replay_are_refused(tmp_path, broker, ota_keys, ota_packages) -> None:
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"])
    try:
        v2, v3 = fleet.upload(ota_packages["v2"]), fleet.upload(ota_packages["v3"])
        fleet.desire(v2, "cam-1")
        fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-2.0.0")
        captured = fleet.link  # an attacker who recorded the v2 envelope replays it after v3 is installed
        old_envelope = _envelope_for(fleet, v2)
        fleet.desire(v3, "cam-1")
        fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-3.0.0")
        fleet.clear("cam-1")
        captured.publish(fleet.topics.desired("cam-1"), old_envelope, retain=True).wait(5)
        replay = fleet.wait_for("cam-1", lambda d: d.get("rejected") is not None)
        fleet.clear("cam-1")
        fleet.desire(v2, "cam-1")  # freshly signed, but older and not marked as a rollback
        down = fleet.wait_for("cam-1", lambda d: d["state"] == "failed")
        fleet.clear("cam-1")
        fleet.desire(v2, "cam-1", rollback=True)  # an explicit, signed rollback is allowed (and local: no download)
        back = fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-2.0.0")
    finally:
        dev.stop()
        fleet.close()
    assert replay["rejected"] == "replay" and replay["serving"] == "tiny-3.0.0"
    assert down["code"] == "downgrade" and down["serving"] == "tiny-3.0.0"
    assert back["rollback"] is True


def _envelope_for(fleet: FleetSide, pub: Any) -> bytes:
    from edge_runtime.update.desired import DesiredModel, sign_desired

    doc = DesiredModel(scope="device", target="cam-1", name=pub.name, version=pub.version, profile=pub.profile,
                       package_id=pub.meta.package_id, sha256=pub.meta.sha256, size=pub.meta.size, sequence=5,
                       issued=0.0)
    return sign_desired(doc, fleet.key)


def test_chunk_corrupted_in_transit_is_fetched_again(tmp_path, broker, ota_keys, ota_packages) -> None:
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"], transfer={"window": 1, "resubscribe_s": 0.5})
    try:
        pub = fleet.upload(ota_packages["v2"], chunk_size=16 * 1024)
        topic = fleet.topics.package_chunk(pub.meta.package_id, 1)
        good = _chunk(ota_packages["v2"], 1, 16 * 1024)
        fleet.link.publish(topic, b"\x00" * len(good), retain=True).wait(5)
        fleet.desire(pub, "cam-1")
        fleet.wait_for("cam-1", lambda d: d["code"] == "chunk_corrupt")
        fleet.link.publish(topic, good, retain=True).wait(5)  # the next fetch gets intact bytes
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
    finally:
        dev.stop()
        fleet.close()
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), done


def _chunk(pkg: Path, i: int, size: int) -> bytes:
    from fleet.publish import as_archive

    return as_archive(pkg).read_bytes()[i * size : (i + 1) * size]


def test_broker_restart_mid_transfer_resumes(tmp_path, broker, ota_keys, ota_packages) -> None:
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"], transfer={"window": 2, "resubscribe_s": 0.5})
    try:
        pub = fleet.upload(ota_packages["v2"], chunk_size=8 * 1024)
        n = len(pub.meta.chunk_sha256)
        for i in range(n // 2, n):  # the second half is not on the broker yet: the device must stop mid-way
            fleet.link.publish(fleet.topics.package_chunk(pub.meta.package_id, i), b"", retain=True).wait(5)
        fleet.desire(pub, "cam-1")
        mid = fleet.wait_for("cam-1", lambda d: 0 < d["progress"] < 1)
        broker.restart()
        assert fleet.link.wait_connected(10)
        fleet.upload(ota_packages["v2"], chunk_size=8 * 1024)
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL, timeout=40)
    finally:
        dev.stop()
        fleet.close()
    assert mid["state"] == "downloading"
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), done


def test_disk_full_injected_enospc(tmp_path, broker, ota_keys, ota_packages, monkeypatch) -> None:
    def no_space(self, out, data, what):  # type: ignore[no-untyped-def]
        raise transfer._write_error(OSError(errno.ENOSPC, "No space left on device"), what)

    monkeypatch.setattr(transfer.ChunkDownloader, "_append", no_space)
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"])
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
    finally:
        stats = dev.stop()
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", "disk_full", "tiny-1.0.0"), done
    assert stats.errors == 0


def test_disk_budget_too_small(tmp_path, broker, ota_keys, ota_packages) -> None:
    fleet, dev = _run(tmp_path, broker, ota_keys, ota_packages["v1"], max_disk_mb=0.15)
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
    finally:
        dev.stop()
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", "disk_full", "tiny-1.0.0"), done
