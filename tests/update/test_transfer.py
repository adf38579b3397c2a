"""Chunked MQTT transfer against a real mosquitto: bounded by the signed size and the declared chunk lengths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_runtime.fsutil import sha256_file
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from edge_runtime.sync.topics import Topics
from edge_runtime.update.errors import TransferError
from edge_runtime.update.transfer import ChunkDownloader, TransferSettings, build_meta, iter_chunks

pytestmark = pytest.mark.mqtt
CHUNK = 8192
FAST = TransferSettings(window=2, chunk_retries=1, resubscribe_s=0.5, stall_timeout_s=20)


@pytest.fixture
def links(broker):  # noqa: ANN201
    made = []
    for name in ("fleet", "cam-1"):
        link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, device_id=name, max_payload=1 << 21),
                        will=False)
        link.start()
        assert link.wait_connected(10)
        made.append(link)
    yield made
    for link in made:
        link.stop()


def _archive(tmp_path: Path, size: int = 5 * CHUNK + 100) -> Path:
    p = tmp_path / "pkg.erpkg"
    p.write_bytes(os.urandom(size))
    return p


def _publish(fleet: MqttLink, archive: Path, meta_raw: bytes | None = None, chunks: dict[int, bytes] | None = None):  # noqa: ANN202
    meta = build_meta(archive, CHUNK)
    t = Topics()
    handles = [fleet.publish(t.package_chunk(meta.package_id, i), (chunks or {}).get(i, c), retain=True)
               for i, c in enumerate(iter_chunks(archive, CHUNK))]
    handles.append(fleet.publish(t.package_meta(meta.package_id), meta_raw or meta.model_dump_json(by_alias=True)
                                 .encode(), retain=True))
    assert all(h.wait(10) for h in handles)
    return meta


def _downloader(dev: MqttLink, dest: Path, meta, **kw) -> ChunkDownloader:  # noqa: ANN001
    return ChunkDownloader(dev, Topics(), dest, meta.package_id, meta.sha256, meta.size, kw.pop("settings", FAST), **kw)


def test_download_resumes_and_never_keeps_more_than_the_signed_size(tmp_path, links):
    fleet, dev = links
    archive = _archive(tmp_path)
    meta = _publish(fleet, archive)
    dest = tmp_path / "dl"
    dest.mkdir()
    # A .part left longer than the signed size (with a progress record claiming every chunk) is cut back.
    (dest / f"{meta.package_id}.part").write_bytes(archive.read_bytes() + b"x" * 50_000)
    (dest / f"{meta.package_id}.progress").write_text(json.dumps(
        {"sha256": meta.sha256, "chunk_size": CHUNK, "good": meta.chunks}))
    out = _downloader(dev, dest, meta).run()
    assert sha256_file(out) == meta.sha256 and out.stat().st_size == meta.size


def test_oversized_chunk_is_dropped_unqueued_and_refetched_until_it_gives_up(tmp_path, links):
    """The issue's attack: 16x-sized chunks on the chunk topics. Each is refused on its length before it is
    queued or hashed, the .part never grows past the signed size, and the transfer ends with a clear code."""
    fleet, dev = links
    archive = _archive(tmp_path)
    big = os.urandom(16 * CHUNK)
    meta = _publish(fleet, archive, chunks={1: big, 2: big})
    dest = tmp_path / "dl"
    sizes: list[int] = []
    part = dest / f"{meta.package_id}.part"
    d = _downloader(dev, dest, meta, on_progress=lambda *a: sizes.append(part.stat().st_size))
    with pytest.raises(TransferError) as err:
        d.run()
    assert err.value.code == "chunk_wrong_size" and "is not 8192 bytes long" in str(err.value)
    assert d.stats["wrong_size_chunks"] >= 2 and d.stats["corrupt_chunks"] >= 2
    assert max(sizes + [part.stat().st_size]) <= CHUNK  # only chunk 0 was ever written
    # the fleet replaces the bad chunks: the same downloader state resumes from chunk 1 and completes
    _publish(fleet, archive)
    out = _downloader(dev, dest, meta).run()
    assert sha256_file(out) == meta.sha256


@pytest.mark.parametrize(("case", "code"), [("too_large", "meta_too_large"), ("huge_chunk", "meta_malformed"),
                                            ("other_size", "meta_mismatch"), ("deep", "meta_malformed"),
                                            ("garbage", "meta_malformed")])
def test_bad_meta_is_refused(tmp_path, links, case, code):
    fleet, dev = links
    archive = _archive(tmp_path)
    meta = build_meta(archive, CHUNK)
    doc = json.loads(meta.model_dump_json(by_alias=True))
    if case == "too_large":  # refused on its length, unparsed
        raw = json.dumps({**doc, "pad": "x" * (1 << 20)}).encode()
    elif case == "huge_chunk":  # one 64 MiB "chunk": would let a single message be that large
        raw = json.dumps({**doc, "chunk_size": 1 << 26, "chunk_sha256": [doc["chunk_sha256"][0]]}).encode()
    elif case == "other_size":
        raw = json.dumps({**doc, "size": doc["size"] * 17}).encode()
    elif case == "deep":
        raw = b"[" * 100_000
    else:
        raw = b"\xff\xfe not json"
    _publish(fleet, archive, meta_raw=raw)
    with pytest.raises(TransferError) as err:
        _downloader(dev, tmp_path / "dl", meta).run()
    assert err.value.code == code, err.value
    assert not (tmp_path / "dl" / f"{meta.package_id}.part").exists() or \
        (tmp_path / "dl" / f"{meta.package_id}.part").stat().st_size == 0
