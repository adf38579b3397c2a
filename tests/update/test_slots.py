"""A/B slots on disk: content-addressed keys, install into the inactive slot, atomic pointer moves, last N
versions kept, disk bounded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_runtime.fsutil import sha256_file
from edge_runtime.package.store import pack_archive
from edge_runtime.update.errors import DiskFullError, VerificationError
from edge_runtime.update.slots import SlotStore, content_key, tree_size


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, ota_packages: dict[str, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("archives")
    return {v: pack_archive(ota_packages[v], d / f"{v}.erpkg") for v in ("v1", "v2", "v3")}


def _install(store: SlotStore, archives: dict[str, Path], v: str) -> str:
    key, fresh = store.install_archive(archives[v], sha256_file(archives[v]))
    assert fresh
    store.activate(key)
    return key


def test_new_version_goes_to_the_inactive_slot_then_swaps(tmp_path: Path, archives) -> None:
    store = SlotStore(tmp_path, keep=3)
    k1 = _install(store, archives, "v1")
    k2, _ = store.install_archive(archives["v2"], sha256_file(archives["v2"]))
    assert k2.startswith("tiny-2.0.0-") and len(k2) == len("tiny-2.0.0-") + 16
    assert (store.path(k2) / "manifest.json").is_file() and store.name_version(k2) == ("tiny", "2.0.0")
    p = store.pointers()
    assert (p.active, p.candidate) == (k1, k2)  # installed, not serving yet
    store.activate(k2)
    assert store.pointers().model_dump() == {"active": k2, "previous": k1, "candidate": None}
    store.switch_back(k1)  # instant local rollback: no download, the old slot is still there
    assert store.pointers().active == k1 and store.has(k2)
    assert SlotStore(tmp_path).pointers().active == k1  # persisted (a new process reads the same pointers)


def test_same_version_other_bytes_gets_its_own_slot_and_same_content_one(tmp_path: Path, archives,
                                                                          ota_packages) -> None:
    """Content addressing: a re-published 1.0.0 with other bytes is another slot, never the installed one; the
    same content packed twice (another archive sha256) is recognised as the same slot."""
    store = SlotStore(tmp_path)
    k1 = _install(store, archives, "v1")
    other = tmp_path / "v1-other"
    shutil.copytree(ota_packages["v2"], other)  # v2's model under v1's name and version
    m = json.loads((other / "manifest.json").read_text())
    m["version"] = "1.0.0"
    (other / "manifest.json").write_text(json.dumps(m))
    arch = pack_archive(other, tmp_path / "other.erpkg")
    k_other, fresh = store.install_archive(arch, sha256_file(arch))
    assert fresh and k_other != k1 and store.name_version(k_other) == store.name_version(k1) == ("tiny", "1.0.0")
    assert store.pointers().active == k1  # nothing replaced the serving slot
    assert store.key_for_archive(sha256_file(arch)) == k_other and store.key_for_archive(sha256_file(
        archives["v1"])) == k1
    repacked = tmp_path / "v1-again.erpkg"
    with open(repacked, "wb") as f:  # the same package in other archive bytes
        f.write(archives["v1"].read_bytes())
        f.write(b"\0" * 1024)  # two more empty tar blocks: a different archive sha256, the same content
    key, fresh = store.install_archive(repacked, sha256_file(repacked))
    assert (key, fresh) == (k1, False) and store.archive_of(k1) is not None
    assert content_key(ota_packages["v1"]) == k1 == store.install_dir(ota_packages["v1"])  # a seed: same key


def test_archive_without_manifest_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    import tarfile

    bad = tmp_path / "bad.erpkg"
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(bad, "w") as t:
        t.add(tmp_path / "x.txt", arcname="x.txt")
    store = SlotStore(tmp_path / "slots")
    with pytest.raises(VerificationError) as err:
        store.install_archive(bad, sha256_file(bad))
    assert err.value.code == "package_invalid" and list(store.versions.iterdir()) == []


def test_last_n_versions_kept_and_serving_ones_never_pruned(tmp_path: Path, archives, ota_packages) -> None:
    store = SlotStore(tmp_path, keep=2)
    k1, k2, k3 = (_install(store, archives, v) for v in ("v1", "v2", "v3"))
    removed = store.prune()
    assert removed == [k1]
    assert sorted(store.keys()) == sorted([k2, k3])
    # switched back to 2.0.0: 3.0.0 is neither active nor previous now, but still within the last 2 kept
    store.switch_back(k2)
    assert store.install_dir(ota_packages["v1"]) == k1
    store.set_candidate(k1)
    assert store.prune() == [k3]  # the candidate and the active one stay
    assert sorted(store.keys()) == sorted([k1, k2])
    assert store.key_for_archive(sha256_file(archives["v3"])) is None  # a pruned slot is no longer "installed"


def test_disk_budget_prunes_old_versions_then_refuses(tmp_path: Path, archives) -> None:
    probe = SlotStore(tmp_path / "probe")
    size = tree_size(probe.path(probe.install_archive(archives["v1"], sha256_file(archives["v1"]))[0]))
    # room for about three installed versions
    store = SlotStore(tmp_path / "slots", keep=5, max_bytes=int(size * 3.5))
    k1, k2, k3 = (_install(store, archives, v) for v in ("v1", "v2", "v3"))
    assert len(store.keys()) == 3
    store.make_room(size)  # the oldest, unprotected version goes to make room
    assert k1 not in store.keys() and store.has(k3) and store.has(k2)
    used = sum(tree_size(store.path(k)) for k in store.keys())
    assert used + size <= store.max_bytes
    with pytest.raises(DiskFullError, match="does not fit"):  # active + previous are never deleted for room
        store.make_room(size * 3)
    assert store.has(k3) and store.has(k2)


def test_interrupted_install_leaves_no_half_slot(tmp_path: Path, archives) -> None:
    store = SlotStore(tmp_path)
    k1 = _install(store, archives, "v1")
    partial = store.versions / ".incoming-0123456789abcdef"  # what a power cut mid-unpack leaves
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    assert store.keys() == [k1]
    store.prune()
    assert not partial.exists()
