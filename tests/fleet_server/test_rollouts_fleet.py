"""Server-side rollouts with real parts: a real mosquitto, the real `edge-runtime fleet serve` (SQLite and PostgreSQL)
killed with SIGKILL mid-rollout and restarted, three real `edge-runtime agent` processes in group lobby, the CLI.
A rollout resumes where it stood and finishes; a second one is paused, resumed and aborted, and rolls back."""

from __future__ import annotations

import json

import pytest

from edge_runtime.package import generate_keypair, load_private_key
from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import stop_all, wait_until
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto
from tests.update.harness import device_config, spawn_agent

pytestmark = pytest.mark.mqtt
DEVICES = ("cam-1", "cam-2", "cam-3")


def _state(server: FleetServer, rid: int) -> str | None:
    code, r = server.get(f"/api/v1/rollouts/{rid}")
    return r["state"] if code == 200 else None


def test_a_rollout_survives_a_server_kill_and_an_aborted_one_rolls_back(tmp_path, db_url):
    priv, pub = generate_keypair(tmp_path / "keys" / "fleet")
    key = load_private_key(priv)
    pkgs = {v: classifier_package(tmp_path / v, version=v, sign_key=key, seed=i).root
            for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0"))}
    db = db_url
    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db, tmp_path / "fleet", extra=("--operator-key", str(priv)))
    server.token = add_user(db, "olga", "operator")
    env = {"EDGE_FLEET_TOKEN": server.token, "EDGE_FLEET_SERVER": server.url}
    agents = []
    try:
        server.start()
        for dev in DEVICES:
            cfg = device_config(tmp_path, dev, broker.port, pub, pkgs["1.0.0"],
                                {"monitoring": {"monitor": {"period_s": 0.5}}}, groups=["lobby"], live_report_s=1)
            agents.append(spawn_agent(cfg, tmp_path / f"{dev}.log"))
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "1.0.0")), 90)
        for root in pkgs.values():
            assert cli("registry", "register", str(root), env=env).returncode == 0
        # given a rollout of 2.0.0 to the group: canary cam-1, a 4 s window, then two waves
        r = cli("registry", "--json", "rollout", "tiny", "2.0.0", "--target", "group:lobby", "--canary", "cam-1",
                "--waves", "2", "--window", "4", "--timeout", "120", env=env)
        assert r.returncode == 0, r.stderr
        rid = json.loads(r.stdout)["id"]
        # when the server is killed (SIGKILL) while the canary is being watched, and started again
        wait_until(lambda: _state(server, rid) == "watching", 120)
        server.kill()
        server.start()
        # then the rollout goes on from there to the end: every device on 2.0.0, production moved for the group
        wait_until(lambda: _state(server, rid) in ("done", "failed"), 180)
        job = server.get(f"/api/v1/rollouts/{rid}")[1]
        events = [s["event"] for s in job["steps"]]
        assert job["state"] == "done", (job["reason"], events)
        assert events == ["create", "committed", "pass", "wave_done", "last_wave_done", "promoted"]
        verdict = job["steps"][2]["figures"]
        assert verdict["canary"]["records"] >= 3 and verdict["control"]["devices"] == 2, verdict
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)
        model = server.get("/api/v1/registry/models/tiny")[1]
        assert model["aliases"]["production"] == {**model["aliases"]["production"], "version": "2.0.0",
                                                  "target": "group:lobby"}
        # when a second rollout (3.0.0) is paused while watching, resumed, then aborted
        r = cli("registry", "--json", "rollout", "tiny", "3.0.0", "--target", "group:lobby", "--canary", "cam-2",
                "--window", "600", env=env)
        assert r.returncode == 0, r.stderr
        rid2 = json.loads(r.stdout)["id"]
        wait_until(lambda: _state(server, rid2) == "watching", 120)
        assert cli("registry", "pause", str(rid2), env=env).stdout.strip() == f"rollout {rid2}: paused"
        assert cli("registry", "resume", str(rid2), env=env).stdout.strip() == f"rollout {rid2}: watching"
        assert cli("registry", "abort", str(rid2), env=env).returncode == 0
        # then the canary is rolled back to 2.0.0 and the rollout ends aborted, every step recorded and audited
        wait_until(lambda: _state(server, rid2) == "aborted", 120)
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)
        steps = [(s["event"], s["user"]) for s in server.get(f"/api/v1/rollouts/{rid2}")[1]["steps"]]
        assert steps[1:] == [("committed", f"rollout:{rid2}"), ("pause", "olga"), ("resume", "olga"),
                             ("abort", "olga"), ("aborted", f"rollout:{rid2}")]
        r = cli("registry", "resume", str(rid2), env=env)
        assert r.returncode == 2 and "not possible now" in r.stderr
        audited = {a["action"] for a in server.get("/api/v1/audit")[1]["items"]}
        assert {"rollout", "rollout_pause", "rollout_resume", "rollout_abort"} <= audited
    finally:
        stop_all(agents)
        server.stop()
        broker.stop()
