"""Publish a package archive to the broker as retained chunks, and signed desired documents for its targets.

The fleet keeps a small local registry (JSON) of what it published, so ``rollback --to VERSION`` can name an
older package without re-uploading it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError
from edge_runtime.fsutil import atomic_write_text
from edge_runtime.package.signing import Ed25519PrivateKey
from edge_runtime.package.store import pack_archive
from edge_runtime.sync.topics import Topics
from edge_runtime.update.desired import DesiredModel, new_sequence, sign_desired
from edge_runtime.update.transfer import DEFAULT_CHUNK, ChunkMeta, build_meta, iter_chunks


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    profile: str
    meta: ChunkMeta


def as_archive(pkg: Path) -> Path:
    """A package directory is packed into a temporary .erpkg; an archive is used as is."""
    if pkg.is_dir():
        out = Path(tempfile.mkdtemp(prefix="fleet-")) / f"{pkg.name}.erpkg"
        return pack_archive(pkg, out)
    if not pkg.is_file():
        raise ConfigError(f"package {pkg} does not exist")
    return pkg


def _manifest_of_archive(archive: Path) -> Any:
    from edge_runtime.package.store import read_archive_manifest

    return read_archive_manifest(archive)  # the manifest member only: nothing is unpacked


def upload(link: Any, topics: Topics, pkg: Path, chunk_size: int = DEFAULT_CHUNK, in_flight: int = 16,
           timeout: float = 60.0) -> Published:
    """Publish every chunk (retained, QoS 1, at most ``in_flight`` unacknowledged), then the meta."""
    archive = as_archive(pkg)
    manifest = _manifest_of_archive(archive)
    meta = build_meta(archive, chunk_size)
    pending: list[Any] = []
    for i, chunk in enumerate(iter_chunks(archive, chunk_size)):
        pending.append(link.publish(topics.package_chunk(meta.package_id, i), chunk, qos=1, retain=True))
        if len(pending) >= in_flight:
            _wait_all(pending[: in_flight // 2], timeout)
            pending = pending[in_flight // 2 :]
    _wait_all(pending, timeout)
    meta_raw = meta.model_dump_json(by_alias=True).encode()
    _wait_all([link.publish(topics.package_meta(meta.package_id), meta_raw, qos=1, retain=True)], timeout)
    return Published(manifest.name, manifest.version, manifest.profile, meta)


def _wait_all(handles: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for h in handles:
        if not h.wait(max(0.0, deadline - time.monotonic())):
            raise ConfigError(f"the broker did not acknowledge a message ({h.error or 'timeout'})")


def parse_target(target: str) -> tuple[str, str]:
    """'group:NAME' -> ('group', NAME); anything else names a device."""
    if target.startswith("group:"):
        return "group", target.split(":", 1)[1]
    return "device", target.removeprefix("device:")


def desired_topic(topics: Topics, scope: str, target: str) -> str:
    return topics.group_desired(target) if scope == "group" else topics.desired(target)


def desired_for(pub: Published, target: str, rollback: bool = False, url: str | None = None) -> DesiredModel:
    """The (unsigned) desired document naming ``pub`` for ``target`` (a device id or group:NAME)."""
    scope, name = parse_target(target)
    return DesiredModel(
        scope=scope, target=name, name=pub.name, version=pub.version, profile=pub.profile,  # type: ignore[arg-type]
        package_id=pub.meta.package_id, sha256=pub.meta.sha256, size=pub.meta.size, url=url, rollback=rollback,
        sequence=new_sequence(), issued=time.time(),
    )


def set_desired(link: Any, topics: Topics, pub: Published, target: str, key: Ed25519PrivateKey,
                rollback: bool = False, url: str | None = None, timeout: float = 10.0) -> DesiredModel:
    """Sign and publish (retained) the desired document naming ``pub`` for ``target``."""
    return set_desired_many(link, topics, pub, [target], key, rollback, url, timeout)[target]


def set_desired_many(link: Any, topics: Topics, pub: Published, targets: list[str], key: Ed25519PrivateKey,
                     rollback: bool = False, url: str | None = None, timeout: float = 30.0) -> dict[str, DesiredModel]:
    """Sign and publish one desired document per target, then wait for every acknowledgement."""
    docs, handles = {}, []
    for target in targets:
        doc = desired_for(pub, target, rollback, url)
        topic = desired_topic(topics, doc.scope, doc.target)
        handles.append(link.publish(topic, sign_desired(doc, key), qos=1, retain=True))
        docs[target] = doc
    _wait_all(handles, timeout)
    return docs


def send_command(link: Any, topics: Topics, cmd: Any, key: Ed25519PrivateKey, timeout: float = 10.0) -> None:
    """Sign ``cmd`` (edge_runtime.sync.commands.Command) and publish it (QoS 1, not retained) to its device."""
    from edge_runtime.sync.commands import sign_command

    _wait_all([link.publish(topics.commands(cmd.device), sign_command(cmd, key), qos=1)], timeout)


class Registry:
    """name-version -> what was published (JSON file, written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def add(self, pub: Published) -> None:
        data = self._read()
        data[f"{pub.name}-{pub.version}"] = {"name": pub.name, "version": pub.version, "profile": pub.profile,
                                              "meta": pub.meta.model_dump(mode="json", by_alias=True)}
        atomic_write_text(self.path, json.dumps(data, indent=1))

    def find(self, version: str, name: str | None = None) -> Published:
        """The entry for ``version`` of model ``name``; without a name, the only model published at that version
        (two models sharing a version are ambiguous: ConfigError, never a guess)."""
        found = self.versions(version)
        names = sorted({p.name for p in found})
        if name is not None:
            found = [p for p in found if p.name == name]
        elif len(names) > 1:
            raise ConfigError(f"version {version} was published for models {', '.join(names)}: name one (--name)")
        if not found:
            what = f"{name} {version}" if name else f"version {version}"
            raise ConfigError(f"{what} was never published from this registry ({self.path})")
        return found[0]

    def versions(self, version: str) -> list[Published]:
        """Every entry published at ``version`` (any model name)."""
        return [Published(e["name"], e["version"], e["profile"], ChunkMeta.model_validate(e["meta"]))
                for e in self._read().values() if e["version"] == version]

    def find_key(self, key: str) -> Published | None:
        """The entry for slot key ``name-version`` (as devices report what they serve), or None."""
        entry = self._read().get(key)
        if entry is None:
            return None
        return Published(entry["name"], entry["version"], entry["profile"], ChunkMeta.model_validate(entry["meta"]))
