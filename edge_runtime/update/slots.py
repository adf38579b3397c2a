"""A/B model slots on disk, with the last N versions kept for instant local rollback and a bound on disk use.

Layout under the slot root::

    versions/<key>/   one verified package per directory (never modified after install)
    slots.json        {"active": key, "previous": key, "candidate": key} -- written atomically
    archives.json     {archive sha256: key} -- which installed slot each downloaded archive became

Slots are content-addressed: a key is ``<name>-<version>-<first 16 hex of sha256(manifest.json)>``. The manifest
covers every file by sha256 and is what the signature covers, so two packages with the same name and version but
other bytes get two keys, never one slot (a re-published 1.2.0 is never mistaken for the installed 1.2.0), and the
same content packed or signed twice gets one. Keys written by older versions (``<name>-<version>``) still load.

The active slot serves; the candidate (inactive) slot receives a new package, is smoke-tested, and becomes active
by rewriting ``slots.json`` (one atomic rename), so a power cut leaves either the old or the new pointer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import PackageError
from edge_runtime.fsutil import atomic_directory, atomic_write_text
from edge_runtime.package.store import unpack_archive
from edge_runtime.update.errors import DiskFullError, VerificationError


class SlotPointers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: str | None = Field(default=None, description="Key of the package that serves.")
    previous: str | None = Field(default=None, description="Key that served before (instant rollback target).")
    candidate: str | None = Field(default=None, description="Key installed in the inactive slot, not yet active.")


MANIFEST = "manifest.json"


def content_key(pkg_dir: Path) -> str:
    """The slot key of the package in ``pkg_dir``: name, version and the digest of its manifest bytes."""
    raw = (Path(pkg_dir) / MANIFEST).read_bytes()
    doc = json.loads(raw)
    return f"{doc['name']}-{doc['version']}-{hashlib.sha256(raw).hexdigest()[:16]}"


def manifest_digest(pkg_dir: Path) -> str:
    return hashlib.sha256((Path(pkg_dir) / MANIFEST).read_bytes()).hexdigest()


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class SlotStore:
    """Installed packages and the pointers saying which one serves."""

    def __init__(self, root: Path, keep: int = 3, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)
        self.max_bytes = max_bytes
        self.versions = self.root / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        self._pointer_file = self.root / "slots.json"
        self._archive_file = self.root / "archives.json"

    # pointers -------------------------------------------------------------------------------------------
    def pointers(self) -> SlotPointers:
        try:
            return SlotPointers.model_validate_json(self._pointer_file.read_bytes())
        except FileNotFoundError:
            return SlotPointers()

    def _write(self, p: SlotPointers) -> None:
        atomic_write_text(self._pointer_file, json.dumps(p.model_dump(), indent=1))

    def path(self, key: str) -> Path:
        return self.versions / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "manifest.json").is_file()

    def keys(self) -> list[str]:
        """Installed keys, oldest install first."""
        dirs = [d for d in self.versions.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return [d.name for d in sorted(dirs, key=lambda d: d.stat().st_mtime_ns)]

    # archives -> slots ------------------------------------------------------------------------------------
    def _archives(self) -> dict[str, str]:
        try:
            data = json.loads(self._archive_file.read_bytes())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _record_archive(self, sha256: str, key: str) -> None:
        index = {a: k for a, k in self._archives().items() if self.has(k)}
        index[sha256] = key
        atomic_write_text(self._archive_file, json.dumps(index, indent=1))

    def key_for_archive(self, sha256: str) -> str | None:
        """The installed slot the archive with ``sha256`` became, if it is still installed."""
        key = self._archives().get(sha256)
        return key if key is not None and self.has(key) else None

    def has_history(self) -> bool:
        """Whether an archive was ever installed here (so signed documents were accepted before)."""
        return bool(self._archives())

    def archive_of(self, key: str | None) -> str | None:
        """The sha256 of an archive that was installed as ``key`` (None for a seeded or unknown slot)."""
        return next((a for a, k in self._archives().items() if k == key), None) if key else None

    def name_version(self, key: str) -> tuple[str, str]:
        doc = json.loads((self.path(key) / MANIFEST).read_bytes())
        return str(doc["name"]), str(doc["version"])

    # install --------------------------------------------------------------------------------------------
    def install_archive(self, archive: Path, sha256: str) -> tuple[str, bool]:
        """Unpack ``archive`` (whose sha256 the caller checked) into the inactive slot; return (key, fresh).

        ``fresh`` is False when the same content is already installed (then nothing is unpacked to stay)."""
        known = self.key_for_archive(sha256)
        if known is not None:
            self.set_candidate(known)
            return known, False
        self.make_room(int(archive.stat().st_size * 1.05) + 4096)
        incoming = self.versions / f".incoming-{sha256[:16]}"
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            unpack_archive(archive, incoming)
            key = content_key(incoming)
            fresh = not self.has(key)
            if fresh:
                os.replace(incoming, self.path(key))
        except FileNotFoundError as exc:
            raise VerificationError(f"archive {archive.name} has no manifest.json", "package_invalid") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left to install {archive.name}: {exc.strerror}") from exc
            raise
        except (PackageError, ValueError, KeyError, TypeError) as exc:  # a bad archive, or no readable manifest
            raise VerificationError(f"archive {archive.name} is not an installable package: {exc}",
                                    "package_invalid") from exc
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        self._record_archive(sha256, key)
        self.set_candidate(key)
        return key, fresh

    def install_dir(self, src: Path) -> str:
        """Copy a package directory into its slot (used to seed the first model); return its key."""
        key = content_key(src)
        if not self.has(key):
            self.make_room(tree_size(src))
            with atomic_directory(self.path(key), overwrite=True) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        return key

    def remove(self, key: str) -> None:
        """Delete an installed slot that failed its checks (never the active or previous one)."""
        p = self.pointers()
        if key in (p.active, p.previous):
            return
        shutil.rmtree(self.path(key), ignore_errors=True)
        if p.candidate == key:
            self.set_candidate(None)

    def make_room(self, needed: int) -> None:
        """Prune unprotected old versions until ``needed`` bytes fit the budget and the file system."""
        def fits() -> bool:
            used = sum(tree_size(self.path(k)) for k in self.keys())
            within_budget = self.max_bytes is None or used + needed <= self.max_bytes
            return within_budget and shutil.disk_usage(self.root).free > needed

        for key in self._prunable():
            if fits():
                return
            shutil.rmtree(self.path(key), ignore_errors=True)
        if not fits():
            budget = f"budget {self.max_bytes} bytes" if self.max_bytes else "the file system"
            raise DiskFullError(f"package needs {needed} bytes, which does not fit {budget} even after pruning")

    def _protected(self) -> set[str]:
        p = self.pointers()
        return {k for k in (p.active, p.previous, p.candidate) if k}

    def _prunable(self) -> list[str]:
        protected = self._protected()
        return [k for k in self.keys() if k not in protected]

    def prune(self) -> list[str]:
        """Keep at most ``keep`` versions (never the active, previous or candidate ones); return removed keys."""
        removed = []
        keys = self.keys()
        excess = len(keys) - self.keep
        for key in self._prunable():
            if excess <= 0:
                break
            shutil.rmtree(self.path(key), ignore_errors=True)
            removed.append(key)
            excess -= 1
        self._clean_partials()
        return removed

    def _clean_partials(self) -> None:
        for d in self.versions.iterdir():
            if d.name.startswith(".") and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)

    # pointer moves (each one atomic rename) ---------------------------------------------------------------
    def set_candidate(self, key: str | None) -> None:
        p = self.pointers()
        self._write(SlotPointers(active=p.active, previous=p.previous, candidate=key))

    def activate(self, key: str) -> None:
        """Make ``key`` the active slot; the old active one becomes the rollback target."""
        p = self.pointers()
        if p.active == key:
            return
        self._write(SlotPointers(active=key, previous=p.active, candidate=None))

    def switch_back(self, key: str | None, previous: str | None = None) -> None:
        """Point back at ``key`` (the model that served before the update), with ``previous`` as its rollback
        target (what ``previous`` was before the update; None keeps the current one when nothing moved)."""
        p = self.pointers()
        if key is None or p.active == key:
            self._write(SlotPointers(active=p.active, previous=previous or p.previous, candidate=None))
            return
        self._write(SlotPointers(active=key, previous=previous if previous != key else None, candidate=None))
