"""A rollout survives a server kill -9 at each of its stages.

Real parts: one mosquitto, the real `edge-runtime fleet serve` on SQLite (killed with SIGKILL and started again on
the same database), three devices running the real update agent (``fleet.simulate.SimDevice``: signed desired
documents, chunked transfer, package verification, A/B slots, update status) and sending real metrics/1 records
in batch/1 messages for the version each one serves (``fleet.server.loadgen``). The test watches the database for
each state of the transition table, kills the server right then, restarts it, and checks that the rollout ends as
an unkilled one does: the same steps in the same order, each verdict once, the alias moved once, every stage's
desired document published and every device on the right version.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.package import generate_keypair, load_private_key
from fleet.server.loadgen import Publisher, metric_record
from fleet.simulate import SimDevice
from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import wait_until
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt
DEVICES = ("cam-1", "cam-2", "cam-3")


class Desired:
    """Every desired document the broker carries (device and group topics), as (scope, target, version)."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="desired-watch", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([("edge/devices/+/desired", 1),
                                                            ("edge/groups/+/desired", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            return  # a cleared device document
        doc = json.loads(json.loads(msg.payload)["document"])
        with self._lock:
            self.seen.append((doc["scope"], doc["target"], doc["version"]))

    def targets(self, version: str) -> set[str]:
        with self._lock:
            return {f"{s}:{t}" for s, t, v in self.seen if v == version}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Feeder:
    """Each device's metric records every 0.2 s, for the version it serves; ``errors[version]`` errors per
    record of 10 frames (a regression only that version shows)."""

    def __init__(self, port: int, devices: dict[str, SimDevice]) -> None:
        self.pub, self.devices = Publisher(port, client_id="metrics-feed"), devices
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)  # noqa: S311 - simulated figures
        while not self._stop.wait(0.2):
            for dev, sim in self.devices.items():
                version = getattr(getattr(sim.agent.live, "manifest", None), "version", None)
                if version is None:
                    continue
                rec = metric_record(dev, time.time(), version, rng, model="tiny")
                rec["pipeline"]["errors"] = self.errors.get(version, 0)
                self.pub.send(dev, [rec])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close()


