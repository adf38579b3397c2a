"""Chunked package transfer over MQTT (and an optional HTTP(S) source), resumable and with bounded memory.

The fleet publishes a package archive as retained messages: ``packages/{id}/meta`` (size, sha256, chunk size and
a sha256 per chunk) and ``packages/{id}/chunks/{i}``. The device subscribes to a small window of chunk topics at a
time, checks each chunk's hash, writes chunks to a ``.part`` file in order (fsync, then an atomic progress
record), and unsubscribes. After a disconnect the window is re-subscribed; after a restart the download resumes
from the last good chunk. The whole archive's sha256 and size come from the *signed* desired document, so the
unsigned meta can only speed things up, never make the device accept other bytes -- nor make it hold more: the
meta message is size-limited before it is parsed, its chunk size is bounded and must fit the signed size, every
chunk must have exactly its declared length (checked on the network thread, before it is queued), and the
``.part`` file never grows past the signed size. The HTTP(S) path is in ``http_transfer.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.fsutil import atomic_write_text, fsync_dir, sha256_file
from edge_runtime.sync.topics import Topics
from edge_runtime.update.errors import DiskFullError, TransferError

log = logging.getLogger(__name__)
META_SCHEMA = "package-meta/1"
DEFAULT_CHUNK = 240 * 1024  # under the link's default 256 KiB payload limit
MIN_CHUNK = 1024  # smallest chunk size a meta may declare (unless the whole archive is smaller)


class Link(Protocol):
    """The part of :class:`edge_runtime.sync.mqtt.MqttLink` the transfer needs."""

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...


class ChunkMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["package-meta/1"] = Field(default=META_SCHEMA, alias="schema", description="Schema.")
    package_id: str = Field(description="Package id (prefix of the archive sha256).")
    size: int = Field(gt=0, description="Archive size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the archive.")
    chunk_size: int = Field(gt=0, description="Bytes per chunk (the last one may be shorter).")
    chunk_sha256: tuple[str, ...] = Field(min_length=1, description="SHA-256 of each chunk, in order.")

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)


def package_id_for(sha256: str) -> str:
    return sha256[:24]


def iter_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def build_meta(archive: Path, chunk_size: int = DEFAULT_CHUNK) -> ChunkMeta:
    digest = sha256_file(archive)
    hashes = tuple(hashlib.sha256(c).hexdigest() for c in iter_chunks(archive, chunk_size))
    return ChunkMeta(
        package_id=package_id_for(digest), size=archive.stat().st_size, sha256=digest,
        chunk_size=chunk_size, chunk_sha256=hashes,
    )


def _write_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on device while writing {what}")
    return TransferError(f"cannot write {what}: {exc.strerror}", "io_error")


class TransferSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(default=4, ge=1, le=64, description="Chunks requested at once (memory = window x chunk).")
    max_chunk_bytes: int = Field(default=1 << 20, ge=MIN_CHUNK, description="Largest chunk size a meta may declare.")
    max_meta_bytes: int = Field(default=1 << 20, ge=1024, description="Largest meta message (refused unparsed).")
    chunk_retries: int = Field(default=5, ge=0, description="Re-fetches of a chunk whose hash is wrong.")
    resubscribe_s: float = Field(default=3.0, gt=0, description="Re-request outstanding chunks after this silence.")
    stall_timeout_s: float = Field(default=60.0, gt=0, description="Give up after this long without a good chunk.")


class ChunkDownloader:
    """Fetch one package archive into ``dest_dir``; resumable; returns the archive path after the hash check."""

    def __init__(
        self, link: Link, topics: Topics, dest_dir: Path, package_id: str, sha256: str, size: int,
        settings: TransferSettings | None = None,
        on_progress: Callable[[int, int, dict[str, int]], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.link, self.topics, self.dest = link, topics, Path(dest_dir)
        self.package_id, self.sha256, self.size = package_id, sha256, size
        self.s = settings or TransferSettings()
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.part = self.dest / f"{package_id}.part"
        self.progress_file = self.dest / f"{package_id}.progress"
        self.archive = self.dest / f"{package_id}.erpkg"
        self.stats = {"corrupt_chunks": 0, "wrong_size_chunks": 0, "resubscribes": 0, "resumed_from": 0,
                      "queue_drops": 0}
        # chunk index -> expected length, set once the meta is checked; read by the network thread
        self._expected: tuple[int, ...] = ()
        self._q: queue.Queue[tuple[int, bytes | None]] = queue.Queue(maxsize=2 * self.s.window)
        self._subscribed: set[int] = set()

    # ----------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        if self.archive.is_file() and sha256_file(self.archive) == self.sha256:
            return self.archive
        self.dest.mkdir(parents=True, exist_ok=True)
        meta = self._fetch_meta()
        last = meta.size - (meta.chunks - 1) * meta.chunk_size
        self._expected = (meta.chunk_size,) * (meta.chunks - 1) + (last,)
        good = self._resume_point(meta)
        self.stats["resumed_from"] = good
        try:
            self._fetch_chunks(meta, good)
        finally:
            for i in list(self._subscribed):
                self.link.unsubscribe(self.topics.package_chunk(self.package_id, i))
        return self._finish()

    def _wait_stop(self) -> None:
        if self.stop.is_set():
            raise TransferError("transfer interrupted", "interrupted")

    def _fetch_meta(self) -> ChunkMeta:
        topic = self.topics.package_meta(self.package_id)
        got: queue.Queue[bytes] = queue.Queue()
        limit = self.s.max_meta_bytes

        def on_meta(_t: str, p: bytes) -> None:  # network thread: an oversized meta is refused unparsed
            got.put(p if len(p) <= limit else b"\0")

        self.link.subscribe(topic, on_meta)
        try:
            deadline = time.monotonic() + self.s.stall_timeout_s
            while True:
                self._wait_stop()
                try:
                    raw = got.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                except queue.Empty:
                    if time.monotonic() > deadline:
                        msg = f"package {self.package_id} is not on the broker"
                        raise TransferError(msg, "package_missing") from None
                    continue
                if raw:
                    break
        finally:
            self.link.unsubscribe(topic)
        if raw == b"\0":
            raise TransferError(f"package meta for {self.package_id} is over {limit} bytes", "meta_too_large")
        return self._check_meta(raw)

    def _check_meta(self, raw: bytes) -> ChunkMeta:
        """Parse the (unsigned) meta and hold it to the signed size and sha256 and to the chunk-size bounds."""
        try:
            meta = ChunkMeta.model_validate_json(raw)
        except (ValidationError, ValueError, RecursionError) as exc:
            raise TransferError(f"package meta for {self.package_id} is malformed", "meta_malformed") from exc
        if meta.sha256 != self.sha256 or meta.size != self.size:
            raise TransferError("package meta does not match the signed desired document", "meta_mismatch")
        if not min(MIN_CHUNK, meta.size) <= meta.chunk_size <= self.s.max_chunk_bytes:
            raise TransferError(f"package meta declares chunks of {meta.chunk_size} bytes (allowed "
                                f"{MIN_CHUNK}..{self.s.max_chunk_bytes})", "meta_malformed")
        if meta.chunks != -(-meta.size // meta.chunk_size):
            raise TransferError("package meta has the wrong number of chunks", "meta_malformed")
        return meta

    def _resume_point(self, meta: ChunkMeta) -> int:
        """Chunks already written and recorded; the .part file is cut back to exactly those."""
        good = 0
        try:
            prog = json.loads(self.progress_file.read_text())
            if prog.get("sha256") == meta.sha256 and prog.get("chunk_size") == meta.chunk_size:
                good = int(prog["good"])
        except (OSError, ValueError, KeyError, TypeError):
            good = 0
        have = self.part.stat().st_size if self.part.exists() else 0
        good = max(0, min(good, have // meta.chunk_size, meta.chunks))
        if good == meta.chunks and have != meta.size:  # a .part longer than the signed size is never kept
            good = meta.chunks - 1
        try:
            with open(self.part, "ab") as f:
                f.truncate(good * meta.chunk_size)
        except OSError as exc:
            raise _write_error(exc, str(self.part)) from exc
        return good

    def _subscribe(self, i: int) -> None:
        self._subscribed.add(i)
        self.link.subscribe(self.topics.package_chunk(self.package_id, i), self._on_chunk)

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        """Network thread: check the chunk's length against the meta, hand it over, do no I/O here.

        A chunk of the wrong length is not queued (its bytes are dropped at once); the worker is told to count it
        and re-fetch. The queue is bounded: a flood of re-deliveries is dropped and re-requested after silence."""
        try:
            i = int(topic.rsplit("/", 1)[1])
        except ValueError:
            log.warning("ignoring chunk on odd topic %s", topic)
            return
        if not payload or not 0 <= i < len(self._expected) or i not in self._subscribed:
            return
        item: tuple[int, bytes | None] = (i, payload if len(payload) == self._expected[i] else None)
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.stats["queue_drops"] += 1

    def _fetch_chunks(self, meta: ChunkMeta, good: int) -> None:
        pending: dict[int, bytes] = {}
        corrupt: dict[int, int] = {}
        last_good = time.monotonic()
        with open(self.part, "ab") as out:
            while good < meta.chunks:
                self._wait_stop()
                for i in range(good, min(good + self.s.window, meta.chunks)):
                    if i not in self._subscribed and i not in pending:
                        self._subscribe(i)
                try:
                    i, payload = self._q.get(timeout=self.s.resubscribe_s)
                except queue.Empty:
                    if time.monotonic() - last_good > self.s.stall_timeout_s:
                        raise TransferError(f"transfer stalled at chunk {good}/{meta.chunks}", "stalled") from None
                    self._resubscribe_all()
                    continue
                if i not in self._subscribed or i in pending:
                    continue
                topic = self.topics.package_chunk(self.package_id, i)
                if payload is None:
                    self.stats["wrong_size_chunks"] += 1
                    self._corrupt(i, corrupt, meta, f"is not {self._expected[i]} bytes long", "chunk_wrong_size")
                    continue
                if hashlib.sha256(payload).hexdigest() != meta.chunk_sha256[i]:
                    self._corrupt(i, corrupt, meta, "failed its hash", "chunk_corrupt")
                    continue
                self.link.unsubscribe(topic)
                self._subscribed.discard(i)
                pending[i] = payload
                while good in pending:
                    data = pending.pop(good)
                    if out.tell() + len(data) > meta.size:  # cannot happen with checked lengths; never write past
                        raise TransferError(f"chunk {good} would grow the download past the signed size", "oversize")
                    self._append(out, data, what=f"chunk {good}")
                    good += 1
                    last_good = time.monotonic()
                    self._record(meta, good)

    def _corrupt(self, i: int, corrupt: dict[int, int], meta: ChunkMeta, what: str, code: str) -> None:
        corrupt[i] = corrupt.get(i, 0) + 1
        self.stats["corrupt_chunks"] += 1
        log.warning("chunk %d of %s %s (try %d)", i, self.package_id, what, corrupt[i])
        if corrupt[i] > self.s.chunk_retries:
            raise TransferError(f"chunk {i} {what} after {self.s.chunk_retries} re-fetches", code)
        topic = self.topics.package_chunk(self.package_id, i)
        self.link.unsubscribe(topic)
        time.sleep(min(2.0, 0.1 * 2 ** corrupt[i]))  # bounded backoff before asking for it again
        self.link.subscribe(topic, self._on_chunk)
        if self.on_progress:
            self.on_progress(-1, meta.chunks, dict(self.stats))

    def _resubscribe_all(self) -> None:
        self.stats["resubscribes"] += 1
        for i in sorted(self._subscribed):
            topic = self.topics.package_chunk(self.package_id, i)
            self.link.unsubscribe(topic)
            self.link.subscribe(topic, self._on_chunk)

    def _append(self, out, data: bytes, what: str) -> None:  # type: ignore[no-untyped-def]
        try:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise _write_error(exc, what) from exc

    def _record(self, meta: ChunkMeta, good: int) -> None:
        doc = {"sha256": meta.sha256, "chunk_size": meta.chunk_size, "good": good}
        try:
            atomic_write_text(self.progress_file, json.dumps(doc))
        except OSError as exc:
            raise _write_error(exc, "download progress") from exc
        if self.on_progress:
            self.on_progress(good, meta.chunks, dict(self.stats))

    def _finish(self) -> Path:
        if sha256_file(self.part) != self.sha256:
            self.discard()
            raise TransferError("downloaded archive does not match the signed sha256", "hash_mismatch")
        os.replace(self.part, self.archive)
        self.progress_file.unlink(missing_ok=True)
        fsync_dir(self.dest)
        return self.archive

    def discard(self) -> None:
        for p in (self.part, self.progress_file, self.archive):
            p.unlink(missing_ok=True)
