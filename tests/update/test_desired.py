"""The signed desired document: envelope checks, device-over-group resolution, pin vs follow latest, replays.

Unit tests on the document functions, then real update agents (fleet.simulate: the real agent, verification and
transfer, no inference) on a real mosquitto for pinning, group following and device overrides.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.package import TrustStore, load_private_key
from edge_runtime.update.desired import DesiredModel, SignedDesired, open_desired, pin_allows, resolve, sign_desired
from edge_runtime.update.errors import VerificationError
from fleet.simulate import SimDevice
from tests.update.harness import FleetSide


def _doc(version: str = "2.0.0", seq: int = 1, scope: str = "device", target: str = "cam-1") -> DesiredModel:
    return DesiredModel.model_validate({
        "scope": scope, "target": target, "name": "tiny", "version": version, "profile": "x86-laptop",
        "package_id": "ab" * 12, "sha256": "cd" * 32, "size": 100, "sequence": seq, "issued": 0.0,
    })  # fmt: skip


def _code(payload: bytes, trust: TrustStore) -> str:
    with pytest.raises(VerificationError) as info:
        open_desired(payload, trust)
    return info.value.code


def test_envelope_signature_is_checked(ota_keys) -> None:
    trust = TrustStore.from_paths([ota_keys["pub"]])
    env = sign_desired(_doc(), load_private_key(ota_keys["priv"]))
    opened = open_desired(env, trust)
    assert opened.document == _doc()
    # the broker (or anyone who can write to it) changes the version inside the signed text
    forged = json.loads(env)
    forged["document"] = forged["document"].replace('"2.0.0"', '"9.0.0"')
    assert _code(json.dumps(forged).encode(), trust) == "signature_invalid"
    assert _code(sign_desired(_doc(), load_private_key(ota_keys["rogue_priv"])), trust) == "untrusted_key"
    assert _code(b"not json", trust) == "desired_malformed"
    assert _code(json.dumps({"schema": "desired-envelope/0"}).encode(), trust) == "desired_malformed"
    unsigned = json.loads(env)
    del unsigned["signature"]
    assert _code(json.dumps(unsigned).encode(), trust) == "desired_malformed"
    # hostile sizes and shapes: refused with a code (reported by the agent), never another exception
    assert _code(b"[" * 100_000, trust) == "too_large"
    assert _code(b"[" * 60_000, trust) == "desired_malformed"  # under the size limit, deeper than json can parse
    assert _code(b" " * (100 << 20), trust) == "too_large"  # refused on its length, unparsed
    assert _code(json.dumps({"schema": "x" * 50_000}).encode(), trust) == "desired_malformed"


def _signed(doc: DesiredModel) -> SignedDesired:
    return SignedDesired(doc, "fleet")


def test_device_document_overrides_every_group_document() -> None:
    dev = _signed(_doc("2.0.0", seq=1))
    lobby = _signed(_doc("3.0.0", seq=5, scope="group", target="lobby"))
    hall = _signed(_doc("4.0.0", seq=9, scope="group", target="hall"))
    assert resolve(dev, [lobby, hall]) is dev  # even though the groups' documents are newer
    assert resolve(None, [lobby, hall]) is hall  # among groups the newest document wins
    assert resolve(None, []) is None


def test_pin_follows_only_the_pinned_version() -> None:
    assert pin_allows(_doc("3.0.0"), None)  # follow latest
    assert pin_allows(_doc("2.0.0"), "2.0.0")
    assert not pin_allows(_doc("3.0.0"), "2.0.0")


@pytest.mark.mqtt
def test_pin_follow_and_override_on_real_agents(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    common = {"groups": ("lobby",)}
    devs = {
        "follower": SimDevice("follower", tmp_path / "f", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                              **common),
        "pinned": SimDevice("pinned", tmp_path / "p", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                            pin_version="2.0.0", **common),
        "override": SimDevice("override", tmp_path / "o", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                              **common),
    }
    try:
        for d in devs.values():
            d.start()
        v2, v3 = fleet.upload(ota_packages["v2"]), fleet.upload(ota_packages["v3"])
        fleet.desire(v2, "override")  # a per-device document ...
        fleet.desire(v3, "group:lobby")  # ... and a newer one for the whole group
        follow = fleet.wait_for("follower", lambda s: s["state"] == "committed")
        over = fleet.wait_for("override", lambda s: s["state"] == "committed")
        refused = fleet.wait_for("pinned", lambda s: s.get("rejected") is not None)
        fleet.desire(v2, "pinned")  # the version it is pinned to
        pinned = fleet.wait_for("pinned", lambda s: s["state"] == "committed")
    finally:
        for d in devs.values():
            d.stop()
        fleet.close()
    assert follow["serving"] == "tiny-3.0.0"  # follows the latest document of its group
    assert over["serving"] == "tiny-2.0.0"  # its own document wins over the group's
    assert (refused["rejected"], refused["serving"]) == ("pinned", "tiny-1.0.0")
    assert pinned["serving"] == "tiny-2.0.0"
    assert "3.0.0" not in {s["target_version"] for s in fleet.statuses["pinned"]}  # never even downloaded


@pytest.mark.mqtt
def test_group_document_copied_to_another_group_is_refused(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = SimDevice("hall-1", tmp_path / "h", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                    groups=("hall",)).start()
    try:
        from fleet.publish import desired_for

        v2 = fleet.upload(ota_packages["v2"])
        envelope = sign_desired(desired_for(v2, "group:lobby"), fleet.key)  # genuinely signed, for the lobby
        fleet.link.publish(fleet.topics.group_desired("hall"), envelope, retain=True).wait(5)
        refused = fleet.wait_for("hall-1", lambda s: s.get("rejected") is not None)
    finally:
        dev.stop()
        fleet.close()
    assert (refused["rejected"], refused["serving"]) == ("wrong_target", "tiny-1.0.0")


@pytest.mark.parametrize("bad", [{"name": "../../etc"}, {"name": "a/b"}, {"version": "1.0.0/../../x"},
                                 {"version": ".."}, {"version": "latest"}])
def test_a_signed_document_whose_name_or_version_is_not_a_plain_slot_name_is_refused(ota_keys, bad) -> None:
    """name-version becomes a slot directory: a signed document must not point it outside the slot root."""
    text = json.dumps({**_doc().model_dump(mode="json", by_alias=True), **bad}, sort_keys=True)
    from edge_runtime.package.signing import sign_bytes

    sig = json.loads(sign_bytes(load_private_key(ota_keys["priv"]), text.encode()))
    payload = json.dumps({"schema": "desired-envelope/1", "document": text, "signature": sig}).encode()
    assert _code(payload, TrustStore.from_paths([ota_keys["pub"]])) == "desired_malformed"
