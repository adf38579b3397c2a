"""The sensor-port attacks of issue 11 on a real `edge-runtime run`: the 60,000-`[` UDP datagram that killed the
reader thread, and the same on stdin and in a CSV file, with huge lines, NaN, 1e999 and wrong types beside it.
Each hostile line is refused, counted as a bad line, and the run goes on producing results."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import CLI, health, reap, terminate, wait_until
from tests.mqtt_broker import free_port
from tests.security import hostile
from tests.security.procs import MIB, memory, signed_packages

WINDOW = b"".join(b"%d,0.5,-0.25\n" % i for i in range(16))  # one [16, 3] window of the sensor package
HOSTILE_LINES = [
    hostile.deep_json(60000),
    hostile.deep_json(12000, b'{"a":'),  # 60,000 bytes: fits one datagram
    b"1e999,1,1",
    b"nan,1,2",
    b'{"x": "walk", "y": [1, 2], "z": null}',
    b"[" + b"9" * 5000 + b", 1, 2]",
    b"\xff\xfe\x00garbage",
]


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return signed_packages(tmp_path_factory.mktemp("sensor-attack-packages"))


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_run_on_udp_survives_hostile_datagrams_and_counts_them(pkgs, tmp_path: Path) -> None:
    # given a real `run` on a UDP port, with /health on another
    udp, http, out = free_port(), free_port(), tmp_path / "results.jsonl"
    proc = subprocess.Popen([*CLI, "run", "--package", str(pkgs["sensor"]), "--key", str(pkgs["key"]),
                             "--source", f"udp://127.0.0.1:{udp}", "--out", str(out), "--http", str(http)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        def window_arrives(before: int) -> bool:  # (re)send a window, true once a result beyond ``before`` is out
            sock.sendto(WINDOW, ("127.0.0.1", udp))
            return len(results(out)) > before

        wait_until(lambda: window_arrives(0), 60, proc)  # the reader is up: a window went through
        idle = memory(proc.pid)["VmHWM"]
        # when the hostile datagrams arrive, the 60,000 brackets first
        for line in HOSTILE_LINES:
            sock.sendto(line, ("127.0.0.1", udp))
        # then every hostile datagram is counted as one bad line, visible on /health
        wait_until(lambda: health(http)["source"]["bad_lines"] == len(HOSTILE_LINES), 60, proc)
        # and the reader thread is still alive: new windows still become results
        done = len(results(out))
        wait_until(lambda: window_arrives(done), 60, proc)
        assert health(http)["source"]["bad_lines"] == len(HOSTILE_LINES)
        growth = memory(proc.pid)["VmHWM"] - idle
        assert growth < 50 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
        _, err = terminate(proc)
    finally:
        sock.close()
        reap(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and f"bad lines {len(HOSTILE_LINES)}" in err


@pytest.mark.parametrize("how", ["stdin", "csv"])
def test_run_on_stdin_or_a_csv_file_refuses_hostile_lines_and_goes_on(pkgs, tmp_path: Path, how: str) -> None:
    # given a stream with a valid window, the hostile lines, a 1 MiB line without a newline inside, a valid window
    huge = b"1," * (512 * 1024)
    stream = WINDOW + b"\n".join([*HOSTILE_LINES, huge]) + b"\n" + WINDOW
    out = tmp_path / "results.jsonl"
    cmd = [*CLI, "run", "--package", str(pkgs["sensor"]), "--key", str(pkgs["key"]), "--out", str(out)]
    if how == "csv":
        (tmp_path / "hostile.csv").write_bytes(stream)
        proc = subprocess.run([*cmd, "--source", str(tmp_path / "hostile.csv")], capture_output=True, timeout=120)
    else:
        proc = subprocess.run([*cmd, "--source", "stdin"], input=stream, capture_output=True, timeout=120)
    # then the run ends normally with both windows predicted and every hostile line counted once
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert len(results(out)) == 2
    assert "Traceback" not in err and f"bad lines {len(HOSTILE_LINES) + 1}" in err
