"""Fuzzing the device's command handler (signed fleet -> device commands): raw payloads, mutated envelopes, and
commands signed by a trusted operator key but hostile inside. Property: ``on_message`` never raises, each message is
counted once as accepted or rejected, each rejection is reported with a code, and an accepted command ran its action
with arguments inside the documented bounds."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.signing import TrustStore, sign_bytes
from edge_runtime.sync.commands import MAX_SAMPLES, CommandHandler, new_command, sign_command
from edge_runtime.sync.replay import SequenceStore
from tests.security.strategies import hostile_json

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])  # fmt: skip


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-commands")
    private, public = generate_keypair(root / "keys" / "ops")
    reports: list[tuple[str, dict]] = []
    ran: list = []
    handler = CommandHandler("cam-1", TrustStore.from_paths([public], ["operator"]),
                             SequenceStore(root / "commands.json"), lambda kind, body: reports.append((kind, body)))
    handler.register("upload_samples", ran.append)
    return {"key": load_private_key(private), "handler": handler, "reports": reports, "ran": ran}


def deliver(device: dict, payload: bytes) -> None:
    h, reports, ran = device["handler"], device["reports"], device["ran"]
    before = (h.counters["accepted"], h.counters["rejected"], len(reports), len(ran))
    h.on_message("edge/devices/cam-1/commands", payload)  # the network thread's call: must not raise
    accepted = h.counters["accepted"] - before[0]
    rejected = h.counters["rejected"] - before[1]
    assert (accepted, rejected) in ((1, 0), (0, 1), (1, 1)), (accepted, rejected)  # (1, 1): accepted, action refused
    if rejected:
        kind, body = reports[-1]
        assert len(reports) == before[2] + 1 and kind == "command_rejected" and body["code"], reports[-1]
    else:
        cmd = ran[-1]
        assert len(ran) == before[3] + 1 and cmd.device == "cam-1" and 1 <= cmd.max <= MAX_SAMPLES


@FUZZ
@given(data=st.data())
def test_any_payload_is_accepted_or_counted_and_reported(device, data) -> None:
    valid = json.loads(sign_command(new_command("cam-1", "upload_samples", max=5), device["key"]))
    deliver(device, data.draw(hostile_json(valid)))


@FUZZ
@given(data=st.data())
def test_signed_but_hostile_commands_are_refused_with_a_code(device, data) -> None:
    cmd = new_command("cam-1", "upload_samples", max=5).model_dump(mode="json", by_alias=True)
    cmd["sequence"] = time.time_ns()
    text = data.draw(hostile_json(cmd))
    sig = json.loads(sign_bytes(device["key"], text))
    envelope = {"schema": "command-envelope/1", "document": text.decode("utf-8", "replace"), "signature": sig}
    deliver(device, json.dumps(envelope).encode())


def test_a_replayed_command_is_refused(device) -> None:
    payload = sign_command(new_command("cam-1", "upload_samples", max=3), device["key"])
    deliver(device, payload)
    deliver(device, payload)
    assert device["reports"][-1][1]["code"] == "replay"
