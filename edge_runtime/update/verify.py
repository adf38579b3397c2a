"""Verify a downloaded package before anything on the device changes.

Checks, in order: the archive's size and sha256 (against the signed desired document), the Ed25519 signature of
the manifest by a trusted key, every file's size and sha256, that the package is the one the document names,
that it was built for this device's profile, and that its version is newer than the one serving unless the
signed desired document marks an explicit rollback. Each failure raises VerificationError with a reason code.
"""

from __future__ import annotations

from pathlib import Path

from edge_runtime.errors import PackageError, SignatureError
from edge_runtime.fsutil import sha256_file
from edge_runtime.package.manifest import Manifest, parse_semver
from edge_runtime.package.signing import TrustStore
from edge_runtime.package.store import Package, load_package
from edge_runtime.update.desired import DesiredModel
from edge_runtime.update.errors import VerificationError


def check_archive(archive: Path, doc: DesiredModel) -> None:
    size = archive.stat().st_size
    if size != doc.size:
        raise VerificationError(f"archive is {size} bytes, the signed document says {doc.size}", "size_mismatch")
    if sha256_file(archive) != doc.sha256:
        raise VerificationError("archive sha256 differs from the signed document", "hash_mismatch")


def _signature_code(exc: SignatureError) -> str:
    known = ("signature_missing", "untrusted_key", "wrong_role", "signature_malformed")
    return exc.code if exc.code in known else "signature_invalid"


def check_version(new: Manifest, current_version: str | None, rollback: bool) -> None:
    """Newer than ``current_version``, unless the signed document says this is a rollback."""
    if current_version is None or rollback:
        return
    if parse_semver(new.version) <= parse_semver(current_version):
        raise VerificationError(
            f"version {new.version} is not newer than {current_version} and the document is not a signed "
            "rollback (downgrade or replay refused)",
            "downgrade",
        )


def verify_package(
    pkg_dir: Path, trust: TrustStore, profile: str, doc: DesiredModel, current_version: str | None
) -> Package:
    """Return the verified package in ``pkg_dir`` or raise VerificationError (nothing is changed either way)."""
    if not trust:
        raise VerificationError("the device trusts no signing key; refusing every update", "no_trusted_keys")
    try:
        pkg = load_package(pkg_dir, trust, require_signature=True)
    except SignatureError as exc:
        raise VerificationError(str(exc), _signature_code(exc)) from exc
    except PackageError as exc:
        raise VerificationError(str(exc), "package_invalid") from exc
    m = pkg.manifest
    if (m.name, m.version) != (doc.name, doc.version):
        raise VerificationError(
            f"package is {m.name} {m.version} but the document names {doc.name} {doc.version}", "desired_mismatch"
        )
    if m.profile != profile or doc.profile != profile:
        raise VerificationError(f"package is for profile {m.profile!r}, this device is {profile!r}", "wrong_profile")
    check_version(m, current_version, doc.rollback)
    return pkg
