"""The registry's API on a real database (SQLite and PostgreSQL), in process: registering real signed packages
with their lineage, idempotent re-registration, refusals, alias moves and the package download with Range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.store import pack_archive
from fleet.server.app import create_app
from fleet.server.auth import add_user, create_token
from fleet.server.db.engine import make_engine, migrate
from fleet.server.settings import ServerSettings
from tests.model_factory import classifier_package


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reg-pkgs")
    key = load_private_key(generate_keypair(d / "release")[0])
    out = {}
    for v, seed in (("1.0.0", 0), ("1.1.0", 1)):
        out[v] = pack_archive(classifier_package(d / v, version=v, sign_key=key, seed=seed).root, d / f"{v}.erpkg")
    other = classifier_package(d / "other", version="1.0.0", sign_key=key, seed=5).root  # same version, other bytes
    out["clash"] = pack_archive(other, d / "clash.erpkg")
    unsigned = classifier_package(d / "unsigned", version="1.2.0").root
    (unsigned / "signature.json").unlink()
    out["unsigned"] = pack_archive(unsigned, d / "unsigned.erpkg")
    return out


@pytest.fixture
def api(db_url: str, tmp_path: Path):
    engine = make_engine(db_url)
    migrate(engine)
    add_user(engine, "olga", "correct-horse", "operator")
    add_user(engine, "vic", "correct-horse", "viewer")
    tokens = {u: create_token(engine, u, "api", "api", None)[0] for u in ("olga", "vic")}
    app = create_app(ServerSettings(db_url=db_url, data_dir=tmp_path / "data"), engine)
    with TestClient(app) as client:
        yield client, tokens
    engine.dispose()


def _h(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


def test_versions_are_registered_with_lineage_and_aliases_move(api, archives):
    client, tok = api
    op = _h(tok["olga"])
    # given v1 registered, then v1.1 as its child with a recipe and a git commit
    r = client.post("/api/v1/registry/packages", content=archives["1.0.0"].read_bytes(), headers=op)
    assert r.status_code == 201, r.text
    v1 = r.json()
    lin = {"parent": "1.0.0", "recipe": {"source": "m.onnx", "profile": "x86-laptop", "int8": True},
           "git_commit": "a" * 40, "git_dirty": True}
    r = client.post("/api/v1/registry/packages", content=archives["1.1.0"].read_bytes(),
                    headers=_h(tok["olga"], **{"X-Lineage": json.dumps(lin)}))
    assert r.status_code == 201, r.text
    # then each version records the package's digest, size, signer and the manifest's provenance
    assert v1["size"] == archives["1.0.0"].stat().st_size and len(v1["sha256"]) == 64 and v1["signer"]
    assert v1["registered_by"] == "olga" and v1["lineage"]["quantization"]["precision"]
    assert {"source", "calibration", "guard", "tools", "created"} <= set(v1["lineage"])
    chain = client.get("/api/v1/registry/models/tiny/versions/1.1.0/lineage", headers=op).json()["chain"]
    assert [c["version"] for c in chain] == ["1.1.0", "1.0.0"]
    assert chain[0]["lineage"]["recipe"]["int8"] is True and chain[0]["lineage"]["git_dirty"] is True
    # and the same bytes again are a no-op, other bytes under a registered version are refused
    again = client.post("/api/v1/registry/packages", content=archives["1.0.0"].read_bytes(), headers=op)
    assert again.status_code == 201 and again.json()["registered"] == v1["registered"]
    r = client.post("/api/v1/registry/packages", content=archives["clash"].read_bytes(), headers=op)
    assert r.status_code == 409 and "other bytes" in r.text
    r = client.post("/api/v1/registry/packages", content=archives["unsigned"].read_bytes(), headers=op)
    assert r.status_code == 409 and "not signed" in r.text
    r = client.post("/api/v1/registry/packages", content=b"not a tar", headers=op)
    assert r.status_code == 409 and "not a readable package" in r.text
    # and a viewer may read but not register or promote
    vh = _h(tok["vic"])
    assert client.get("/api/v1/registry/models", headers=vh).json()["items"][0]["versions"] == 2
    assert client.post("/api/v1/registry/packages", content=b"x", headers=vh).status_code == 403
    assert client.post("/api/v1/registry/models/tiny/promote", json={"version": "1.0.0"}, headers=vh).status_code == 403
    # when an operator moves production without a target: aliases move, nothing is published
    for v in ("1.0.0", "1.1.0"):
        r = client.post("/api/v1/registry/models/tiny/promote", json={"version": v}, headers=op)
        assert r.status_code == 200 and r.json()["published"] is False, r.text
    aliases = client.get("/api/v1/registry/models/tiny", headers=op).json()["aliases"]
    assert aliases["production"]["version"] == "1.1.0" and aliases["previous"]["version"] == "1.0.0"
    r = client.post("/api/v1/registry/models/tiny/revert", json={}, headers=op)
    assert r.status_code == 200 and r.json()["version"] == "1.0.0", r.text
    # and publishing to a target without a broker is refused with the reason, moving nothing
    r = client.post("/api/v1/registry/models/tiny/promote", json={"version": "1.1.0", "target": "group:lobby"},
                    headers=op)
    assert r.status_code == 409 and "operator key" in r.text
    model = client.get("/api/v1/registry/models/tiny", headers=op).json()
    assert model["aliases"]["production"]["version"] == "1.0.0"
    assert [h["action"] for h in model["history"]] == ["promote", "promote", "revert"]
    assert client.post("/api/v1/registry/models/nope/promote", json={"version": "1.0.0"},
                       headers=op).status_code == 404
    # and the package downloads whole or from an offset (Range), byte-identical
    whole = archives["1.1.0"].read_bytes()
    r = client.get("/api/v1/registry/models/tiny/versions/1.1.0/package", headers=op)
    assert r.status_code == 200 and r.content == whole
    r = client.get("/api/v1/registry/models/tiny/versions/1.1.0/package", headers=_h(tok["olga"], Range="bytes=100-"))
    assert r.status_code == 206 and r.content == whole[100:]


def test_the_dashboard_shows_versions_and_a_rollout_an_operator_pauses_and_aborts(api, archives):
    import re

    from sqlalchemy import insert

    from fleet.server.db import tables as t

    client, tok = api
    engine = client.app.state.server.engine
    op = _h(tok["olga"])
    for v in ("1.0.0", "1.1.0"):
        assert client.post("/api/v1/registry/packages", content=archives[v].read_bytes(), headers=op).status_code == 201
    with engine.begin() as conn:  # two devices of group lobby, as ingest would have stored them
        conn.execute(insert(t.devices), [{"id": d, "first_seen": 1.0, "last_seen": 1.0, "online": True,
                                          "drifting": False, "version": "1.0.0", "groups": ["lobby"]}
                                         for d in ("cam-1", "cam-2")])
    # given a rollout created through the API (no broker here: it stays in its first state)
    r = client.post("/api/v1/rollouts", json={"name": "tiny", "version": "1.1.0", "target": "group:lobby",
                                              "canaries": ["cam-1"], "window_s": 5}, headers=op)
    assert r.status_code == 201 and r.json()["waves"] == [["cam-2"]], r.text
    rid = r.json()["id"]
    bad = client.post("/api/v1/rollouts", json={"name": "tiny", "version": "1.1.0", "target": "group:nobody"},
                      headers=op)
    assert bad.status_code == 409 and "no known devices" in bad.text
    # when the operator logs in to the dashboard
    client.cookies.clear()
    assert client.post("/login", data={"username": "olga", "password": "correct-horse"},
                       follow_redirects=False).status_code == 303
    page = client.get("/registry")
    assert page.status_code == 200 and "<td>1.1.0</td>" in page.text and "<h2 id=\"model-tiny\">" in page.text
    page = client.get(f"/rollouts/{rid}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    # then a form without the CSRF token is refused, with it the rollout pauses, then aborts
    assert client.post(f"/rollouts/{rid}/pause", data={"csrf": "wrong"}).status_code == 403
    page = client.post(f"/rollouts/{rid}/pause", data={"csrf": csrf})
    assert page.status_code == 200 and '<b id="state">paused</b>' in page.text
    page = client.post(f"/rollouts/{rid}/abort", data={"csrf": csrf})
    assert '<b id="state">rolling_back</b>' in page.text and "abort by olga" in page.text
    page = client.post(f"/rollouts/{rid}/pause", data={"csrf": csrf})
    assert page.status_code == 409 and "not possible now" in page.text
    assert "rolling_back" in client.get("/rollouts").text


def test_a_move_left_publishing_blocks_the_alias_until_it_is_stale(api, archives):
    import time

    from sqlalchemy import insert, update

    from fleet.server.db import tables as t
    from fleet.server.moves import STALE_S

    client, tok = api
    engine, op = client.app.state.server.engine, _h(tok["olga"])
    assert client.post("/api/v1/registry/packages", content=archives["1.0.0"].read_bytes(), headers=op).status_code \
        == 201
    # given a move of production that a server started publishing and never finished (it died)
    with engine.begin() as conn:
        conn.execute(insert(t.alias_history).values(name="tiny", alias="production", version="1.0.0", previous=None,
                                                    target="group:x", user="ghost", ts=time.time(),
                                                    action="promote", state="publishing"))
    # then a new move of that alias is refused with who holds it, another alias moves freely
    r = client.post("/api/v1/registry/models/tiny/promote", json={"version": "1.0.0"}, headers=op)
    assert r.status_code == 409 and "being moved by ghost" in r.text, r.text
    assert client.post("/api/v1/registry/models/tiny/promote", json={"version": "1.0.0", "alias": "canary"},
                       headers=op).status_code == 200
    # and once it is older than STALE_S, the next move takes over
    with engine.begin() as conn:
        conn.execute(update(t.alias_history).where(t.alias_history.c.user == "ghost")
                     .values(ts=time.time() - STALE_S - 1))
    r = client.post("/api/v1/registry/models/tiny/promote", json={"version": "1.0.0"}, headers=op)
    assert r.status_code == 200 and r.json()["published"] is False, r.text
    history = client.get("/api/v1/registry/models/tiny", headers=op).json()["history"]
    assert history[-1]["state"] == "moved"
    assert history[0]["user"] == "ghost" and history[0]["state"] == "failed" and "abandoned" in history[0]["error"]
