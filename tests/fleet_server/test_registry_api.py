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
