"""Fuzzing the parsers of documents a device receives: the package manifest and its signature document, the
signed desired document, the chunk meta and the chunks of a transfer. Property: whatever the bytes, the parser
either accepts them or raises its subsystem's documented error (never RecursionError, TypeError, KeyError...)."""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.errors import PackageError, SignatureError
from edge_runtime.package import generate_keypair, load_package, load_private_key
from edge_runtime.package.signing import TrustStore, sign_bytes
from edge_runtime.sync.topics import Topics
from edge_runtime.update.desired import DesiredModel, open_desired, sign_desired
from edge_runtime.update.errors import TransferError, VerificationError
from edge_runtime.update.transfer import ChunkDownloader, TransferSettings, build_meta
from tests import model_factory
from tests.security.hostile import MemoryLink
from tests.security.strategies import JSON, dumps, hostile_json

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-documents")
    private, public = generate_keypair(root / "keys" / "ops")
    key = load_private_key(private)
    pkg = model_factory.classifier_package(root / "pkg", golden=False, sign_key=key).root
    return {"root": root, "key": key, "trust": TrustStore.from_paths([public]), "pkg": pkg,
            "manifest": json.loads((pkg / "manifest.json").read_bytes())}  # fmt: skip


def package_with(world: dict, manifest: bytes | None = None, signature: bytes | None = None) -> Path:
    """A copy of the signed package with its manifest and/or signature document replaced."""
    dest = Path(tempfile.mkdtemp(dir=world["root"])) / "pkg"
    shutil.copytree(world["pkg"], dest)
    if manifest is not None:
        (dest / "manifest.json").write_bytes(manifest)
    if signature is not None:
        (dest / "signature.json").write_bytes(signature)
    return dest


@FUZZ
@given(data=st.data())
def test_manifest_fuzz_is_a_package_error(world, data) -> None:
    raw = data.draw(hostile_json(world["manifest"]))
    root = package_with(world, manifest=raw)
    try:
        load_package(root, trust=world["trust"])
    except PackageError:
        pass  # refused (SignatureError is a PackageError: a changed manifest no longer matches its signature)
    finally:
        shutil.rmtree(root.parent)


@FUZZ
@given(data=st.data())
def test_unsigned_manifest_fuzz_is_a_package_error(world, data) -> None:
    """Without a signature check the manifest's own validation is what stands: still only PackageError."""
    raw = data.draw(hostile_json(world["manifest"]))
    root = package_with(world, manifest=raw)
    (root / "signature.json").unlink()
    try:
        load_package(root, require_signature=False)
    except PackageError:
        pass
    finally:
        shutil.rmtree(root.parent)


@FUZZ
@given(data=st.data())
def test_signature_document_fuzz_is_a_signature_error(world, data) -> None:
    valid = json.loads(sign_bytes(world["key"], (world["pkg"] / "manifest.json").read_bytes()))
    raw = data.draw(hostile_json(valid))
    root = package_with(world, signature=raw)
    try:
        load_package(root, trust=world["trust"])
    except SignatureError:
        pass
    finally:
        shutil.rmtree(root.parent)


def desired(world: dict, **changes) -> DesiredModel:
    fields = {"scope": "device", "target": "cam-1", "name": "tiny", "version": "1.2.0", "profile": "x86-laptop",
              "package_id": "ab" * 12, "sha256": "cd" * 32, "size": 1000, "sequence": 5, "issued": 1.0e9}
    return DesiredModel(**{**fields, **changes})


@FUZZ
@given(data=st.data())
def test_desired_envelope_fuzz_is_a_verification_error(world, data) -> None:
    valid = json.loads(sign_desired(desired(world), world["key"]))
    raw = data.draw(hostile_json(valid))
    try:
        open_desired(raw, world["trust"])
    except VerificationError:
        pass


@FUZZ
@given(data=st.data())
def test_signed_but_hostile_desired_document_is_a_verification_error(world, data) -> None:
    """A document signed by a trusted key but with hostile fields (a buggy or compromised publisher): the
    document's own validation refuses it with the documented error."""
    valid = desired(world).model_dump(mode="json", by_alias=True)
    text = data.draw(hostile_json(valid)).decode("utf-8", errors="replace")
    sig = json.loads(sign_bytes(world["key"], text.encode()))
    envelope = json.dumps({"schema": "desired-envelope/1", "document": text, "signature": sig}).encode()
    try:
        open_desired(envelope, world["trust"])
    except VerificationError:
        pass


QUICK = TransferSettings(window=4, chunk_retries=1, resubscribe_s=0.05, stall_timeout_s=0.3)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("fuzz-archive") / "pkg.erpkg"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes: 5 chunks of 2048
    return path, build_meta(path, chunk_size=2048)


def download(archive, retained: dict[str, bytes]) -> Path:
    path, meta = archive
    dest = Path(tempfile.mkdtemp())
    try:
        d = ChunkDownloader(MemoryLink(retained), Topics(), dest, meta.package_id, meta.sha256, meta.size, QUICK)
        return d.run().read_bytes()
    finally:
        shutil.rmtree(dest)


def retained_for(meta, meta_bytes: bytes, chunks: dict[int, bytes]) -> dict[str, bytes]:
    topics = Topics()
    out = {topics.package_meta(meta.package_id): meta_bytes}
    out.update({topics.package_chunk(meta.package_id, i): c for i, c in chunks.items()})
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_chunk_meta_fuzz_is_a_transfer_error(archive, data) -> None:
    path, meta = archive
    raw = data.draw(hostile_json(json.loads(meta.model_dump_json(by_alias=True))))
    chunks = dict(enumerate(path.read_bytes()[i : i + 2048] for i in range(0, meta.size, 2048)))
    try:
        assert download(archive, retained_for(meta, raw, chunks)) == path.read_bytes()
    except TransferError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_chunks_are_a_transfer_error_or_the_exact_archive(archive, data) -> None:
    path, meta = archive
    chunks = dict(enumerate(path.read_bytes()[i : i + 2048] for i in range(0, meta.size, 2048)))
    for i in data.draw(st.sets(st.integers(0, meta.chunks - 1), min_size=1, max_size=3)):
        chunks[i] = data.draw(st.one_of(st.binary(max_size=4096), st.just(chunks[i] + b"x"), st.just(b""),
                                        st.just(chunks[i][:-1]), st.just(bytes(2048 * 8))))  # fmt: skip
    meta_bytes = meta.model_dump_json(by_alias=True).encode()
    try:
        assert download(archive, retained_for(meta, meta_bytes, chunks)) == path.read_bytes()
    except TransferError:
        pass


def test_strategies_produce_what_they_claim() -> None:
    """The hostile strategies are not vacuous: deep nesting and mutations really come out of them."""
    seen: queue.Queue[bytes] = queue.Queue()

    @settings(max_examples=200, deadline=None, database=None)
    @given(raw=hostile_json({"a": 1, "b": "x"}))
    def collect(raw: bytes) -> None:
        seen.put(raw)

    collect()
    samples = [seen.get() for _ in range(seen.qsize())]
    assert any(s.startswith(b"[" * 1000) or s.startswith(b'{"a":' * 1000) for s in samples)
    assert any(s.startswith(b"{") and b'"a"' in s and len(s) < 500 for s in samples)
    assert dumps(float("nan")) == b"NaN" and JSON is not None
