"""Two operators at once, against the real `edge-runtime fleet serve` process and a real mosquitto, on SQLite and
PostgreSQL: threads racing promote, revert and rollout creation on one model get 200/201 or a 409 with its
reason, never a 500 or a lost update; a move being published (the broker frozen with SIGSTOP) holds no database
transaction, so a second operator is answered at once; a publication that fails leaves the alias where it was,
is visible in the model's history, and the same command again succeeds."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.store import pack_archive
from fleet.server.auth import add_user, create_token
from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from tests.fleet_server.conftest import FleetServer
from tests.integration.helpers import wait_until
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt
VERSIONS = ("1.0.0", "2.0.0")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("race-pkgs")
    priv, _ = generate_keypair(d / "fleet")
    key = load_private_key(priv)
    return {"key": priv, "archives": {v: pack_archive(classifier_package(d / v, version=v, sign_key=key, seed=i).root,
                                                      d / f"{v}.erpkg") for i, v in enumerate(VERSIONS)}}


@pytest.fixture
def served(db_url: str, tmp_path: Path, material: dict[str, Any]) -> Iterator[tuple[FleetServer, Mosquitto]]:
    engine = make_engine(db_url)
    migrate(engine)
    add_user(engine, "olga", "correct-horse", "operator")
    add_user(engine, "oskar", "correct-horse", "operator")
    with engine.begin() as conn:  # two devices of group lobby on 1.0.0, as ingest would have stored them
        conn.execute(insert(t.devices), [{"id": d, "first_seen": 1.0, "last_seen": 1.0, "online": True,
                                          "drifting": False, "version": "1.0.0", "groups": ["lobby"]}
                                         for d in ("cam-1", "cam-2")])
    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db_url, tmp_path / "fleet", extra=("--operator-key", str(material["key"])))
    server.token = create_token(engine, "olga")[0]
    server.tokens = {u: create_token(engine, u)[0] for u in ("olga", "oskar")}  # type: ignore[attr-defined]
    engine.dispose()
    try:
        server.start()
        for archive in material["archives"].values():
            req = urllib.request.Request(server.url + "/api/v1/registry/packages", data=archive.read_bytes(),
                                         method="POST", headers={"Authorization": f"Bearer {server.token}"})
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                assert r.status == 201
        yield server, broker
    finally:
        server.stop()
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        broker.stop()


def _race(server: FleetServer, calls: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[int, Any]]:
    """Fire every (user, path, body) at once from its own thread; each answer in call order."""
    start, out = threading.Barrier(len(calls)), [None] * len(calls)

    def one(i: int, user: str, path: str, body: dict[str, Any]) -> None:
        start.wait()
        out[i] = server.request("POST", path, body, token=server.tokens[user])  # type: ignore[attr-defined]

    threads = [threading.Thread(target=one, args=(i, *c)) for i, c in enumerate(calls)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return out  # type: ignore[return-value]


def _model(server: FleetServer) -> dict[str, Any]:
    return server.get("/api/v1/registry/models/tiny")[1]


def test_operators_at_once_get_a_clear_409_never_a_500_or_a_lost_update_and_a_failed_publication_retries(served):
    server, broker = served
    promote, revert = "/api/v1/registry/models/tiny/promote", "/api/v1/registry/models/tiny/revert"
    # when two operators fire promotes and reverts of production (to a group) at the same moment
    calls = [("olga" if i % 2 else "oskar", promote, {"version": VERSIONS[i % 2], "target": "group:hall"})
             for i in range(6)] + [("olga", revert, {}), ("oskar", revert, {})]
    answers = _race(server, calls)
    # then each is done or refused with its reason; none failed
    assert {code for code, _ in answers} <= {200, 409}, answers
    assert any(code == 200 for code, _ in answers), answers
    for code, body in answers:
        if code == 409:
            assert "is being moved by" in body or "no earlier version" in body, body
    # and no update was lost: the moves that happened form one chain, and production is where the last one left it
    model = _model(server)
    done = [h for h in model["history"] if h["state"] == "published"]
    assert len(done) == sum(code == 200 for code, _ in answers)
    assert all(b["previous"] == a["version"] for a, b in zip(done, done[1:], strict=False)), done
    assert model["aliases"]["production"]["version"] == done[-1]["version"]
    assert not [h for h in model["history"] if h["state"] == "publishing"]

    # when the broker freezes while olga's promote is publishing
    broker.proc.send_signal(signal.SIGSTOP)
    first: list[Any] = []
    slow = threading.Thread(target=lambda: first.append(server.request("POST", promote, {"version": "1.0.0"})))
    try:
        slow.start()
        wait_until(lambda: any(h["state"] == "publishing" for h in _model(server)["history"]), 30)
        # then oskar is answered at once with the reason (no database lock is held while publishing) ...
        code, body = server.request("POST", promote, {"version": "2.0.0"}, token=server.tokens["oskar"])
        assert code == 409 and "is being moved by olga" in body and "try again" in body, (code, body)
        code, body = server.request("POST", "/api/v1/rollouts", {"name": "tiny", "version": "2.0.0",
                                                                 "target": "group:lobby"})
        assert code == 409 and "is being moved by olga" in body, (code, body)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    # ... and olga's move completes once the broker answers
    slow.join(60)
    assert first and first[0][0] == 200 and first[0][1]["version"] == "1.0.0", first
    assert _model(server)["aliases"]["production"]["version"] == "1.0.0"

    # when the broker is away while olga promotes 2.0.0
    broker.stop()
    wait_until(lambda: server.get("/healthz")[1]["broker"] is False, 30)
    code, body = server.request("POST", promote, {"version": "2.0.0"})
    # then it is refused with the reason, production stays, and the history shows the failed move
    assert code == 409 and "stays on 1.0.0" in body and "again to retry" in body, (code, body)
    model = _model(server)
    assert model["aliases"]["production"]["version"] == "1.0.0"
    assert model["history"][-1]["state"] == "failed" and model["history"][-1]["error"]
    audit = server.get("/api/v1/audit")[1]["items"]
    assert any(a["action"] == "promote" and a["outcome"] == "refused" for a in audit)
    # when the broker is back, the same command succeeds
    broker.start()
    wait_until(lambda: server.get("/healthz")[1]["broker"] is True, 30)
    code, body = server.request("POST", promote, {"version": "2.0.0"})
    assert code == 200 and body["previous"] == "1.0.0", body
    assert _model(server)["history"][-1]["state"] == "published"
    # and two operators creating a rollout of the model to the same group at once: one is created, one refused
    plan = {"name": "tiny", "version": "2.0.0", "target": "group:lobby", "window_s": 600}
    answers = _race(server, [("olga", "/api/v1/rollouts", plan), ("oskar", "/api/v1/rollouts", plan)])
    assert sorted(code for code, _ in answers) == [201, 409], answers
    refused = next(json.dumps(b) for c, b in answers if c == 409)
    assert "one rollout per model and target" in refused
    # and while it runs, production cannot be moved under it
    code, body = server.request("POST", promote, {"version": "1.0.0"})
    assert code == 409 and "production moves when it ends" in body, (code, body)
