"""Fuzzing the sensor ports: the line parser, the line splitter, and the reader threads of a CSV/JSON-lines file,
a UDP socket and a serial port (a real pty pair). Property: no input raises out of a parser or kills a reader
thread; every line is either a sample or a counted bad line."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.sources import SourceOptions, open_source
from edge_runtime.sources.base import END, DropPolicy
from edge_runtime.sources.sensors import SensorFileSource, split_lines
from edge_runtime.sources.windowing import MAX_LINE_BYTES, WindowSpec, parse_line
from tests.security import hostile
from tests.security.strategies import JSON, dumps

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])  # fmt: skip
ONE_SAMPLE = WindowSpec(size=1, hop=1, channels=3, shape=(1, 3))  # every accepted line becomes a window
SENTINEL = b"1,2,3"
LIVE = SourceOptions(drop_policy=DropPolicy.DROP_OLDEST)  # nobody consumes here: a full queue must not block

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                   st.sampled_from(["1e999", "-1e999", "nan", "inf", "0x10", "1_000", "", "-", "1e", "٣"]))  # fmt: skip
LINE = st.one_of(
    st.lists(NUMBER, min_size=0, max_size=6).map(lambda xs: ",".join(xs).encode()),
    JSON.map(dumps),
    st.binary(max_size=300),
    st.sampled_from([hostile.deep_json(60000), hostile.deep_json(2000, b'{"a":'), b"[" + b"9" * 5000 + b"]",
                     b"#comment", b"   ", b"a,b,c", b'{"x": 1, "y": 2, "z": 3}', b"1;2 3"]),
).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))  # fmt: skip


@FUZZ
@given(line=st.one_of(LINE, st.binary(max_size=2000), st.text(max_size=200)))
def test_parse_line_never_raises_and_returns_finite_values(line) -> None:
    values = parse_line(line)
    assert values is None or (values.dtype == np.float32 and values.ndim == 1 and np.isfinite(values).all())


def test_parse_line_refuses_over_long_lines_unparsed() -> None:
    assert parse_line(b"1," * (MAX_LINE_BYTES // 2) + b"1") is None
    assert parse_line(b"1,2,3").tolist() == [1.0, 2.0, 3.0]


@FUZZ
@given(lines=st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       cuts=st.lists(st.integers(1, 64), min_size=1, max_size=10), max_len=st.integers(4, 40))
def test_split_lines_bounds_every_line_and_keeps_short_ones(lines, cuts, max_len) -> None:
    data = b"\n".join(lines)
    chunks, i, k = [], 0, 0
    while i < len(data):
        chunks.append(data[i : i + cuts[k % len(cuts)]])
        i, k = i + cuts[k % len(cuts)], k + 1
    out = list(split_lines(iter(chunks), max_len=max_len))
    biggest = max(cuts)
    assert all(len(line) <= max_len + biggest for line in out)
    assert len(out) <= len(lines)
    if all(len(line) <= max_len for line in lines):
        assert out == [line for line in data.split(b"\n")][: len(out)] and len(out) >= len(lines) - 1


def drain_file_source(path: Path) -> SensorFileSource:
    source = SensorFileSource(path, ONE_SAMPLE, DropPolicy.BLOCK, queue_size=4)
    source.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if source.get(timeout=1.0) is END:  # raises the reader's exception if it died
                return source
        raise AssertionError("the file source did not reach its end")
    finally:
        source.close()


def accepted(line: bytes) -> bool:
    values = parse_line(line) if len(line) <= MAX_LINE_BYTES else None
    return values is not None and values.size == 3


@FUZZ
@given(lines=st.lists(LINE, max_size=12))
def test_file_reader_counts_every_line_as_a_sample_or_a_bad_line(lines) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.jsonl"
        path.write_bytes(SENTINEL + b"\n" + b"\n".join(lines) + b"\n")  # a first sample: no header skipping after it
        source = drain_file_source(path)
    texts = [line.decode("utf-8", errors="replace").strip() for line in lines]  # Unicode whitespace, as the reader
    blank = sum(1 for text in texts if not text or text.startswith("#"))  # (b"\x1c" is a blank line, not a bad one)
    assert source.counters.captured == 1 + sum(accepted(line) for line in lines)
    assert source.counters.captured + source.counters.bad_lines + blank == 1 + len(lines)


def test_file_reader_refuses_a_line_larger_than_memory_should_hold(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with open(path, "wb") as f:
        f.write(SENTINEL + b"\n")
        for _ in range(64):  # 64 MiB on one line
            f.write(b"1," * (512 * 1024))
        f.write(b"\n" + SENTINEL + b"\n")
    source = drain_file_source(path)
    assert (source.counters.captured, source.counters.bad_lines) == (2, 1)


def wait_for(check, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def udp_source():  # noqa: ANN201
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = open_source(f"udp://127.0.0.1:{port}", window=ONE_SAMPLE, options=LIVE)
    source.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield source, lambda data: sock.sendto(data, ("127.0.0.1", port))
    sock.close()
    source.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(datagrams=st.lists(st.one_of(LINE, st.binary(min_size=1, max_size=65000)), min_size=1, max_size=4))
def test_udp_reader_survives_any_datagram(udp_source, datagrams) -> None:
    source, send = udp_source
    for d in datagrams:
        send(d[:65000])
    before = source.counters.captured
    send(SENTINEL)
    assert wait_for(lambda: source.counters.captured > before), "the UDP reader stopped taking samples"


@pytest.fixture(scope="module")
def serial_source():  # noqa: ANN201
    master, slave = os.openpty()
    source = open_source(f"serial:{os.ttyname(slave)}?baud=115200", window=ONE_SAMPLE,
                         options=LIVE)  # fmt: skip
    source.start()

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(master, view[:4096])
            view = view[n:]

    yield source, write
    source.close()
    os.close(master)
    os.close(slave)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chunks=st.lists(st.one_of(LINE, st.binary(max_size=3000)), min_size=1, max_size=4))
def test_serial_reader_survives_any_bytes(serial_source, chunks) -> None:
    source, write = serial_source
    for c in chunks:
        write(c)
    before = source.counters.captured
    write(b"\n" + SENTINEL + b"\n")  # ends whatever partial line came before
    assert wait_for(lambda: source.counters.captured > before), "the serial reader stopped taking samples"


def test_serial_reader_survives_a_stream_without_newlines(serial_source) -> None:
    source, write = serial_source
    bad = source.counters.bad_lines
    write(b"[" * (4 * MAX_LINE_BYTES))
    before = source.counters.captured
    write(b"\n" + SENTINEL + b"\n")
    assert wait_for(lambda: source.counters.captured > before)
    assert source.counters.bad_lines == bad + 1
