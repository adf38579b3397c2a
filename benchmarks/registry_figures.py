"""Registry figures (issue 15): time from `promote` to the whole test fleet serving the new version, and from
`revert` back, with devices downloading from the fleet server over HTTP. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/registry_figures.py [--devices 3] [--rounds 3] [--transport http,mqtt]

Real parts: a real mosquitto, the real `edge-runtime fleet serve` process (SQLite; with ``--public-url`` for the
http transport, without it for mqtt), ``--devices`` real `edge-runtime agent` processes in one group, each with its
own download token (fleet.server.device_auth), on a synthetic 10 fps source. Each round promotes a new version to
the group through the REST API and times until every device's retained status says it serves it (read through the
server's API, polled every 0.1 s), then reverts and times until all serve 1.0.0 again. Each round promotes a new
version (2.0.0, 2.0.1, ...), so each promote downloads; a revert is a local slot switch on the devices (the old
version is still installed), so it downloads nothing. The server's
``fleet_package_requests_total`` counters show whether the packages really came over HTTP ("MISS" if not).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.package import generate_keypair, load_private_key  # noqa: E402
from edge_runtime.package.store import pack_archive  # noqa: E402
from fleet.server.auth import add_user, create_token  # noqa: E402
from fleet.server.db.engine import make_engine, migrate  # noqa: E402
from fleet.server.device_auth import create_device_token  # noqa: E402
from tests.fleet_server.conftest import FleetServer  # noqa: E402
from tests.integration.helpers import stop_all, wait_until  # noqa: E402
from tests.model_factory import classifier_package  # noqa: E402
from tests.mqtt_broker import Mosquitto  # noqa: E402
from tests.update.harness import device_config, spawn_agent  # noqa: E402


def _downloads(server: FleetServer) -> dict[str, float]:
    text = server.get("/metrics")[1].decode()
    return {k: float(v) for k, v in re.findall(r'^fleet_package_requests_total\{outcome="(\w+)"\} (\S+)$', text,
                                               re.M)}


def _timed(server: FleetServer, path: str, body: dict[str, Any], devices: list[str], version: str) -> float:
    t0 = time.monotonic()
    code, out = server.request("POST", path, body)
    if code != 200:
        raise SystemExit(f"{path} answered {code}: {out}")
    while not server.serving(dict.fromkeys(devices, version)):
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"the fleet did not serve {version} within 300 s")
        time.sleep(0.1)
    return time.monotonic() - t0


def run(transport: str, n: int, rounds: int, work: Path) -> dict[str, Any]:
    priv, pub = generate_keypair(work / "keys" / "fleet")
    key = load_private_key(priv)
    news = [f"2.0.{i}" for i in range(rounds)]  # a new version each round: each promote downloads
    archives = {v: pack_archive(classifier_package(work / v, version=v, sign_key=key, seed=i).root,
                                work / f"{v}.erpkg") for i, v in enumerate(["1.0.0", *news])}
    db = f"sqlite:///{work / 'fleet.db'}"
    engine = make_engine(db)
    migrate(engine)
    add_user(engine, "bench", "correct-horse", "operator")
    broker = Mosquitto(work / "broker").start()
    server = FleetServer(broker.port, db, work / "fleet", extra=("--operator-key", str(priv)))
    if transport == "http":
        server.args += ["--public-url", server.url]
    server.token = create_token(engine, "bench")[0]
    devices = [f"cam-{i}" for i in range(1, n + 1)]
    agents = []
    try:
        server.start()
        for dev in devices:
            token = work / f"{dev}.token"
            token.write_text(create_device_token(engine, dev, "bench") + "\n")
            token.chmod(0o600)
            cfg = device_config(work, dev, broker.port, pub, archives["1.0.0"], {"fps": 10}, groups=["fleet"],
                                http_token_file=str(token))
            agents.append(spawn_agent(cfg, work / f"{dev}.log"))
        wait_until(lambda: server.serving(dict.fromkeys(devices, "1.0.0")), 180)
        for archive in archives.values():
            req = urllib.request.Request(server.url + "/api/v1/registry/packages", data=archive.read_bytes(),
                                         method="POST", headers={"Authorization": f"Bearer {server.token}"})
            urllib.request.urlopen(req, timeout=60).close()  # noqa: S310 - loopback
        promote = "/api/v1/registry/models/tiny/promote"
        _timed(server, promote, {"version": "1.0.0", "target": "group:fleet"}, devices, "1.0.0")
        ups, downs = [], []
        for new in news:
            ups.append(_timed(server, promote, {"version": new}, devices, new))
            downs.append(_timed(server, "/api/v1/registry/models/tiny/revert", {}, devices, "1.0.0"))
        return {"promote": ups, "revert": downs, "downloads": _downloads(server),
                "size": archives[news[0]].stat().st_size}
    finally:
        stop_all(agents)
        server.stop()
        broker.stop()
        engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transport", default="http", help="comma-separated: http, mqtt")
    args = ap.parse_args()
    print(f"machine: {machine_summary()}")
    for transport in args.transport.split(","):
        with tempfile.TemporaryDirectory(prefix=f"registry-{transport}-") as work:
            r = run(transport, args.devices, args.rounds, Path(work))
        over_http = r["downloads"].get("full", 0) + r["downloads"].get("partial", 0)
        want = args.devices * args.rounds
        seen = f"package requests over HTTP {r['downloads']}"
        if transport == "http":
            seen += f" ({'ok' if over_http >= want else 'MISS'}: at least {want} downloads expected)"
        print(f"{transport}: {args.devices} devices, package {r['size']} bytes, {args.rounds} rounds; {seen}")
        for what in ("promote", "revert"):
            v = r[what]
            print(f"  {what} -> whole fleet serving: median {statistics.median(v):.2f} s, "
                  f"min {min(v):.2f} s, max {max(v):.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
