"""The OTA update lifecycle: states, events and the ONE table of allowed transitions.

Every change of state goes through :func:`next_state`; anything not in :data:`TRANSITIONS` is a bug. The shape
follows mender's daemon state machine: a happy path, a failure edge out of every step, and a rollback path from
every step after the live model changed.
"""

from __future__ import annotations

from enum import StrEnum

from edge_runtime.errors import EdgeRuntimeError


class State(StrEnum):
    """Where an update stands. Persisted (by value) before each irreversible step."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SHADOW = "shadow"
    ACTIVATING = "activating"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class Event(StrEnum):
    """What happened. An event plus the current state picks the next state from the table."""

    UPDATE_OFFERED = "update_offered"  # a new, signed desired document names a package we do not run
    DOWNLOADED = "downloaded"  # every chunk is on disk and the archive hash matches
    VERIFIED = "verified"  # signature, hashes, profile, version, smoke test all pass; the package is staged
    ALREADY_SERVING = "already_serving"  # the archive unpacked to exactly the content that serves (same manifest)
    SHADOW_START = "shadow_start"  # staged, and shadow mode is configured
    SHADOW_DONE = "shadow_done"  # shadow window over with enough agreement
    ACTIVATE = "activate"  # start the swap
    SWAPPED = "swapped"  # the new model serves; the health window opens
    HEALTHY = "healthy"  # the health window passed
    UNHEALTHY = "unhealthy"  # the health window failed: switch back
    ROLLED_BACK = "rolled_back"  # the previous model serves again
    ERROR = "error"  # the step failed (bad signature, corrupt chunk after retries, disk full, ...)
    RETRY = "retry"  # a failed or interrupted step is tried again (bounded)
    RESET = "reset"  # back to idle, ready for the next offer


S, E = State, Event

# (state, event) -> next state. The one table of transitions.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.UPDATE_OFFERED): S.DOWNLOADING,
    (S.COMMITTED, E.UPDATE_OFFERED): S.DOWNLOADING,
    (S.FAILED, E.UPDATE_OFFERED): S.DOWNLOADING,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.RETRY): S.DOWNLOADING,
    (S.DOWNLOADING, E.ERROR): S.FAILED,
    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.VERIFYING, E.ALREADY_SERVING): S.COMMITTED,
    (S.VERIFYING, E.RETRY): S.VERIFYING,
    (S.VERIFYING, E.ERROR): S.FAILED,
    (S.STAGED, E.SHADOW_START): S.SHADOW,
    (S.STAGED, E.ACTIVATE): S.ACTIVATING,
    (S.STAGED, E.ERROR): S.FAILED,
    (S.SHADOW, E.SHADOW_DONE): S.STAGED,
    (S.SHADOW, E.RETRY): S.SHADOW,
    (S.SHADOW, E.ERROR): S.FAILED,
    (S.ACTIVATING, E.SWAPPED): S.HEALTH_CHECK,
    (S.ACTIVATING, E.ERROR): S.ROLLING_BACK,
    (S.ACTIVATING, E.RETRY): S.STAGED,  # restarted mid-swap: the old model serves; swap again (bounded)
    (S.HEALTH_CHECK, E.HEALTHY): S.COMMITTED,
    (S.HEALTH_CHECK, E.UNHEALTHY): S.ROLLING_BACK,
    (S.HEALTH_CHECK, E.RETRY): S.STAGED,  # restarted in the window: the old model serves; swap again (bounded)
    (S.HEALTH_CHECK, E.ERROR): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.FAILED,
    (S.ROLLING_BACK, E.RETRY): S.ROLLING_BACK,
    (S.COMMITTED, E.RESET): S.IDLE,
    (S.FAILED, E.RESET): S.IDLE,
}

# States in which the live model may differ from the last committed one: recovery must decide which to serve.
LIVE_MODEL_AT_RISK = frozenset({S.ACTIVATING, S.HEALTH_CHECK, S.ROLLING_BACK})
# Terminal states of one update attempt: the device serves a verified model and waits for the next offer.
RESTING = frozenset({S.IDLE, S.COMMITTED, S.FAILED})


class InvalidTransition(EdgeRuntimeError):
    """An event arrived that the current state does not accept (a bug or a corrupt state file)."""


def next_state(state: State, event: Event) -> State:
    """The state that ``event`` leads to from ``state``; raise if the table has no such edge."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state.value!r} on {event.value!r}") from None
