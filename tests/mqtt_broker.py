"""A real mosquitto broker for tests: free loopback port, optional TLS, passwords and ACL, stop/restart."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls(directory: Path, client_cn: str = "device-1") -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-runtime test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        )
        if server:
            import ipaddress

            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    files = TlsFiles(*(directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")))
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    s_cert, s_key = leaf("localhost", True)
    c_cert, c_key = leaf(client_cn, False)
    files.server_cert.write_bytes(s_cert)
    files.server_key.write_bytes(s_key)
    files.client_cert.write_bytes(c_cert)
    files.client_key.write_bytes(c_key)
    for p in (files.server_key, files.client_key):
        p.chmod(0o600)
    return files


class Mosquitto:
    """One mosquitto process. ``stop()`` then ``start()`` restarts it on the same port (and same config)."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        passwords: dict[str, str] | None = None,
        acl: str | None = None,
        message_size_limit: int = 0,
        max_packet_size: int = 0,
        persistence: bool = True,
        require_certificate: bool = False,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 0",
            "max_inflight_messages 0",
        ]
        if os.geteuid() == 0:  # mosquitto drops root to user 'mosquitto', which cannot write the test's tmp dir
            lines.append("user root")
        if message_size_limit:
            lines.append(f"message_size_limit {message_size_limit}")
        if max_packet_size:  # advertised to MQTT 5 clients in CONNACK (Maximum Packet Size)
            lines.append(f"max_packet_size {max_packet_size}")
        if passwords:
            pwfile = workdir / "passwd"
            pwfile.write_text("")
            for user, pw in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
            lines += [f"password_file {pwfile}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (workdir / "acl").write_text(acl)
            lines.append(f"acl_file {workdir / 'acl'}")
        if tls:
            lines += [
                f"cafile {tls.ca_cert}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        assert self.proc is None, "already running"
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
