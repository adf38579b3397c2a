"""Signed commands: only an operator-signed, unexpired, newer command for this device is accepted."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.signing import TrustStore, sign_bytes
from edge_runtime.sync.commands import (
    MAX_COMMAND_BYTES,
    CommandHandler,
    CommandRejected,
    new_command,
    open_command,
    sign_command,
)
from edge_runtime.sync.replay import SequenceStore


@pytest.fixture(scope="module")
def keys(tmp_path_factory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("cmd-keys")
    op, rel, rogue = (generate_keypair(d / n) for n in ("operator", "release", "rogue"))
    trust = TrustStore.from_paths([op[1]], ["operator"]) | TrustStore.from_paths([rel[1]], ["release"])
    return {"op": load_private_key(op[0]), "rel": load_private_key(rel[0]), "rogue": load_private_key(rogue[0]),
            "trust": trust}


def _signed_text(text: str, key) -> bytes:  # noqa: ANN001
    return json.dumps({"schema": "command-envelope/1", "document": text,
                       "signature": json.loads(sign_bytes(key, text.encode()))}).encode()


def test_an_operator_signed_command_opens(keys):
    cmd = new_command("cam-1", "upload_samples", max=20)
    got = open_command(sign_command(cmd, keys["op"]), keys["trust"], "cam-1")
    assert got == cmd and got.max == 20


def _code(payload: bytes, keys, device: str = "cam-1", now: float | None = None) -> str:  # noqa: ANN001
    with pytest.raises(CommandRejected) as err:
        open_command(payload, keys["trust"], device, now)
    return err.value.code


def test_refusals_each_with_its_code(keys):
    cmd = new_command("cam-1", "upload_samples", ttl_s=60, max=5)
    good = sign_command(cmd, keys["op"])
    assert _code(json.dumps({"command": "upload_samples", "max": 1000000}).encode(), keys) == "unsigned"
    assert _code(sign_command(cmd, keys["rogue"]), keys) == "untrusted_key"
    assert _code(sign_command(cmd, keys["rel"]), keys) == "wrong_role"  # a build key cannot command devices
    assert _code(good, keys, device="cam-2") == "wrong_target"
    assert _code(good, keys, now=time.time() + 61) == "expired"
    env = json.loads(good)
    env["document"] = env["document"].replace('"max": 5', '"max": 6')
    assert _code(json.dumps(env).encode(), keys) == "signature_invalid"  # tampered after signing
    assert _code(b"[" * 10_000, keys) == "malformed"
    assert _code(b"x" * (MAX_COMMAND_BYTES + 1), keys) == "too_large"
    doc = json.loads(env["document"])
    for bad in ({"max": 1000000}, {"max": 0}, {"expires": doc["issued"] + 10 * 86400}, {"extra": 1},
                {"command": "shell"}, {"ids": ["x"] * 101}):
        assert _code(_signed_text(json.dumps({**doc, **bad}), keys["op"]), keys) == "malformed", bad
    with pytest.raises(CommandRejected) as err:
        open_command(good, TrustStore({}), "cam-1")
    assert err.value.code == "no_trusted_keys"


def test_handler_accepts_once_and_reports_every_refusal(tmp_path, keys):
    reports, done = [], []
    h = CommandHandler("cam-1", keys["trust"], SequenceStore(tmp_path / "c.json"), lambda k, b: reports.append(b))
    h.register("upload_samples", lambda c: done.append(c.request_id))
    first = sign_command(new_command("cam-1", "upload_samples"), keys["op"])
    second = sign_command(new_command("cam-1", "upload_samples"), keys["op"])
    h.on_message("t", first)
    h.on_message("t", first)  # replayed
    h.on_message("t", b"{broken")
    h.on_message("t", second)
    h2 = CommandHandler("cam-1", keys["trust"], SequenceStore(tmp_path / "c.json"), lambda k, b: reports.append(b))
    h2.register("upload_samples", lambda c: done.append(c.request_id))
    h2.on_message("t", second)  # after a restart: still a replay
    assert len(done) == 2 and h.counters == {"accepted": 2, "rejected": 2}
    assert [r["code"] for r in reports] == ["replay", "malformed", "replay"]


@pytest.mark.mqtt
def test_run_and_serve_take_operator_keys_from_the_device_config(tmp_path, broker, signing_keys):
    """`run`/`serve` build their services from the device config: its trust.operator keys verify commands (the
    replay state sits beside the outbox); without them every command is refused and reported."""
    from edge_runtime.device_config import parse_device_config
    from edge_runtime.monitoring.service import start_services
    from tests.sync.subscriber import Subscriber

    priv, pub = signing_keys
    base = {"device_id": "cam-1", "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "outbox": {"path": "outbox.db"}, "forwarder": {"poll_s": 0.1}, "monitor": {"period_s": 3600}}
    sub = Subscriber(broker.port, ["edge/devices/cam-1/events"])
    seen = lambda kind: [r["data"] for _, p, _ in sub.snapshot() for r in json.loads(p)["records"]  # noqa: E731
                         if r["data"]["type"] == kind]
    cmd = sign_command(new_command("cam-1", "upload_samples"), load_private_key(priv))
    try:
        for trust, kind in ((None, "command_rejected"), ({"operator": [str(pub)]}, "samples_uploaded")):
            cfg = parse_device_config({**base, **({"trust": trust} if trust else {})}, tmp_path)
            services = start_services(cfg, http=False)
            try:
                assert services.link.wait_connected(10)
                subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/cam-1/commands", "-q",
                                "1", "-m", cmd.decode()], check=True, timeout=10)
                assert sub.wait_for(lambda m, kind=kind: seen(kind), timeout=20), kind
            finally:
                services.close()
        assert seen("command_rejected")[0]["code"] == "no_trusted_keys"
        assert seen("samples_uploaded")[0]["error"] == "disabled"  # accepted; this device captures no samples
        assert (tmp_path / "command_replay.json").is_file()
    finally:
        sub.close()


def test_fleet_command_checks_its_arguments_before_connecting(tmp_path, signing_keys):
    import sys

    from tests.update.harness import REPO

    out = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "fleet", "--broker", "mqtt://127.0.0.1:9",
                          "command", "cam-1", "upload_samples", "--max", "1000000", "--key", str(signing_keys[0])],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "max" in out.stderr and len(out.stderr.strip().splitlines()) == 1
