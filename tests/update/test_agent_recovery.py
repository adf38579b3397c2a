"""Robustness of the agent itself: offers that arrive while it is busy, and failures after the swap.

Real mosquitto, real packages, one device in-process; faults are injected by replacing one method of the real
pipeline or agent (the harness's documented way), never by mocking the update steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.update.states import State
from fleet.publish import desired_for
from tests.update.harness import FleetSide, InProcessDevice, device_config

pytestmark = pytest.mark.mqtt
FINAL = ("committed", "failed")


def _device(tmp_path: Path, broker: Any, ota_keys: dict, initial: Path, **update: Any) -> InProcessDevice:
    return InProcessDevice(device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], initial, **update))


def test_a_failing_swap_leaves_the_old_model_serving_and_the_machine_at_rest(tmp_path, broker, ota_keys,
                                                                             ota_packages) -> None:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = _device(tmp_path, broker, ota_keys, ota_packages["v1"]).start()
    real_swap = dev.pipeline.swap_model
    calls: list[str] = []

    def broken_swap(model: Any) -> Any:
        calls.append(model.manifest.version)
        if model.manifest.version == "2.0.0":
            raise RuntimeError("the host could not take the new model")
        return real_swap(model)

    dev.pipeline.swap_model = broken_swap
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
        assert dev.agent.machine.resting
    finally:
        stats = dev.stop()
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", "internal_error", "tiny-1.0.0"), done
    assert stats.version == "1.0.0" and calls[0] == "2.0.0"


def test_an_error_during_the_health_window_swaps_the_old_model_back(tmp_path, broker, ota_keys, ota_packages,
                                                                    monkeypatch) -> None:
    """Before: the exception left the machine in health_check with the unverified model serving for good."""
    from edge_runtime.update.health import HealthWindow

    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = _device(tmp_path, broker, ota_keys, ota_packages["v1"]).start()
    swapped: list[str] = []
    real_swap = dev.pipeline.swap_model

    def watched_swap(model: Any) -> Any:
        swapped.append(model.manifest.version)
        return real_swap(model)

    def broken_verdict(self: HealthWindow) -> Any:
        raise OSError("health statistics unreadable")

    dev.pipeline.swap_model = watched_swap
    monkeypatch.setattr(HealthWindow, "verdict", broken_verdict)
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
    finally:
        stats = dev.stop()
        fleet.close()
    assert (done["state"], done["code"], done["serving"]) == ("failed", "internal_error", "tiny-1.0.0"), done
    assert swapped == ["2.0.0", "1.0.0"] and stats.version == "1.0.0"
    assert fleet.states("cam-1")[-2:] == ["rolling_back", "failed"]


def test_an_offer_arriving_while_an_interrupted_update_resumes_is_applied_after_it(tmp_path, broker, ota_keys,
                                                                                   ota_packages) -> None:
    """The device restarts mid-download of v2 while the fleet already wants v3 (retained): it must end on v3."""
    from edge_runtime.commands.agent import seed_initial
    from edge_runtime.update.agent import UpdateAgent
    from edge_runtime.update.runtime import PackageRuntime
    from edge_runtime.update.settings import UpdateSettings
    from edge_runtime.update.states import Event

    fleet = FleetSide(broker.port, ota_keys["priv"])
    v2, v3 = fleet.upload(ota_packages["v2"]), fleet.upload(ota_packages["v3"])
    dev = _device(tmp_path, broker, ota_keys, ota_packages["v1"])
    c = dev.cfg
    # What a power cut during the v2 download leaves on disk: state downloading, the document it applies.
    settings = UpdateSettings(device_id=c.device_id, profile=c.profile, state_dir=c.state_dir,
                              trusted_keys=tuple(c.trusted_keys))
    before = UpdateAgent(settings, fleet.link, PackageRuntime(c.profile, None))
    seed_initial(before, c.initial_package)
    doc2 = fleet.desire(v2, "cam-1")
    before.ctx.save_doc(doc2)
    before.machine.fire(Event.UPDATE_OFFERED, "v2", package_id=doc2.package_id, target_version=doc2.version,
                        target_key="tiny-2.0.0", from_key="tiny-1.0.0", sequence=doc2.sequence)
    assert before.machine.state is State.DOWNLOADING
    fleet.desire(v3, "cam-1")  # replaces the retained v2 document
    fleet.clear("cam-1")
    dev.start()
    try:
        done = fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-3.0.0",
                              timeout=60)
    finally:
        stats = dev.stop()
        fleet.close()
    assert done["target_version"] == "3.0.0" and stats.version == "3.0.0"
    assert "tiny-2.0.0" in [d["serving"] for d in fleet.statuses["cam-1"]]  # the interrupted v2 finished first


def test_an_older_signed_rollback_queued_behind_a_newer_update_is_refused_as_a_replay(tmp_path, broker, ota_keys,
                                                                                      ota_packages) -> None:
    """A rollback document signed earlier (sequence b) but superseded by v3 (sequence c > b) is replayed while v3
    downloads: it passes the arrival check (v3 is not accepted yet), so the worker must check it again."""
    from edge_runtime.update.desired import sign_desired

    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = _device(tmp_path, broker, ota_keys, ota_packages["v1"], dwell_s={"downloading": 1.5}).start()
    try:
        v2, v3 = fleet.upload(ota_packages["v2"]), fleet.upload(ota_packages["v3"])
        old_rollback = sign_desired(desired_for(v2, "cam-1", rollback=True), fleet.key)  # recorded by an attacker
        doc3 = fleet.desire(v3, "cam-1")
        fleet.wait_for("cam-1", lambda d: d["state"] == "downloading")
        fleet.link.publish(fleet.topics.desired("cam-1"), old_rollback, retain=True).wait(10)
        seq = json.loads(json.loads(old_rollback)["document"])["sequence"]
        assert seq < doc3.sequence
        done = fleet.wait_for("cam-1", lambda d: d.get("rejected_sequence") == seq or d["serving"] == "tiny-2.0.0")
        fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-3.0.0")
    finally:
        stats = dev.stop()
        fleet.close()
    assert done["rejected"] == "replay" and done["serving"] == "tiny-3.0.0", done
    assert stats.version == "3.0.0"


def test_rollbacks_keep_the_rollback_target_and_the_version_bound(tmp_path, broker, ota_keys, ota_packages) -> None:
    """v1 -> v2 commits; two models that fail their health window are switched back. Afterwards v2 serves with v1
    still its instant rollback target (before: previous became null) and no more than keep_versions stay installed
    (before: every failed version stayed)."""
    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = _device(tmp_path, broker, ota_keys, ota_packages["v1"], keep_versions=2).start()
    try:
        fleet.desire(fleet.upload(ota_packages["v2"]), "cam-1")
        fleet.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-2.0.0")
        for bad in ("nan", "raising"):
            fleet.clear("cam-1")
            fleet.desire(fleet.upload(ota_packages[bad]), "cam-1")
            done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
            assert (done["state"], done["serving"]) == ("failed", "tiny-2.0.0"), done
        slots = dev.agent.slots  # keyed by content: compare what each slot holds
        pointers = slots.pointers()
        active, previous = slots.name_version(pointers.active), slots.name_version(pointers.previous)
        installed = {slots.name_version(k) for k in slots.keys()}
    finally:
        dev.stop()
        fleet.close()
    assert (active, previous) == (("tiny", "2.0.0"), ("tiny", "1.0.0"))
    assert installed == {("tiny", "1.0.0"), ("tiny", "2.0.0")}
