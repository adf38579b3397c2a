"""Promote and revert with real parts: a real mosquitto, the real `edge-runtime fleet serve` (SQLite), two real
`edge-runtime agent` processes in group lobby, and the `edge-runtime registry` CLI. A canary's own per-device
document is superseded by the group promotion (its document is cleared), and revert brings the group back.
Prints the time from `promote` to the whole test fleet serving the new version, and from `revert` back."""

from __future__ import annotations

import json
import time

import pytest

from edge_runtime.package import generate_keypair, load_private_key
from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import stop_all, wait_until
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto
from tests.update.harness import device_config, spawn_agent

pytestmark = pytest.mark.mqtt
DEVICES = ("cam-1", "cam-2")


def _follows(env: dict[str, str]) -> dict[str, str]:
    r = cli("fleet", "status", "--server", env["EDGE_FLEET_SERVER"], env=env)
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    col = head.split().index("follows")
    return {row.split()[0]: row.split()[col] for row in rows}


def test_promote_to_a_group_supersedes_a_canary_document_and_revert_brings_the_fleet_back(tmp_path):
    # given signed packages 1.0.0 (serving), 2.0.0 and 3.0.0, one key for releases and operator documents
    priv, pub = generate_keypair(tmp_path / "keys" / "fleet")
    key = load_private_key(priv)
    pkgs = {v: classifier_package(tmp_path / v, version=v, sign_key=key, seed=i).root
            for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0"))}
    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path / "fleet",
                         extra=("--operator-key", str(priv)))
    token = add_user(f"sqlite:///{tmp_path / 'fleet.db'}", "olga", "operator")
    server.token = token
    env = {"EDGE_FLEET_SERVER": "", "EDGE_FLEET_TOKEN": token}
    agents = []
    try:
        server.start()
        env["EDGE_FLEET_SERVER"] = server.url
        for dev in DEVICES:
            cfg = device_config(tmp_path, dev, broker.port, pub, pkgs["1.0.0"], groups=["lobby"], live_report_s=1)
            agents.append(spawn_agent(cfg, tmp_path / f"{dev}.log"))
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "1.0.0"))
                   and all(server.get(f"/api/v1/devices/{d}")[1].get("groups") == ["lobby"] for d in DEVICES), 90)
        # when the three versions are registered through the CLI, each the child of the one before
        parent = None
        for v, root in pkgs.items():
            args = ["registry", "register", str(root)] + (["--parent", parent] if parent else [])
            r = cli(*args, env=env)
            assert r.returncode == 0 and f"registered tiny {v}" in r.stdout, r.stderr
            parent = v
        r = cli("registry", "lineage", "tiny", "3.0.0", env=env)
        assert r.returncode == 0 and [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("tiny ")] \
            == ["3.0.0", "2.0.0", "1.0.0"], r.stdout
        # and production is 1.0.0 for the group, then 2.0.0 goes to cam-1 alone as a canary (its own document)
        assert cli("registry", "promote", "tiny", "1.0.0", "--target", "group:lobby", env=env).returncode == 0
        r = cli("registry", "promote", "tiny", "2.0.0", "--alias", "canary", "--target", "cam-1", env=env)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: server.serving({"cam-1": "2.0.0", "cam-2": "1.0.0"}), 90)
        assert wait_until(lambda: _follows(env) == {"cam-1": "device", "cam-2": "group:lobby"}, 30)
        # and then production moves to 3.0.0 for the group
        t0 = time.monotonic()
        r = cli("registry", "--json", "promote", "tiny", "3.0.0", env=env)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        # then the canary's own document was cleared and every device serves 3.0.0
        assert out["target"] == "group:lobby" and out["cleared_device_documents"] == list(DEVICES)
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "3.0.0")), 120)
        promote_s = time.monotonic() - t0
        # and `fleet status` shows every device following the group's document now
        assert wait_until(lambda: _follows(env) == dict.fromkeys(DEVICES, "group:lobby"), 30)
        # when production is reverted, then every device is back on 1.0.0 (a signed rollback document)
        t0 = time.monotonic()
        r = cli("registry", "revert", "tiny", env=env)
        assert r.returncode == 0 and "3.0.0 -> 1.0.0 for group:lobby" in r.stdout, (r.stdout, r.stderr)
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "1.0.0")), 120)
        revert_s = time.monotonic() - t0
        print(f"\nregistry: promote -> {len(DEVICES)} devices serving 3.0.0 in {promote_s:.1f} s; "
              f"revert -> back on 1.0.0 in {revert_s:.1f} s")
        # and the registry shows the aliases, the audit log every move
        r = cli("registry", "show", "tiny", env=env)
        assert r.returncode == 0 and "production->group:lobby" in r.stdout and "canary->cam-1" in r.stdout
        actions = [(a["action"], a["outcome"]) for a in server.get("/api/v1/audit")[1]["items"]]
        assert actions.count(("promote", "done")) == 3 and ("revert", "done") in actions
        # and a user mistake is one line and exit 2
        r = cli("registry", "promote", "tiny", "9.9.9", env=env)
        assert r.returncode == 2 and "not registered" in r.stderr and "Traceback" not in r.stderr
    finally:
        stop_all(agents)
        server.stop()
        broker.stop()
