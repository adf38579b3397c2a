"""Given a package on disk, when any byte changes, then loading refuses it with a clear reason."""

from __future__ import annotations

import json

import pytest

from edge_runtime.cli import main
from edge_runtime.errors import PackageError, SignatureError
from edge_runtime.package import (
    TrustStore,
    generate_keypair,
    load_package,
    load_private_key,
    pack_archive,
    sign_package,
)
from tests.package.helpers import make_package, manifest_fields


@pytest.fixture
def keys(tmp_path):
    priv, pub = generate_keypair(tmp_path / "k" / "release")
    return load_private_key(priv), pub


def test_written_package_verifies_with_its_key(tmp_path, keys):
    key, pub = keys
    pkg = make_package(tmp_path / "p", sign_key=key)
    loaded = load_package(pkg.root, trust=TrustStore.from_paths([pub]))
    assert loaded.signer and loaded.manifest.name == "unit"
    assert {f.path for f in loaded.manifest.files} == {"model.onnx", "golden.npz"}


@pytest.mark.parametrize("victim", ["model.onnx", "golden.npz", "manifest.json", "signature.json"])
def test_tampering_with_any_file_is_caught(tmp_path, keys, victim):
    key, pub = keys
    pkg = make_package(tmp_path / "p", sign_key=key)
    path = pkg.root / victim
    data = bytearray(path.read_bytes())
    if victim == "manifest.json":
        doc = json.loads(data)
        doc["version"] = "9.9.9"
        data = bytearray(json.dumps(doc).encode())
    elif victim == "signature.json":
        doc = json.loads(data)
        sig = bytearray(doc["signature"].encode())
        sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
        doc["signature"] = sig.decode()
        data = bytearray(json.dumps(doc).encode())
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises((PackageError, SignatureError)):
        load_package(pkg.root, trust=TrustStore.from_paths([pub]))


def test_hashes_checked_even_without_trust(tmp_path):
    pkg = make_package(tmp_path / "p")
    (pkg.root / "model.onnx").write_bytes(b"swapped model")
    with pytest.raises(PackageError, match="size|sha256"):
        load_package(pkg.root, allow_unsigned=True)


def test_unsigned_package_refused_by_default(tmp_path):
    pkg = make_package(tmp_path / "p")
    with pytest.raises(SignatureError, match="not signed.*keygen.*sign.*--trust.*--allow-unsigned") as exc:
        load_package(pkg.root)
    assert exc.value.code == "signature_missing"
    assert load_package(pkg.root, allow_unsigned=True).signer is None


def test_extra_and_missing_files_are_refused(tmp_path):
    pkg = make_package(tmp_path / "p")
    (pkg.root / "evil.py").write_text("print('hi')")
    with pytest.raises(PackageError, match="does not cover: evil.py"):
        load_package(pkg.root, allow_unsigned=True)
    (pkg.root / "evil.py").unlink()
    (pkg.root / "golden.npz").unlink()
    with pytest.raises(PackageError, match="missing golden.npz"):
        load_package(pkg.root, allow_unsigned=True)


def test_unsigned_package_refused_when_trust_configured(tmp_path, keys):
    _, pub = keys
    pkg = make_package(tmp_path / "p")
    with pytest.raises(SignatureError, match="not signed"):
        load_package(pkg.root, trust=TrustStore.from_paths([pub]))


def test_untrusted_key_refused(tmp_path, keys):
    key, _ = keys
    _, other_pub = generate_keypair(tmp_path / "k2" / "other")
    pkg = make_package(tmp_path / "p", sign_key=key)
    with pytest.raises(SignatureError, match="untrusted key"):
        load_package(pkg.root, trust=TrustStore.from_paths([other_pub]))


def test_sign_refuses_a_tampered_package(tmp_path, keys):
    key, _ = keys
    pkg = make_package(tmp_path / "p")
    (pkg.root / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(PackageError):
        sign_package(pkg.root, key)
    assert not (pkg.root / "signature.json").exists()


def test_archive_roundtrip_and_cached_load(tmp_path, keys):
    key, pub = keys
    pkg = make_package(tmp_path / "p", sign_key=key)
    archive = pack_archive(pkg.root, tmp_path / "p.erpkg")
    assert pack_archive(pkg.root, tmp_path / "again.erpkg").read_bytes() == archive.read_bytes()  # deterministic
    loaded = load_package(archive, trust=TrustStore.from_paths([pub]))
    assert loaded.manifest == pkg.manifest


def test_failed_write_leaves_no_package_and_keeps_the_old_one(tmp_path):
    from edge_runtime.package.store import write_package

    make_package(tmp_path / "p")
    before = (tmp_path / "p" / "manifest.json").read_bytes()
    bad = manifest_fields()
    bad["version"] = "not-semver"
    with pytest.raises(PackageError, match="version"):
        write_package(tmp_path / "p", {"model.onnx": b"x", "golden.npz": b"y"}, bad, overwrite=True)
    assert (tmp_path / "p" / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_cli_keygen_sign_verify_inspect(tmp_path, capsys):
    pkg = make_package(tmp_path / "p")
    assert main(["keygen", "--out", str(tmp_path / "keys" / "fleet")]) == 0
    assert (tmp_path / "keys" / "fleet.key").stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "--out", str(tmp_path / "keys" / "fleet")]) == 2  # never overwrites a key
    assert main(["sign", str(pkg.root), "--key", str(tmp_path / "keys" / "fleet.key")]) == 0
    assert main(["verify", str(pkg.root), "--key", str(tmp_path / "keys" / "fleet.pub")]) == 0  # old flag name
    assert main(["verify", str(pkg.root), "--trust", str(tmp_path / "keys" / "fleet.pub")]) == 0
    assert main(["inspect", str(pkg.root)]) == 0
    out = capsys.readouterr().out
    assert "unit 1.0.0" in out and "classification" in out
    assert main(["inspect", str(pkg.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "unit"
    (pkg.root / "model.onnx").write_bytes(b"evil")
    assert main(["verify", str(pkg.root), "--key", str(tmp_path / "keys" / "fleet.pub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-runtime: error:")
