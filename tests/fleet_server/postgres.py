"""A real PostgreSQL server for tests: Debian's binaries, initdb in a temp dir, a free loopback port.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user (runuser); as anyone else
it runs as that user. Connections are trust-authenticated on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.mqtt_broker import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self._n = 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def start(self) -> Postgres:
        data = self.dir / "data"
        if self.user:
            shutil.chown(self.dir, self.user)
            os.chmod(self.dir, 0o700)
        subprocess.run(self._cmd(str(self.bin / "initdb"), "-D", str(data), "-U", "fleet", "--auth=trust",
                                 "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=100"
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                 str(self.dir / "log"), "-w", "start"), check=True, capture_output=True)
        return self

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"fleet_{self._n}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=fleet dbname=postgres",
                                     autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")  # noqa: S608 - generated name
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return f"postgresql://fleet@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"),
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
