"""A/B slots on disk: install into the inactive slot, atomic pointer moves, last N versions kept, disk bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.package.store import pack_archive
from edge_runtime.update.errors import DiskFullError
from edge_runtime.update.slots import SlotStore, tree_size


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, ota_packages: dict[str, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("archives")
    return {v: pack_archive(ota_packages[v], d / f"{v}.erpkg") for v in ("v1", "v2", "v3")}


def _install(store: SlotStore, archives: dict[str, Path], v: str) -> str:
    key = f"tiny-{v[1]}.0.0"
    store.install_archive(archives[v], key)
    store.activate(key)
    return key


def test_new_version_goes_to_the_inactive_slot_then_swaps(tmp_path: Path, archives) -> None:
    store = SlotStore(tmp_path, keep=3)
    k1 = _install(store, archives, "v1")
    path = store.install_archive(archives["v2"], "tiny-2.0.0")
    assert (path / "manifest.json").is_file()
    p = store.pointers()
    assert (p.active, p.candidate) == (k1, "tiny-2.0.0")  # installed, not serving yet
    store.activate("tiny-2.0.0")
    assert store.pointers().model_dump() == {"active": "tiny-2.0.0", "previous": k1, "candidate": None}
    store.switch_back(k1)  # instant local rollback: no download, the old slot is still there
    assert store.pointers().active == k1 and store.has("tiny-2.0.0")
    assert SlotStore(tmp_path).pointers().active == k1  # persisted (a new process reads the same pointers)


def test_last_n_versions_kept_and_serving_ones_never_pruned(tmp_path: Path, archives, ota_packages) -> None:
    store = SlotStore(tmp_path, keep=2)
    for v in ("v1", "v2", "v3"):
        _install(store, archives, v)
    removed = store.prune()
    assert removed == ["tiny-1.0.0"]
    assert sorted(store.keys()) == ["tiny-2.0.0", "tiny-3.0.0"]
    # switched back to 2.0.0: 3.0.0 is neither active nor previous now, but still within the last 2 kept
    store.switch_back("tiny-2.0.0")
    store.install_dir(ota_packages["v1"], "tiny-1.0.0")
    store.set_candidate("tiny-1.0.0")
    assert store.prune() == ["tiny-3.0.0"]  # the candidate and the active one stay
    assert sorted(store.keys()) == ["tiny-1.0.0", "tiny-2.0.0"]


def test_disk_budget_prunes_old_versions_then_refuses(tmp_path: Path, archives) -> None:
    probe = SlotStore(tmp_path / "probe")
    size = tree_size(probe.install_archive(archives["v1"], "tiny-1.0.0"))
    # room for about three installed versions
    store = SlotStore(tmp_path / "slots", keep=5, max_bytes=int(size * 3.5))
    for v in ("v1", "v2", "v3"):
        _install(store, archives, v)
    assert len(store.keys()) == 3
    store.make_room(size)  # the oldest, unprotected version goes to make room
    assert "tiny-1.0.0" not in store.keys() and store.has("tiny-3.0.0") and store.has("tiny-2.0.0")
    used = sum(tree_size(store.path(k)) for k in store.keys())
    assert used + size <= store.max_bytes
    with pytest.raises(DiskFullError, match="does not fit"):  # active + previous are never deleted for room
        store.make_room(size * 3)
    assert store.has("tiny-3.0.0") and store.has("tiny-2.0.0")


def test_interrupted_install_leaves_no_half_slot(tmp_path: Path, archives) -> None:
    store = SlotStore(tmp_path)
    _install(store, archives, "v1")
    partial = store.versions / ".tiny-2.0.0.x1y2.partial"  # what a power cut mid-unpack leaves (atomic_directory)
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    assert store.keys() == ["tiny-1.0.0"] and not store.has("tiny-2.0.0")
    store.prune()
    assert not partial.exists()
