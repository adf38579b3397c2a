"""The per-user cache of verified archive extractions.

``$EDGE_RUNTIME_CACHE/packages/<sha256 of the archive>/`` (default ``~/.cache/edge-runtime``). The ``packages``
folder is created mode 0700 and refused unless it is this user's (a looser mode left by an older version is
tightened), its parent is this user's and not writable by others, and every entry is a 0700 folder of this
user's. A cached entry is used only when its manifest and signature are byte for byte the archive's, its
signature verifies against the caller's trust, and every file is this user's, a regular file and matches its
listed size and hash. A stale or tampered
entry of this user's own is discarded and extracted again; an entry or folder owned by someone else is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from edge_runtime.errors import PackageError
from edge_runtime.fsutil import sha256_file
from edge_runtime.package.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    check_signature,
    extract_verified,
    parse_manifest,
    read_archive_head,
)
from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edge_runtime.package.signing import TrustStore

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """$EDGE_RUNTIME_CACHE, else $XDG_CACHE_HOME/edge-runtime, else ~/.cache/edge-runtime."""
    if os.environ.get("EDGE_RUNTIME_CACHE"):
        return Path(os.environ["EDGE_RUNTIME_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "edge-runtime"
    try:
        return Path.home() / ".cache" / "edge-runtime"
    except RuntimeError:  # no home directory (a bare service account)
        return Path(tempfile.gettempdir()) / f"edge-runtime-{os.getuid()}"


def _refuse(path: Path, why: str) -> PackageError:
    return PackageError(
        f"refusing package cache {path}: {why} (remove it, or set EDGE_RUNTIME_CACHE to a private folder)"
    )


def owned_dir(path: Path) -> os.stat_result:
    """``path`` must be a real directory (not a symlink) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise _refuse(path, exc.strerror or "cannot stat it") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "it is not a directory (a symlink?)")
    if st.st_uid != os.getuid():
        raise _refuse(path, f"it is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})")
    return st


def packages_dir() -> Path:
    """The cache's ``packages`` folder: this user's, mode 0700 (tightened if an older version left it looser)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if owned_dir(root).st_mode & 0o022:
        raise _refuse(root, "it is writable by group or others")
    pk = root / "packages"
    pk.mkdir(exist_ok=True, mode=0o700)
    if owned_dir(pk).st_mode & 0o077:
        log.warning("tightening %s to mode 0700", pk)
        os.chmod(pk, 0o700)
    return pk


def _cached_files_ok(dest: Path, manifest: Manifest) -> bool:
    listed = {MANIFEST_NAME, SIGNATURE_NAME} | {e.path for e in manifest.files}
    for p in dest.rglob("*"):
        st = os.lstat(p)
        rel = p.relative_to(dest).as_posix()
        if st.st_uid != os.getuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return False
        if stat.S_ISREG(st.st_mode) and rel not in listed:
            return False
    for e in manifest.files:
        p = dest / e.path
        if not p.is_file() or p.stat().st_size != e.size or sha256_file(p) != e.sha256:
            return False
    return True


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes() if p.is_file() and not p.is_symlink() else None
    except OSError:
        return None


def _reuse(
    archive: Path, dest: Path, trust: TrustStore | None, must_sign: bool, limits: ArchiveLimits
) -> tuple[Manifest, str | None] | None:
    """The cached entry's manifest and signer when it is exactly the archive's content, else None."""
    if owned_dir(dest).st_mode & 0o077:  # extractions are made 0700: this one was changed
        return None
    head = read_archive_head(archive, limits)
    if _read(dest / MANIFEST_NAME) != head.manifest_raw or _read(dest / SIGNATURE_NAME) != head.signature_raw:
        return None
    signer = check_signature(head.manifest_raw, head.signature_raw, trust, must_sign, archive)
    manifest = parse_manifest(head.manifest_raw, archive)
    return (manifest, signer) if _cached_files_ok(dest, manifest) else None


def extract_cached(
    archive: str | Path,
    trust: TrustStore | None = None,
    must_sign: bool = True,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> tuple[Path, Manifest, str | None]:
    """Verify ``archive`` and return its extraction in the cache (re-verified if already there)."""
    archive = Path(archive)
    try:
        digest = sha256_file(archive)
    except OSError as exc:
        raise PackageError(f"cannot read {archive}: {exc.strerror}") from exc
    dest = packages_dir() / digest
    if os.path.lexists(dest):
        found = _reuse(archive, dest, trust, must_sign, limits)
        if found is not None:
            return dest, *found
        log.warning("cached extraction %s does not match %s; extracting again", dest, archive)
        shutil.rmtree(dest)
    manifest, signer = extract_verified(archive, dest, trust, must_sign, limits)
    return dest, manifest, signer
