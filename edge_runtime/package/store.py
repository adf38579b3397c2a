"""Model packages on disk: write (atomically), sign, load with verification, pack and unpack archives.

A package is a directory::

    manifest.json      the Manifest (covers every other file by sha256 and size)
    signature.json     Ed25519 signature over the exact bytes of manifest.json (required unless allowed unsigned)
    model.tflite|onnx  the model
    golden.npz, ...    other files listed in the manifest

and its single-file transfer form is a plain ustar archive of that directory's contents (``.erpkg``), manifest and
signature first (:mod:`edge_runtime.package.archive`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.errors import PackageError, SignatureError, validation_message
from edge_runtime.fsutil import atomic_directory, atomic_open, atomic_write_bytes, sha256_file
from edge_runtime.package.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    check_signature,
    extract_verified,
    parse_manifest,
    read_archive_head,
    write_archive,
)
from edge_runtime.package.cache import extract_cached
from edge_runtime.package.manifest import (
    INFORMATIONAL_BLOCKS,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
)
from edge_runtime.package.signing import (
    MAX_SIGNATURE_DOC,
    RELEASE,
    Ed25519PrivateKey,
    TrustStore,
    sign_bytes,
    verify_bytes,
)

ARCHIVE_SUFFIX = ".erpkg"


@dataclass(frozen=True)
class Package:
    """A package whose files were checked against its manifest."""

    root: Path
    manifest: Manifest
    signer: str | None = None

    def path(self, rel: str) -> Path:
        self.manifest.file_entry(rel)  # only files the manifest covers
        return self.root / rel

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model_file


def _list_files(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise PackageError(f"package {root} contains a symlink: {p.relative_to(root)}")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME):
                out.append(rel)
    return out


def file_entries(root: Path) -> tuple[FileEntry, ...]:
    """Hash every file under ``root`` (except manifest and signature)."""
    return tuple(
        FileEntry(path=rel, sha256=sha256_file(root / rel), size=(root / rel).stat().st_size)
        for rel in _list_files(root)
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n").encode()


def finalize_package(root: Path, fields: Mapping[str, Any], sign_key: Ed25519PrivateKey | None = None) -> Manifest:
    """Hash the files in ``root``, write manifest.json (and signature.json when a key is given)."""
    data = dict(fields)
    data["files"] = [f.model_dump() for f in file_entries(root)]
    present = [k for k in INFORMATIONAL_BLOCKS if data.get(k) is not None]
    data["optional_blocks"] = [*dict.fromkeys([*data.get("optional_blocks", ()), *present])]
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise PackageError(f"cannot build manifest: {validation_message(exc, root='(root)')}") from exc
    raw = manifest_bytes(manifest)
    atomic_write_bytes(root / MANIFEST_NAME, raw)
    if sign_key is not None:
        atomic_write_bytes(root / SIGNATURE_NAME, sign_bytes(sign_key, raw))
    return manifest


def write_package(
    out_dir: str | Path,
    files: Mapping[str, bytes | Path],
    fields: Mapping[str, Any],
    sign_key: Ed25519PrivateKey | None = None,
    overwrite: bool = False,
) -> Package:
    """Write a whole package atomically: a failure leaves no directory, and never a half-replaced one."""
    out_dir = Path(out_dir)
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            for rel, content in files.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    shutil.copyfile(content, dest)
                else:
                    dest.write_bytes(content)
            manifest = finalize_package(tmp, fields, sign_key)
    except FileExistsError as exc:
        raise PackageError(f"{out_dir} already exists (use --force to replace it)") from exc
    return Package(out_dir, manifest)


def sign_package(root: str | Path, key: Ed25519PrivateKey) -> str:
    """(Re)sign an existing package directory; hashes are checked first so a tampered package is not blessed."""
    if not Path(root).is_dir():
        raise PackageError(f"{root} is not a package directory (sign the directory, then pack it)")
    pkg = load_package(root, allow_unsigned=True)
    raw = (pkg.root / MANIFEST_NAME).read_bytes()
    atomic_write_bytes(pkg.root / SIGNATURE_NAME, sign_bytes(key, raw))
    trust = TrustStore.from_keys([key.public_key()], [RELEASE])
    return verify_bytes(raw, (pkg.root / SIGNATURE_NAME).read_bytes(), trust, role=RELEASE)


def _read_manifest_raw(root: Path, limit: int = DEFAULT_LIMITS.max_manifest_bytes) -> bytes:
    p = root / MANIFEST_NAME
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise PackageError(f"{root} is not a model package: no {MANIFEST_NAME}") from exc
    except OSError as exc:
        raise PackageError(f"cannot read {p}: {exc.strerror}") from exc
    if len(raw) > limit:
        raise PackageError(f"{p} is larger than {limit} bytes")
    return raw


def _read_signature(p: Path) -> bytes | None:
    """signature.json, read bounded (an oversized one fails as malformed), or None when there is none."""
    if not p.is_file():
        return None
    try:
        with open(p, "rb") as f:
            return f.read(MAX_SIGNATURE_DOC + 1)
    except OSError as exc:
        raise PackageError(f"cannot read {p}: {exc.strerror}") from exc


def read_manifest(root: str | Path) -> tuple[Manifest, bytes]:
    """Parse a package directory's manifest (no signature check: for tools that only read it)."""
    root = Path(root)
    raw = _read_manifest_raw(root)
    return parse_manifest(raw, root), raw