class Fleet:
    def __init__(self, root: Path) -> None:
        priv, pub = generate_keypair(root / "keys" / "fleet")
        key = load_private_key(priv)
        self.pkgs = {v: classifier_package(root / v, version=v, sign_key=key, seed=i).root
                     for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0"))}
        self.db_path = root / "fleet.db"
        self.broker = Mosquitto(root / "broker").start()
        db = f"sqlite:///{self.db_path}"
        self.server = FleetServer(self.broker.port, db, root / "fleet", extra=("--operator-key", str(priv)))
        self.server.token = add_user(db, "olga", "operator")
        self.env = {"EDGE_FLEET_TOKEN": self.server.token, "EDGE_FLEET_SERVER": self.server.url}
        self.desired = Desired(self.broker.port)
        self.sims = {d: SimDevice(d, root / d, self.broker.port, [pub], self.pkgs["1.0.0"], groups=("lobby",),
                                  transfer={"resubscribe_s": 1.0}) for d in DEVICES}
        self.feeder: Feeder | None = None
        self.cut_move = False

    def query(self, sql: str, *args: Any) -> Any:
        """One row straight from the database, which the server may be writing (or have died writing)."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchone()
        finally:
            con.close()

    def row(self, rid: int) -> tuple[str, int, int] | None:
        """(state, stage, acted) of rollout ``rid``."""
        return self.query("SELECT state, stage, acted FROM rollouts WHERE id = ?", rid)

    def kill_at(self, rid: int, state: str, stage: int = 0, timeout: float = 60) -> tuple[str, int, int]:
        """Wait for the rollout to be in ``state`` (and ``stage``), kill -9 the server at once, start it again."""
        return self.kill_when(rid, lambda r: r is not None and tuple(r[:2]) == (state, stage), timeout)

    def kill_when(self, rid: int, cond: Any, timeout: float = 60) -> tuple[str, int, int]:
        deadline, last = time.monotonic() + timeout, None
        while not cond(last) and time.monotonic() < deadline:
            time.sleep(0.02)  # a state lasts about one runner tick (0.5 s): poll well inside it
            last = self.row(rid)
        assert cond(last), f"rollout {rid} never reached the kill point (last: {last})"
        self.server.kill()
        at = self.row(rid)
        self.cut_move = self.moving(rid)  # the killed server left its alias move half done
        self.server.start()
        assert at is not None
        return at

    def moving(self, rid: int) -> bool:
        """The rollout's production move has recorded its intent and is publishing (phase 2 of a move)."""
        return self.query("SELECT 1 FROM alias_history WHERE user = ? AND state = 'publishing'",
                          f"rollout:{rid}") is not None

    def serving(self, want: dict[str, str]) -> bool:
        return self.server.serving(want)

    def rollout(self, version: str, canary: str, *opts: str) -> int:
        r = cli("registry", "--json", "rollout", "tiny", version, "--target", "group:lobby", "--canary", canary,
                *opts, env=self.env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["id"]

    def end(self, rid: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (self.row(rid) or ("",))[0] not in ("done", "failed", "aborted"):
            assert time.monotonic() < deadline, f"rollout {rid} did not end within {timeout} s: {self.row(rid)}"
            time.sleep(0.1)
        return self.server.get(f"/api/v1/rollouts/{rid}")[1]

    def promotions(self) -> list[dict[str, Any]]:
        hist = self.server.get("/api/v1/registry/models/tiny")[1]["history"]
        return [h for h in hist if h["alias"] == "production"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("rollout-kill"))
    try:
        f.server.start()
        for sim in f.sims.values():
            sim.start()
        f.feeder = Feeder(f.broker.port, f.sims)
        wait_until(lambda: f.serving(dict.fromkeys(DEVICES, "1.0.0")), 60)
        for v in ("2.0.0", "3.0.0"):  # the versions rolled out (1.0.0, the first old one, is never returned to)
            r = cli("registry", "register", str(f.pkgs[v]), env=f.env)
            assert r.returncode == 0, r.stderr
        yield f
    finally:
        if f.feeder is not None:
            f.feeder.close()
        for sim in f.sims.values():
            sim.stop()
        f.desired.close()
        f.server.stop()
        f.broker.stop()


def test_a_rollout_killed_at_each_of_its_stages_ends_as_an_unkilled_one(fleet: Fleet) -> None:
    # given a rollout of 2.0.0 to group lobby: canary cam-1, a 1.5 s window, then two waves (cam-2, cam-3)
    rid = fleet.rollout("2.0.0", "cam-1", "--waves", "2", "--window", "1.5", "--timeout", "60")
    # when the server is killed -9 in every state the rollout passes through, and started again each time
    at = [fleet.kill_at(rid, s, stage) for s, stage in (("canary", 0), ("watching", 0), ("waves", 0),
                                                        ("waves", 1))]
    # (promoting: in the middle of the alias move, its intent recorded and the group's document being published;
    # if that moment is too short to catch, the kill comes after the move, before the step that ends the rollout)
    at.append(fleet.kill_when(rid, lambda r: r is not None and r[0] == "promoting" and (fleet.moving(rid)
                                                                                      or r[2] == 1)))
    cut = fleet.cut_move
    # then the rollout ends as an unkilled one does: the same steps once each, in order
    job = fleet.end(rid)
    events = [s["event"] for s in job["steps"]]
    assert [a[:2] for a in at] == [("canary", 0), ("watching", 0), ("waves", 0), ("waves", 1), ("promoting", 1)]
    print(f"killed at (state, stage, acted): {at}; in the middle of the alias move: {cut}")
    assert job["state"] == "done", (job["reason"], events)
    assert events == ["create", "committed", "pass", "wave_done", "last_wave_done", "promoted"]
    verdict = job["steps"][2]["figures"]
    assert verdict["canary"]["records"] >= 3 and verdict["control"]["devices"] == 2, verdict
    # the production alias moved once, by the rollout, to 2.0.0 for the group
    moves = fleet.promotions()
    done = [h for h in moves if h["state"] == "published"]
    assert [(h["version"], h["target"], h["user"]) for h in done] == [("2.0.0", "group:lobby", f"rollout:{rid}")]
    # a move the kill cut short is recorded as abandoned, not left pending and not counted as a move
    assert [h["state"] for h in moves] == (["failed", "published"] if cut else ["published"]), moves
    assert not cut or moves[0]["error"].startswith("abandoned"), moves
    audits = [a for a in fleet.server.get("/api/v1/audit?limit=1000")[1]["items"]
              if a["action"] == "promote" and a["user"] == f"rollout:{rid}"]
    assert [a["outcome"] for a in audits] == ["done"], audits
    # every stage's desired document went out: the canary's, each wave's, the group's
    assert {"device:cam-1", "device:cam-2", "device:cam-3", "group:lobby"} <= fleet.desired.targets("2.0.0")
    # and every device serves 2.0.0
    wait_until(lambda: fleet.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)


def test_a_failed_canary_and_an_abort_roll_back_through_kills(fleet: Fleet) -> None:
    wait_until(lambda: fleet.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)  # where the first test left them
    # given 3.0.0 shows errors only on its canary (a regression the control group does not show)
    assert fleet.feeder is not None
    fleet.feeder.errors["3.0.0"] = 5
    rid = fleet.rollout("3.0.0", "cam-2", "--window", "1.5", "--timeout", "60")
    # when the server is killed -9 while the failed canary is being rolled back
    at = fleet.kill_at(rid, "rolling_back")
    # then the rollout ends failed with its one verdict, and the canary is back on 2.0.0
    job = fleet.end(rid)
    events = [s["event"] for s in job["steps"]]
    assert at[0] == "rolling_back"
    assert (job["state"], events) == ("failed", ["create", "committed", "fail", "rolled_back"]), job["reason"]
    assert "error rate" in job["steps"][2]["figures"]["reason"]
    assert ("device", "cam-2", "3.0.0") in fleet.desired.seen
    wait_until(lambda: fleet.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)
    # given another rollout of 3.0.0, paused by the operator while its canary is watched
    fleet.feeder.errors.clear()
    rid2 = fleet.rollout("3.0.0", "cam-3", "--window", "600", "--timeout", "60")
    wait_until(lambda: (fleet.row(rid2) or ("",))[0] == "watching", 60)
    assert cli("registry", "pause", str(rid2), env=fleet.env).stdout.strip() == f"rollout {rid2}: paused"
    # when the server is killed -9 while it is paused: it resumes to the state it was paused in (and the steps at the
    # end show nothing happened in between)
    assert fleet.kill_at(rid2, "paused")[0] == "paused"
    assert cli("registry", "resume", str(rid2), env=fleet.env).stdout.strip() == f"rollout {rid2}: watching"
    # and when it is killed again while the operator's abort rolls the canary back
    assert cli("registry", "abort", str(rid2), env=fleet.env).returncode == 0
    assert fleet.kill_at(rid2, "rolling_back")[0] == "rolling_back"
    # then it ends aborted, each operator step once, the canary back on 2.0.0, production never moved
    job = fleet.end(rid2)
    steps = [(s["event"], s["user"]) for s in job["steps"]]
    assert (job["state"], steps[1:]) == ("aborted", [("committed", f"rollout:{rid2}"), ("pause", "olga"),
                                                      ("resume", "olga"), ("abort", "olga"),
                                                      ("aborted", f"rollout:{rid2}")])
    wait_until(lambda: fleet.serving(dict.fromkeys(DEVICES, "2.0.0")), 60)
    assert [h["version"] for h in fleet.promotions() if h["state"] == "published"] == ["2.0.0"]
