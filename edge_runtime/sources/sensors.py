"""Numeric sensor streams: a serial port (pyserial), stdin, a CSV/JSON-lines file, or UDP datagrams.

Each line is one sample (CSV/whitespace numbers, a JSON array, or a JSON object of numbers); samples are cut into
windows for the model by a Windower. Lines that do not parse, or carry the wrong number of values, are counted in
``counters.bad_lines`` and skipped; a text header before the first sample is skipped without counting.
Hostile input is refused the same way: a line longer than ``MAX_LINE_BYTES`` is never buffered whole (its first
bytes are counted as one bad line, the rest discarded up to the next newline), and nothing a line holds (deep JSON,
huge numbers, NaN, wrong types) raises out of the reader thread.
"""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from edge_runtime.errors import MissingDependencyError, SourceError
from edge_runtime.sources.base import DropPolicy, ReconnectPolicy, ThreadedSource
from edge_runtime.sources.windowing import MAX_LINE_BYTES, Windower, WindowSpec, parse_line

log = logging.getLogger(__name__)
_POLL_S = 0.2
_HEADER = re.compile(r"^[\sA-Za-z_][\w\s,;.\-\"']*$")
_READ_BYTES = 65536


class LineSource(ThreadedSource):
    """Base for line-oriented sensors: subclasses yield raw lines from ``_lines()``."""

    kind = "window"

    def __init__(self, name: str, window: WindowSpec, policy: DropPolicy, queue_size: int = 16) -> None:
        super().__init__(name, policy, queue_size)
        self.window = window
        self._windower = Windower(window)
        self._seen_sample = False

    def _lines(self) -> Iterator[bytes]:
        raise NotImplementedError

    def _take(self, line: bytes) -> bool:
        """Parse one line, feed the windower, emit a due window. False when the consumer has gone."""
        if len(line) > MAX_LINE_BYTES:
            self._bad_line(f"longer than {MAX_LINE_BYTES} bytes", line[:60].decode("utf-8", errors="replace"))
            return True
        text = line.decode("utf-8", errors="replace").strip()
        if not text or text.startswith("#"):
            return True
        values = parse_line(text)
        if values is None and not self._seen_sample and _HEADER.match(text):
            return True  # a CSV header
        if values is None or not self.window.accepts(values.size):
            want = self.window.describe()
            self._bad_line("does not parse" if values is None else f"has {values.size} values, expected {want}", text)
            return True
        self._seen_sample = True
        window = self._windower.push(values)
        return window is None or self._emit(window)

    def _bad_line(self, why: str, text: str) -> None:
        """Count a refused line; log the first three, then one in a thousand (a flood cannot fill the journal)."""
        self.counters.bad_lines += 1
        if self.counters.bad_lines <= 3 or self.counters.bad_lines % 1000 == 0:
            log.warning("%s: skipped line (%s; %d so far): %.60r", self.name, why, self.counters.bad_lines, text)

    def _loop(self) -> None:
        for line in self._lines():
            if self._stop.is_set() or not self._take(line):
                return


def split_lines(chunks: Iterator[bytes], max_len: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Re-cut a byte stream into lines (a final unterminated line is yielded too).

    A line that grows past ``max_len`` is yielded once, cut to ``max_len + 1`` bytes (the reader refuses it as too
    long), and the rest of it is skipped up to the next newline: a stream without newlines never fills memory.
    """
    rest, skipping = b"", False
    for chunk in chunks:
        if not chunk:
            continue
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        if parts and skipping:  # the newline that ends the over-long line
            parts, skipping = parts[1:], False
        yield from parts
        if len(rest) > max_len:
            if not skipping:
                yield rest[: max_len + 1]
            rest, skipping = b"", True
    if rest and not skipping:
        yield rest


class SensorFileSource(LineSource):
    """A CSV or JSON-lines file, read to its end."""

    def __init__(self, path: Path, window: WindowSpec, policy: DropPolicy, queue_size: int = 16) -> None:
        super().__init__(str(path), window, policy, queue_size)
        self.path = path

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"sensor file {self.path} does not exist")

    def _lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            yield from split_lines(iter(lambda: f.read(_READ_BYTES), b""))


class StdinSource(LineSource):
    """Lines on standard input (``--source stdin``), read with a poll so a stop is never stuck in read()."""

    def __init__(self, window: WindowSpec, policy: DropPolicy, queue_size: int = 16) -> None:
        super().__init__("stdin", window, policy, queue_size)

    def _open(self) -> None:
        try:
            self._fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError) as exc:
            raise SourceError("stdin is not readable") from exc

    def _chunks(self) -> Iterator[bytes]:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], _POLL_S)
            if not ready:
                continue
            chunk = os.read(self._fd, _READ_BYTES)
            if not chunk:
                return
            yield chunk

    def _lines(self) -> Iterator[bytes]:
        return split_lines(self._chunks())


class UdpSource(LineSource):
    """UDP datagrams on ``host:port``, each holding one or more lines."""

    def __init__(self, host: str, port: int, window: WindowSpec, policy: DropPolicy, queue_size: int = 16) -> None:
        super().__init__(f"udp://{host}:{port}", window, policy, queue_size)
        self.address = (host, port)
        self._sock: socket.socket | None = None

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            raise SourceError(f"cannot listen on {self.name}: {exc.strerror}") from exc
        sock.settimeout(_POLL_S)
        self._sock = sock

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def _lines(self) -> Iterator[bytes]:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            yield from data.splitlines()

    def _release(self) -> None:
        if self._sock is not None:
            self._sock.close()


class SerialSource(LineSource):
    """A serial port (``serial:/dev/ttyUSB0?baud=115200``); an unplugged device is reopened with backoff."""

    def __init__(
        self,
        port: str,
        baud: int,
        window: WindowSpec,
        policy: DropPolicy,
        queue_size: int = 16,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        super().__init__(f"serial:{port}", window, policy, queue_size)
        self.port, self.baud = port, baud
        self.reconnect = reconnect or ReconnectPolicy()
        self._serial = None

    def _try_open(self) -> str | None:
        try:
            import serial
        except ImportError as exc:
            raise MissingDependencyError("pyserial (serial port sources)", "sensors") from exc
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=_POLL_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            return str(exc)
        return None

    def _open(self) -> None:
        if self.port.startswith("/") and not os.path.exists(self.port):
            raise SourceError(f"cannot open serial port {self.port}: it does not exist")
        error = self._try_open()
        if error is not None:
            raise SourceError(f"cannot open serial port {self.port}: {error}")

    def _release(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def _chunks(self) -> Iterator[bytes]:
        import serial

        while not self._stop.is_set():
            try:
                if self._serial is None:  # not open (yet): reopen with backoff
                    raise OSError("serial port not open")
                chunk = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError):
                if not self._reopen():
                    return
                continue
            yield chunk

    def _keeps_trying(self) -> bool:
        return not self.reconnect.give_up

    def _reopen(self) -> bool:
        return self._reconnect_with(self.reconnect, lambda: self._try_open() is None)

    def _lines(self) -> Iterator[bytes]:
        return split_lines(self._chunks())