def verify_files(root: Path, manifest: Manifest) -> None:
    """Every listed file exists with the listed size and hash; no unlisted file is present."""
    listed = {f.path for f in manifest.files}
    extra = sorted(set(_list_files(root)) - listed)
    if extra:
        raise PackageError(f"package {root} has files its manifest does not cover: {', '.join(extra)}")
    for entry in manifest.files:
        p = root / entry.path
        if not p.is_file():
            raise PackageError(f"package {root} is missing {entry.path}")
        if p.stat().st_size != entry.size:
            raise PackageError(f"package file {entry.path} has size {p.stat().st_size}, manifest says {entry.size}")
        if sha256_file(p) != entry.sha256:
            raise PackageError(f"package file {entry.path} does not match its sha256 (corrupt or tampered)")


UNSIGNED_HINT = (
    "sign it with `edge-runtime keygen --out KEY` and `edge-runtime sign PACKAGE --key KEY.key`, trust the key "
    "with --trust KEY.pub (trust= in the API), or accept unsigned packages with --allow-unsigned "
    "(allow_unsigned=True)"
)


def load_package(
    path: str | Path,
    trust: TrustStore | None = None,
    require_signature: bool | None = None,
    *,
    allow_unsigned: bool = False,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> Package:
    """Open a package directory or archive and verify it before anything uses it.

    The signature is required (by a key in ``trust`` holding the release role) unless ``allow_unsigned``;
    ``require_signature`` overrides that either way (the agent passes True). A present signature is checked
    whenever ``trust`` holds keys. Hashes are always checked; an archive is verified before it is unpacked
    (see :mod:`edge_runtime.package.archive`) into the per-user cache (:mod:`edge_runtime.package.cache`).
    """
    path = Path(path)
    must_sign = (not allow_unsigned) if require_signature is None else require_signature
    try:
        if path.is_file():
            root, manifest, signer = extract_cached(path, trust, must_sign, limits)
            return Package(root, manifest, signer)
        if not path.is_dir():
            raise PackageError(f"package {path} does not exist")
        raw = _read_manifest_raw(path, limits.max_manifest_bytes)
        sig = _read_signature(path / SIGNATURE_NAME)
        signer = check_signature(raw, sig, trust, must_sign, path)
    except SignatureError as exc:
        if require_signature is None and exc.code in ("signature_missing", "untrusted_key"):
            raise SignatureError(f"{exc}: {UNSIGNED_HINT}", exc.code) from exc
        raise
    manifest = parse_manifest(raw, path)
    verify_files(path, manifest)
    return Package(path, manifest, signer)


def pack_archive(root: str | Path, out_file: str | Path) -> Path:
    """Write the package as one plain ustar file (manifest first, deterministic metadata), atomically."""
    root, out_file = Path(root), Path(out_file)
    read_manifest(root)
    names = [MANIFEST_NAME] + ([SIGNATURE_NAME] if (root / SIGNATURE_NAME).exists() else [])
    members: list[tuple[str, bytes | Path]] = [(rel, root / rel) for rel in names + _list_files(root)]
    with atomic_open(out_file) as f:
        write_archive(members, f)
    return out_file


def read_archive_manifest(archive: str | Path) -> Manifest:
    """An archive's manifest, read from its first member alone (no signature or file check: for publishers)."""
    archive = Path(archive)
    return parse_manifest(read_archive_head(archive).manifest_raw, archive)


def unpack_archive(archive: str | Path, dest: str | Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> Path:
    """Extract an archive into a new directory ``dest`` (atomically), checking every file against the manifest.

    No signature check: for callers that authenticated the archive's bytes already (an OTA slot, whose sha256 is
    in a signed document) and verify the package directory afterwards.
    """
    extract_verified(archive, dest, None, must_sign=False, limits=limits)
    return Path(dest)


def extract_archive_cached(archive: Path, trust: TrustStore | None = None, must_sign: bool = False) -> Path:
    """The archive's verified extraction in the per-user cache (kept for callers that want only the folder)."""
    return extract_cached(archive, trust, must_sign)[0]
