"""The transition table, driven as a table: expected chains of states with a fault injected at each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.update.machine import UpdateMachine
from edge_runtime.update.states import TRANSITIONS, Event, InvalidTransition, State, next_state

E, S = Event, State
HAPPY = [E.UPDATE_OFFERED, E.DOWNLOADED, E.VERIFIED, E.SHADOW_START, E.SHADOW_DONE, E.ACTIVATE, E.SWAPPED, E.HEALTHY]
HAPPY_STATES = [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SHADOW, S.STAGED, S.ACTIVATING, S.HEALTH_CHECK, S.COMMITTED]


def test_happy_path_chain(tmp_path: Path) -> None:
    m = UpdateMachine(tmp_path / "s.json")
    assert [m.fire(e) for e in HAPPY] == HAPPY_STATES


# fault injected after `steps` happy events -> the chain that must follow
FAULTS = [
    (1, [E.ERROR], [S.FAILED]),  # download fails for good
    (1, [E.RETRY, E.DOWNLOADED], [S.DOWNLOADING, S.VERIFYING]),  # a retried download
    (2, [E.ERROR], [S.FAILED]),  # verification fails
    (3, [E.ERROR], [S.FAILED]),  # staged model cannot be used
    (4, [E.ERROR], [S.FAILED]),  # shadow disagreement
    (6, [E.ERROR, E.ROLLED_BACK], [S.ROLLING_BACK, S.FAILED]),  # the swap fails
    (7, [E.UNHEALTHY, E.ROLLED_BACK], [S.ROLLING_BACK, S.FAILED]),  # health window fails
    (7, [E.ERROR, E.RETRY, E.ROLLED_BACK], [S.ROLLING_BACK, S.ROLLING_BACK, S.FAILED]),  # crash in health check
]


@pytest.mark.parametrize(("steps", "events", "expected"), FAULTS)
def test_fault_chains(tmp_path: Path, steps: int, events: list[Event], expected: list[State]) -> None:
    m = UpdateMachine(tmp_path / "s.json")
    for e in HAPPY[:steps]:
        m.fire(e)
    assert [m.fire(e) for e in events] == expected
    assert m.resting or m.state is S.VERIFYING
    # the record on disk says the same as the machine in memory (persisted before notifying)
    assert UpdateMachine(tmp_path / "s.json").state is m.state


def test_every_non_resting_state_has_a_failure_edge() -> None:
    for state in State:
        if state in (S.IDLE, S.COMMITTED, S.FAILED):
            assert (state, E.UPDATE_OFFERED) in TRANSITIONS or state is S.IDLE
            continue
        outs = {e for (s, e) in TRANSITIONS if s is state}
        assert outs & {E.ERROR, E.UNHEALTHY, E.ROLLED_BACK}, state


def test_unknown_edge_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidTransition):
        next_state(S.IDLE, E.SWAPPED)


def test_retries_are_bounded(tmp_path: Path) -> None:
    seen = []
    m = UpdateMachine(tmp_path / "s.json", on_change=lambda r: seen.append(r.state), max_retries=2)
    m.fire(E.UPDATE_OFFERED)
    assert m.retry("chunk stalled") and m.retry("chunk stalled")
    assert not m.retry("chunk stalled")
    assert m.state is S.FAILED and "gave up after 2 retries" in m.record.reason
    assert seen == [S.DOWNLOADING, S.DOWNLOADING, S.DOWNLOADING, S.FAILED]


def test_torn_state_file_resets_to_idle(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"state": "downl')
    m = UpdateMachine(tmp_path / "s.json")
    assert m.state is S.IDLE and m.record.code == "state_reset"
