"""The accepted sequence survives a corrupt or missing copy, and is never silently back to 0."""

from __future__ import annotations

import json

import pytest

from edge_runtime.sync.replay import ReplayError, SequenceStore


def test_accept_persists_both_copies_and_refuses_replays(tmp_path):
    s = SequenceStore(tmp_path / "r.json")
    s.accept(10)
    with pytest.raises(ReplayError) as err:
        s.accept(10)
    assert err.value.code == "replay"
    with pytest.raises(ReplayError):
        s.accept(9)
    s.advance(5)  # lower: no change, no error
    assert SequenceStore(tmp_path / "r.json").value == 10
    assert all(json.loads(p.read_text())["sequence"] == 10 for p in s.paths)


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "bitflip", "deep"])
def test_one_damaged_copy_is_repaired_from_the_other(tmp_path, damage):
    s = SequenceStore(tmp_path / "r.json")
    s.accept(1_700_000_000_000_000_000)
    victim = s.paths[0] if damage != "bitflip" else s.paths[1]
    text = victim.read_text()
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        victim.write_bytes(b"\0" * 100)
    elif damage == "bitflip":  # still valid JSON, other number: the checksum catches it
        victim.write_text(text.replace("1700000000000000000", "1000000000000000000"))
    else:
        victim.write_text("[" * 100_000)
    again = SequenceStore(tmp_path / "r.json")
    assert again.value == 1_700_000_000_000_000_000 and not again.lost
    assert json.loads(victim.read_text())["sequence"] == 1_700_000_000_000_000_000  # repaired


def test_both_copies_unusable_means_lost_until_an_operator_resets(tmp_path):
    s = SequenceStore(tmp_path / "r.json")
    s.accept(42)
    for p in s.paths:
        p.write_text("{}")
    lost = SequenceStore(tmp_path / "r.json")
    assert lost.lost and "reset-replay" in lost.problem
    with pytest.raises(ReplayError) as err:
        lost.accept(10**30)
    assert err.value.code == "replay_state_lost"
    floor = lost.reset()
    assert not lost.lost and floor > 42
    with pytest.raises(ReplayError):
        lost.accept(43)  # signed before the reset: refused; the fleet re-publishes
    assert SequenceStore(tmp_path / "r.json").value == floor


def test_missing_copies_with_history_are_lost_without_it_a_first_start(tmp_path):
    assert SequenceStore(tmp_path / "a.json").value == 0  # a new device
    assert SequenceStore(tmp_path / "b.json", has_history=True).lost  # deleted behind the device's back
    restored = SequenceStore(tmp_path / "c.json", floor=77, has_history=True)  # older state file knows the value
    assert restored.value == 77 and not restored.lost and SequenceStore(tmp_path / "c.json").value == 77


def test_both_copies_damaged_but_the_owner_knows_the_value(tmp_path):
    s = SequenceStore(tmp_path / "r.json")
    s.accept(42)
    for p in s.paths:
        p.write_text("garbage")
    again = SequenceStore(tmp_path / "r.json", floor=42, has_history=True)
    assert again.value == 42 and not again.lost and SequenceStore(tmp_path / "r.json").value == 42
