"""A fleet with real parts: a real mosquitto, the real `edge-runtime fleet serve --public-url` (SQLite), two real
`edge-runtime agent` processes in group lobby. cam-1's download token is made with `edge-runtime fleet
device-token`; cam-2 holds one the server never issued. Between the agents
and the server sits a TCP relay that cuts the first package download mid-body (a fault a loopback link cannot
cause by itself).

- Devices download from the server over HTTP with their own token; the cut download resumes with a Range
  request; the device with a wrong token is refused (401), says so on its status topic and falls back to the MQTT
  chunks. Evidence: the server's /metrics counters, the relay's record of requests, the devices' statuses.
- A rollout whose candidate is worse only on the canary (it loads, passes its golden pairs and health window, but
  its scores are flat: confidence ~0.4 against ~0.95) is stopped by the judge and rolled back.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.store import pack_archive
from fleet.server.auth import add_user, create_token
from fleet.server.db.engine import make_engine, migrate
from fleet.server.device_auth import create_device_token, revoke_device_token
from tests.fleet_server.conftest import FleetServer, cli
from tests.integration.helpers import stop_all, wait_until
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto, free_port
from tests.update.harness import FleetSide, device_config, spawn_agent

pytestmark = pytest.mark.mqtt
DEVICES = ("cam-1", "cam-2")


class CuttingRelay:
    """Relays TCP to ``target``; the first ``200`` answer to a package request is cut after ``keep`` bytes."""

    def __init__(self, target: int, keep: int) -> None:
        self.target, self.keep, self.cuts, self.requests = target, keep, 0, []
        self._lock, self._claimed = threading.Lock(), False
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target)) as up:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            self.requests.append(head.decode("latin-1"))
            up.sendall(head)
            cut, sent = b"/api/v1/packages/" in head, 0
            while data := up.recv(4096):
                if sent == 0:
                    cut = cut and data.startswith(b"HTTP/1.1 200") and self._claim()
                if cut and sent + len(data) >= self.keep:
                    client.sendall(data[: self.keep - sent])
                    self.cuts += 1
                    return  # the connection ends mid-body
                client.sendall(data)
                sent += len(data)

    def _claim(self) -> bool:
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def close(self) -> None:
        self.sock.close()


@dataclass
class Fleet:
    server: FleetServer
    relay: CuttingRelay
    side: FleetSide
    engine: Any
    tokens: dict[str, Path]
    sha: dict[str, str] = field(default_factory=dict)


def _post_bytes(server: FleetServer, path: str, data: bytes) -> int:
    req = urllib.request.Request(server.url + path, data=data, method="POST",
                                 headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
        return r.status


def _fetch(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 - loopback
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _counters(server: FleetServer) -> dict[str, float]:
    text = server.get("/metrics")[1].decode()
    found = re.findall(r'^fleet_package_requests_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {k: float(v) for k, v in found}


def _token_file(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-http")
    priv, pub = generate_keypair(tmp / "keys" / "fleet")
    key = load_private_key(priv)
    builds = {"1.0.0": {}, "2.0.0": {"seed": 1}, "3.0.0": {"seed": 2, "fc_scale": 0.05}}  # 3.0.0: flat scores
    archives = {v: pack_archive(classifier_package(tmp / v, version=v, sign_key=key, **kw).root, tmp / f"{v}.erpkg")
                for v, kw in builds.items()}
    db = f"sqlite:///{tmp / 'fleet.db'}"
    engine = make_engine(db)
    migrate(engine)
    add_user(engine, "olga", "correct-horse", "operator")
    broker = Mosquitto(tmp / "broker").start()
    server = FleetServer(broker.port, db, tmp / "fleet", extra=("--operator-key", str(priv)))
    relay = CuttingRelay(server.port, keep=archives["2.0.0"].stat().st_size // 2)
    server.args += ["--public-url", f"http://127.0.0.1:{relay.port}"]
    server.token = create_token(engine, "olga")[0]
    tokens = {d: tmp / f"{d}.token" for d in DEVICES}
    r = cli("fleet", "device-token", "cam-1", "--out", str(tokens["cam-1"]), "--db", db)
    assert r.returncode == 0 and "mode 0600" in r.stdout, r.stderr
    assert tokens["cam-1"].stat().st_mode & 0o777 == 0o600
    _token_file(tokens["cam-2"], "erd_not-a-token-the-server-issued")
    side, agents = FleetSide(broker.port, priv), []
    try:
        server.start()
        for dev in DEVICES:
            cfg = device_config(tmp, dev, broker.port, pub, archives["1.0.0"],
                                {"fps": 10, "monitoring": {"monitor": {"period_s": 0.5}}}, groups=["lobby"],
                                live_report_s=1, http_token_file=str(tokens[dev]))
            agents.append(spawn_agent(cfg, tmp / f"{dev}.log"))
        wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "1.0.0"))
                   and all(server.get(f"/api/v1/devices/{d}")[1].get("groups") == ["lobby"] for d in DEVICES), 90)
        for archive in archives.values():
            assert _post_bytes(server, "/api/v1/registry/packages", archive.read_bytes()) == 201
        yield Fleet(server, relay, side, engine, tokens,
                    {v: hashlib.sha256(a.read_bytes()).hexdigest() for v, a in archives.items()})
    finally:
        stop_all(agents)
        side.close()
        server.stop()
        relay.close()
        broker.stop()
        engine.dispose()


def test_devices_download_over_http_with_their_own_token_and_a_wrong_token_falls_back_to_mqtt(fleet):
    server, side = fleet.server, fleet.side
    # when 2.0.0 is promoted to the group
    code, out = server.request("POST", "/api/v1/registry/models/tiny/promote",
                               {"version": "2.0.0", "target": "group:lobby"})
    assert code == 200, out
    # then every device serves 2.0.0
    wait_until(lambda: server.serving(dict.fromkeys(DEVICES, "2.0.0")), 120)
    # cam-1 over HTTP, never over MQTT: its download was cut mid-body and resumed with a Range request
    assert fleet.relay.cuts == 1
    pkg = [q for q in fleet.relay.requests if "/api/v1/packages/" in q]
    assert any(re.search(r"(?im)^range: bytes=[1-9]", q) for q in pkg), pkg
    codes = {d: [s["code"] for s in side.statuses[d]] for d in DEVICES}
    assert "http_resume" in codes["cam-1"] and not {"http_fallback", "http_unauthorized"} & set(codes["cam-1"])
    counts = _counters(server)
    assert counts["full"] >= 1 and counts["partial"] >= 1 and counts["unauthorized"] >= 1, counts
    # cam-2 was refused (401), said so on its status topic, and got the same signed bytes over MQTT
    refused = [s for s in side.statuses["cam-2"] if s["code"] == "http_unauthorized"]
    assert refused and "HTTP 401" in refused[0]["reason"] and "falling back to MQTT" in refused[0]["reason"]
    # and the endpoint wants a device token, and serves only what was delivered to that device or its groups
    url, good = f"{server.url}/api/v1/packages/", fleet.tokens["cam-1"].read_text().strip()
    assert _fetch(url + fleet.sha["2.0.0"], good) == 200
    assert _fetch(url + fleet.sha["2.0.0"], None) == 401
    assert _fetch(url + fleet.sha["2.0.0"], server.token) == 401  # a user's API token is not a device token
    assert _fetch(url + fleet.sha["3.0.0"], good) == 403  # registered, never delivered
    other = create_device_token(fleet.engine, "cam-9", "test")  # valid, but nothing was delivered to cam-9
    assert _fetch(url + fleet.sha["2.0.0"], other) == 403
    assert revoke_device_token(fleet.engine, "cam-9") and _fetch(url + fleet.sha["2.0.0"], other) == 401


def test_a_candidate_worse_only_on_the_canary_is_stopped_and_rolled_back(fleet):
    server = fleet.server
    full_before = _counters(server).get("full", 0)
    # given the group on one version, when 3.0.0 (flat scores) is rolled out with canary cam-1 and a 4 s window
    code, job = server.request("POST", "/api/v1/rollouts", {"name": "tiny", "version": "3.0.0",
                                                            "target": "group:lobby", "canaries": ["cam-1"],
                                                            "window_s": 4, "timeout_s": 120})
    assert code == 201, job
    rid, old = job["id"], job["from_version"]
    wait_until(lambda: server.get(f"/api/v1/rollouts/{rid}")[1]["state"] in ("failed", "done", "aborted"), 150)
    # then the judge failed it on what only the canary showed, and the canary went back to the old version
    job = server.get(f"/api/v1/rollouts/{rid}")[1]
    assert job["state"] == "failed", job
    assert [s["event"] for s in job["steps"]] == ["create", "committed", "fail", "rolled_back"]
    verdict = job["steps"][2]["figures"]
    assert "confidence" in verdict["reason"], verdict
    assert verdict["canary"]["confidence"] < verdict["control"]["confidence"] - 0.3, verdict
    assert verdict["control"]["devices"] == 1 and verdict["canary"]["records"] >= 3
    wait_until(lambda: server.serving(dict.fromkeys(DEVICES, old)), 60)
    # and the canary had fetched the candidate over HTTP; production did not move
    assert _counters(server)["full"] >= full_before + 1
    aliases = server.get("/api/v1/registry/models/tiny")[1]["aliases"]
    assert aliases.get("production", {}).get("version", old) == old
