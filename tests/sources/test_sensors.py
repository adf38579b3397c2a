"""Sensor sources and windowing: real files, a real pty pair for serial, real UDP datagrams, a pipe for stdin."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError, SourceError
from edge_runtime.package.manifest import InputSpec
from edge_runtime.sources import END, WindowSpec, open_source, window_spec_for
from edge_runtime.sources.windowing import Windower, parse_line


def drain(source, limit: int = 1000, timeout: float = 5.0) -> list:
    out = []
    while len(out) < limit:
        item = source.get(timeout=timeout)
        assert item is not None, "source stalled"
        if item is END:
            break
        out.append(item)
    return out


def test_parse_line_accepts_csv_json_and_rejects_garbage() -> None:
    assert parse_line("1, 2.5;3") .tolist() == [1.0, 2.5, 3.0]
    assert parse_line(b"4 5\t6\n").tolist() == [4.0, 5.0, 6.0]
    assert parse_line("[1, 2, 3]").tolist() == [1.0, 2.0, 3.0]
    assert parse_line('{"x": 1, "y": -2}').tolist() == [1.0, -2.0]
    for bad in ("1,abc,3", "[1, 2", '{"x": "a"}', "nan,1,2", "", "# comment"):
        assert parse_line(bad) is None, bad


@pytest.mark.parametrize(("size", "hop"), [(4, 4), (4, 2), (3, 1), (2, 5)])
def test_windower_emits_every_hop_after_the_first_full_window(size: int, hop: int) -> None:
    spec = WindowSpec(size=size, hop=hop, channels=2, shape=(size, 2))
    w = Windower(spec)
    samples = [np.array([i, -i], dtype=np.float32) for i in range(20)]
    windows = [(i, out) for i, s in enumerate(samples) if (out := w.push(s)) is not None]
    ends = [i for i, _ in windows]
    assert ends == list(range(size - 1, 20, hop))
    for end, win in windows:  # each window holds the last `size` samples in time order
        assert win.shape == (size, 2)
        assert win[:, 0].tolist() == list(range(end - size + 1, end + 1))


def test_window_spec_follows_the_model_input() -> None:
    spec = InputSpec(name="x", shape=(1, 16, 3), dtype="float32", kind="tensor")
    assert window_spec_for(spec, hop=8) == WindowSpec(size=16, hop=8, channels=3, shape=(16, 3))
    flat = InputSpec(name="x", shape=(1, 10), dtype="float32", kind="tensor")
    assert window_spec_for(flat) == WindowSpec(size=10, hop=10, channels=1, shape=(10,))
    image = InputSpec(name="img", shape=(1, 8, 8, 3), dtype="float32", kind="image", layout="NHWC", color_order="RGB")
    with pytest.raises(ConfigError, match="takes images"):
        window_spec_for(image)


def test_csv_file_windows_and_counted_bad_lines(tmp_path: Path) -> None:
    lines = ["time_s,ax,ay"] + [f"{i},{i * 2}" for i in range(10)]
    lines[4] = "3,oops"  # unparsable
    lines[7] = "6,12,99"  # wrong number of values
    path = tmp_path / "imu.csv"
    path.write_text("\n".join(lines) + "\n")
    spec = WindowSpec(size=4, hop=2, channels=2, shape=(4, 2))
    source = open_source(str(path), window=spec)
    source.start()
    try:
        windows = drain(source)
    finally:
        source.close()
    assert source.counters.bad_lines == 2
    kept = [[i, i * 2] for i in range(10) if i not in (3, 6)]
    assert windows[0].data.tolist() == kept[:4]
    assert [w.data.tolist() for w in windows] == [kept[k - 4 : k] for k in range(4, len(kept) + 1, 2)]


def test_jsonl_file_source(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([json.dumps({"a": i, "b": -i}) for i in range(6)] + ["not json"]) + "\n")
    source = open_source(str(path), window=WindowSpec(size=3, hop=3, channels=2, shape=(3, 2)))
    source.start()
    windows = drain(source)
    source.close()
    assert [w.data[:, 0].tolist() for w in windows] == [[0, 1, 2], [3, 4, 5]]
    assert source.counters.bad_lines == 1


def test_sensor_source_needs_a_window_and_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tensor input"):
        open_source("stdin")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "none.csv"), window=WindowSpec(2, 2, 1, (2,))).start()


def test_serial_port_through_a_pty_pair() -> None:
    """Given a device writing lines to a pty, when the serial source reads the slave end, then windows arrive."""
    master, slave = os.openpty()
    spec = WindowSpec(size=5, hop=5, channels=3, shape=(5, 3))
    source = open_source(f"serial:{os.ttyname(slave)}?baud=115200", window=spec)
    source.start()
    try:
        payload = "".join(f"{i},{i + 0.5},{-i}\r\n" for i in range(10)) + "garbage\r\n"
        # written in odd-sized pieces, like a UART delivers them
        data = payload.encode()
        for k in range(0, len(data), 7):
            os.write(master, data[k : k + 7])
        windows = drain(source, limit=2)
        deadline = time.monotonic() + 5
        while source.counters.bad_lines < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        source.close()
        os.close(master)
        os.close(slave)
    assert [w.data[:, 0].tolist() for w in windows] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert windows[1].data[0].tolist() == [5.0, 5.5, -5.0]
    assert source.counters.bad_lines == 1


def test_unopenable_serial_port_is_a_source_error() -> None:
    source = open_source("serial:/dev/ttyNOPE0?baud=9600", window=WindowSpec(2, 2, 1, (2,)))
    with pytest.raises(SourceError, match="cannot open serial port /dev/ttyNOPE0"):
        source.start()
    with pytest.raises(ConfigError, match="baud"):
        open_source("serial:/dev/ttyS0?baud=fast", window=WindowSpec(2, 2, 1, (2,)))


def test_udp_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = open_source(f"udp://127.0.0.1:{port}", window=WindowSpec(size=2, hop=2, channels=1, shape=(2,)))
    source.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"1\n2\n", ("127.0.0.1", port))
            tx.sendto(b"x\n3", ("127.0.0.1", port))
            tx.sendto(b"4", ("127.0.0.1", port))
            windows = drain(source, limit=2)
    finally:
        source.close()
    assert [w.data.tolist() for w in windows] == [[1.0, 2.0], [3.0, 4.0]]
    assert source.counters.bad_lines == 1


@pytest.mark.parametrize("spec", ["udp://127.0.0.1:99999", "udp://127.0.0.1:port", "udp://127.0.0.1"])
def test_bad_udp_addresses_are_config_errors(spec: str) -> None:
    """A port out of range used to escape as urllib's ValueError (a traceback)."""
    with pytest.raises(ConfigError, match="UDP source"):
        open_source(spec, window=WindowSpec(size=2, hop=2, channels=1, shape=(2,)))


def test_stdin_source_reads_a_pipe_until_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.FileIO(r, "rb")))
    source = open_source("stdin", window=WindowSpec(size=2, hop=1, channels=1, shape=(2,)))
    source.start()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(4):
                f.write(f"{i}\n".encode())
                f.flush()
                time.sleep(0.01)

    threading.Thread(target=feed).start()
    try:
        windows = drain(source)
    finally:
        source.close()
    assert [x.data.tolist() for x in windows] == [[0, 1], [1, 2], [2, 3]]
