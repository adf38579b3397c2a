"""Fixtures for the fleet server: a real PostgreSQL (once per session), a database URL per backend, and the
server as the real `edge-runtime fleet serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet_server.postgres import Postgres
from tests.integration.helpers import CLI, wait_until
from tests.mqtt_broker import free_port


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("postgres").create_database()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


class FleetServer:
    """One `edge-runtime fleet serve` process; ``kill()`` is a kill -9, ``start()`` again restarts it."""

    def __init__(self, broker_port: int, db_url: str, data_dir: Path, client_id: str = "fleet-server",
                 extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.args = [*CLI, "fleet", "serve", "--broker", f"mqtt://127.0.0.1:{broker_port}", "--db", db_url,
                     "--data-dir", str(data_dir), "--port", str(self.port), "--client-id", client_id, *extra]
        self.log = data_dir / f"{client_id}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> FleetServer:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self.args, stdout=logf, stderr=logf)
        wait_until(lambda: self._healthy(), timeout, self.proc)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:  # noqa: S310 - loopback
                return bool(json.loads(r.read())["broker"])
        except (OSError, ValueError):
            return False

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self.request("GET", path, token=token)

    def serving(self, want: dict[str, str]) -> bool:
        """Every device in ``want`` reports that version and no update in progress (device -> version)."""
        for dev, version in want.items():
            code, d = self.get(f"/api/v1/devices/{dev}")
            if code != 200 or d.get("version") != version or d.get("update_state") not in ("committed", "idle", None):
                return False
        return True

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {token or self.token}"} if (token or self.token) else {}
        data = None
        if body is not None:
            data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={**hdrs, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 - loopback
                raw = r.read()
                return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def add_user(db_url: str, name: str, role: str, password: str = "correct-horse") -> str:
    """Create a user with the real CLI and return an API token for it."""
    r = cli("fleet", "user", "add", name, "--role", role, "--password-env", "FLEET_PW", "--db", db_url,
            env={"FLEET_PW": password})
    assert r.returncode == 0, r.stderr
    r = cli("fleet", "token", "create", name, "--db", db_url)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()
