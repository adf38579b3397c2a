"""A/B model slots on disk, with the last N versions kept for instant local rollback and a bound on disk use.

Layout under the slot root::

    versions/<name>-<version>/   one verified package per directory (never modified after install)
    slots.json                   {"active": key, "previous": key, "candidate": key} -- written atomically

The active slot serves; the candidate (inactive) slot receives a new package, is smoke-tested, and becomes active
by rewriting ``slots.json`` (one atomic rename), so a power cut leaves either the old or the new pointer.
"""

from __future__ import annotations

import errno
import json
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


def slot_key(name: str, version: str) -> str:
    return f"{name}-{version}"


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

    # install --------------------------------------------------------------------------------------------
    def install_archive(self, archive: Path, key: str) -> Path:
        """Unpack ``archive`` into the inactive slot ``key`` (atomically) after making room for it."""
        if self.has(key):
            self.set_candidate(key)
            return self.path(key)
        self.make_room(int(archive.stat().st_size * 1.05) + 4096)
        try:
            unpack_archive(archive, self.path(key))
        except PackageError as exc:  # the archive's files are checked against its manifest while unpacking
            raise VerificationError(f"archive is not an installable package: {exc}", "package_invalid") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left to install {key}: {exc.strerror}") from exc
            raise
        self.set_candidate(key)
        return self.path(key)

    def install_dir(self, src: Path, key: str) -> Path:
        """Copy a package directory into slot ``key`` (used to seed the first model)."""
        if not self.has(key):
            self.make_room(tree_size(src))
            with atomic_directory(self.path(key), overwrite=True) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        return self.path(key)

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
