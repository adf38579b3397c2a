"""Real processes under attack: start `edge-runtime serve` / `run` on free ports, read their peak memory.

Peak memory is the kernel's own high-water mark (``VmHWM`` in /proc/PID/status): no sampling can miss a spike.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from edge_runtime.package import generate_keypair, load_private_key
from tests import model_factory
from tests.integration.helpers import CLI, get, reap, wait_until
from tests.mqtt_broker import free_port

MIB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def signed_packages(root: Path) -> dict[str, Path]:
    """A signed image classifier and a signed sensor classifier ([1, 16, 3]), and the public key that trusts them."""
    private, public = generate_keypair(root / "keys" / "release")
    key = load_private_key(private)
    return {
        "classifier": model_factory.classifier_package(root / "classifier", golden=False, sign_key=key).root,
        "sensor": model_factory.tensor_package(root / "sensor", task="classification", sign_key=key).root,
        "key": public,
    }


class Served:
    """A running `edge-runtime serve`: its process, base URL and port."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def memory(self) -> dict[str, int]:
        return memory(self.proc.pid)


@contextmanager
def serve(package: Path, key: Path, *flags: str, stderr: int | None = subprocess.PIPE):  # noqa: ANN201
    """`edge-runtime serve` on a free loopback port, ready (its /healthz answers), stopped at the end."""
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--package", str(package), "--key", str(key), "--port", str(port),
                             *flags], stdout=subprocess.DEVNULL, stderr=stderr, text=True)  # fmt: skip
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200, 90, proc)
        yield Served(proc, port)
    finally:
        reap(proc)


def in_threads(fn, args: Sequence) -> list:  # noqa: ANN001
    """Run ``fn(arg)`` for every arg at once, one thread each; their results (or exceptions) in order."""
    results: list = [None] * len(args)

    def one(i: int) -> None:
        try:
            results[i] = fn(args[i])
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results
