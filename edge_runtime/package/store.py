"""Model packages on disk: write (atomically), sign, load with verification, pack and unpack archives.

A package is a directory::

    manifest.json      the Manifest (covers every other file by sha256 and size)
    signature.json     Ed25519 signature over the exact bytes of manifest.json (optional until required)
    model.tflite|onnx  the model
    golden.npz, ...    other files listed in the manifest

and its single-file transfer form is a tar archive of that directory's contents (``.erpkg``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.errors import PackageError, SignatureError, validation_message
from edge_runtime.fsutil import atomic_directory, atomic_write_bytes, sha256_file
from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from edge_runtime.package.signing import RELEASE, Ed25519PrivateKey, TrustStore, sign_bytes, verify_bytes

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
    pkg = load_package(root)
    raw = (pkg.root / MANIFEST_NAME).read_bytes()
    atomic_write_bytes(pkg.root / SIGNATURE_NAME, sign_bytes(key, raw))
    trust = TrustStore.from_keys([key.public_key()], [RELEASE])
    return verify_bytes(raw, (pkg.root / SIGNATURE_NAME).read_bytes(), trust, role=RELEASE)


def read_manifest(root: str | Path) -> tuple[Manifest, bytes]:
    root = Path(root)
    try:
        raw = (root / MANIFEST_NAME).read_bytes()
    except FileNotFoundError as exc:
        raise PackageError(f"{root} is not a model package: no {MANIFEST_NAME}") from exc
    except OSError as exc:
        raise PackageError(f"cannot read {root / MANIFEST_NAME}: {exc.strerror}") from exc
    try:
        return Manifest.model_validate_json(raw), raw
    except ValidationError as exc:
        raise PackageError(f"invalid manifest in {root}: {validation_message(exc, root='(root)')}") from exc


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


def load_package(
    path: str | Path, trust: TrustStore | None = None, require_signature: bool | None = None
) -> Package:
    """Open a package directory or archive and verify it before anything uses it.

    With a non-empty ``trust`` store the signature is required (unless ``require_signature`` is False) and
    must come from a trusted key. Hashes are always checked.
    """
    path = Path(path)
    if path.is_file():
        path = extract_archive_cached(path)
    if not path.is_dir():
        raise PackageError(f"package {path} does not exist")
    manifest, raw = read_manifest(path)
    must_sign = bool(trust) if require_signature is None else require_signature
    signer = None
    sig_path = path / SIGNATURE_NAME
    if must_sign:
        if not sig_path.is_file():
            raise SignatureError(f"package {path} is not signed ({SIGNATURE_NAME} missing)", "signature_missing")
        signer = verify_bytes(raw, sig_path.read_bytes(), trust or TrustStore({}), role=RELEASE)
    verify_files(path, manifest)
    return Package(path, manifest, signer)


def pack_archive(root: str | Path, out_file: str | Path) -> Path:
    """Write the package as one tar file (deterministic order and metadata), atomically."""
    root, out_file = Path(root), Path(out_file)
    read_manifest(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = [MANIFEST_NAME] + ([SIGNATURE_NAME] if (root / SIGNATURE_NAME).exists() else [])
        for rel in names + _list_files(root):
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    atomic_write_bytes(out_file, buf.getvalue())
    return out_file


def unpack_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract an archive into a new directory ``dest`` (atomically); reject links and unsafe paths."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, mode="r:*") as tar, atomic_directory(dest, overwrite=True) as tmp:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or name.startswith("/") or ".." in name.split("/"):
                    raise PackageError(f"archive {archive} has an unsafe member {name!r}")
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
    except (tarfile.TarError, EOFError) as exc:
        raise PackageError(f"{archive} is not a valid package archive ({exc})") from exc
    return dest


def extract_archive_cached(archive: Path) -> Path:
    """Extract an archive once into a per-user cache keyed by its sha256."""
    digest = sha256_file(archive)
    cache = Path(os.environ.get("EDGE_RUNTIME_CACHE", Path(tempfile.gettempdir()) / f"edge-runtime-{os.getuid()}"))
    dest = cache / "packages" / digest[:32]
    if not (dest / MANIFEST_NAME).is_file():
        unpack_archive(archive, dest)
    return dest
