"""Package verification before anything changes: archive size and sha256, signature, every file, profile, version.

Real signed packages (tests/model_factory) and real archives; each refusal carries its reason code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_runtime.fsutil import sha256_file
from edge_runtime.package import TrustStore
from edge_runtime.package.store import pack_archive, read_manifest
from edge_runtime.update.desired import DesiredModel
from edge_runtime.update.errors import VerificationError
from edge_runtime.update.verify import check_archive, verify_package


def _doc(pkg: Path, archive: Path | None = None, **over: object) -> DesiredModel:
    m = read_manifest(pkg)[0]
    fields: dict[str, object] = {
        "scope": "device", "target": "cam-1", "name": m.name, "version": m.version, "profile": m.profile,
        "package_id": "0" * 24, "sha256": sha256_file(archive) if archive else "0" * 64,
        "size": archive.stat().st_size if archive else 1, "sequence": 1, "issued": 0.0,
    }  # fmt: skip
    fields.update(over)
    return DesiredModel.model_validate(fields)


@pytest.fixture
def trust(ota_keys: dict[str, Path]) -> TrustStore:
    return TrustStore.from_paths([ota_keys["pub"]])


def _code(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError) as info:
        fn(*args)
    return info.value.code


def test_archive_size_and_sha256_come_from_the_signed_document(tmp_path: Path, ota_packages) -> None:
    archive = pack_archive(ota_packages["v2"], tmp_path / "v2.erpkg")
    doc = _doc(ota_packages["v2"], archive)
    check_archive(archive, doc)  # intact: passes
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit flipped
    flipped = tmp_path / "flipped.erpkg"
    flipped.write_bytes(bytes(data))
    assert _code(check_archive, flipped, doc) == "hash_mismatch"
    short = tmp_path / "short.erpkg"
    short.write_bytes(bytes(data[:-1]))
    assert _code(check_archive, short, doc) == "size_mismatch"


def test_good_package_verifies(ota_packages, trust: TrustStore) -> None:
    pkg = verify_package(ota_packages["v2"], trust, "x86-laptop", _doc(ota_packages["v2"]), "1.0.0")
    assert (pkg.manifest.name, pkg.manifest.version) == ("tiny", "2.0.0")


def test_signature_checks(tmp_path: Path, ota_keys, ota_packages, trust: TrustStore) -> None:
    v2 = ota_packages["v2"]
    assert _code(verify_package, ota_packages["unsigned"], trust, "x86-laptop", _doc(ota_packages["unsigned"]),
                 "1.0.0") == "signature_missing"
    assert _code(verify_package, ota_packages["rogue"], trust, "x86-laptop", _doc(ota_packages["rogue"]),
                 "1.0.0") == "untrusted_key"
    # the manifest changed after signing (a field an attacker would like to change): the signature breaks
    forged = tmp_path / "forged"
    shutil.copytree(v2, forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["profile"] = "raspberry-pi-4"
    (forged / "manifest.json").write_text(json.dumps(manifest))
    assert _code(verify_package, forged, trust, "raspberry-pi-4", _doc(v2, profile="raspberry-pi-4"),
                 "1.0.0") == "signature_invalid"
    assert _code(verify_package, v2, TrustStore.from_paths([]), "x86-laptop", _doc(v2), "1.0.0") == "no_trusted_keys"


def test_every_file_hash_is_checked(tmp_path: Path, ota_packages, trust: TrustStore) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(ota_packages["v2"], bad)
    golden = bad / "golden.npz"
    data = bytearray(golden.read_bytes())
    data[-5] ^= 0xFF
    golden.write_bytes(bytes(data))
    assert _code(verify_package, bad, trust, "x86-laptop", _doc(ota_packages["v2"]), "1.0.0") == "package_invalid"


def test_profile_and_document_must_match(ota_packages, trust: TrustStore) -> None:
    pi = ota_packages["other_profile"]
    assert _code(verify_package, pi, trust, "x86-laptop", _doc(pi), "1.0.0") == "wrong_profile"
    v2 = ota_packages["v2"]
    assert _code(verify_package, v2, trust, "x86-laptop", _doc(v2, version="2.0.1"), "1.0.0") == "desired_mismatch"
    assert _code(verify_package, v2, trust, "x86-laptop", _doc(v2, name="other"), "1.0.0") == "desired_mismatch"


@pytest.mark.parametrize(("current", "rollback", "ok"), [
    ("1.0.0", False, True),   # newer: accepted
    (None, False, True),      # nothing installed yet
    ("2.0.0", False, False),  # same version again: a replay
    ("3.0.0", False, False),  # older: a downgrade
    ("3.0.0", True, True),    # older, but the signed document says rollback
])  # fmt: skip
def test_version_must_be_newer_unless_signed_rollback(ota_packages, trust, current, rollback, ok) -> None:
    v2 = ota_packages["v2"]
    doc = _doc(v2, rollback=rollback)
    if ok:
        verify_package(v2, trust, "x86-laptop", doc, current)
    else:
        assert _code(verify_package, v2, trust, "x86-laptop", doc, current) == "downgrade"
