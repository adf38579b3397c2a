"""Re-training runs as server-side jobs: one transition table, state persisted before every step, resumable.

queued -> snapshot -> training -> converting -> gating -> registering -> canary (policy ``canary.auto``) or
awaiting_approval -> (approve) canary -> done when the rollout promoted the candidate, rolled_back when it did not.
A failed gate ends ``rejected`` (the parent stays where it is, the reason recorded); an error ends ``failed``; an
operator's cancel ends ``cancelled``. Every transition is one transaction (the run row plus a ``retrain_steps``
row with the figures it used); a state's work runs after its transition is committed, and is safe to repeat after
a restart (content-addressed snapshots, forced conversion, registration idempotent on the bytes, an existing
rollout of the candidate adopted rather than started twice).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from sqlalchemy import desc, insert, select, update

from fleet.retrain import RetrainError
from fleet.retrain.policy import RetrainPolicy
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.errors import NotRegistered


class State(StrEnum):
    QUEUED = "queued"
    SNAPSHOT = "snapshot"              # dataset snapshot and train.npz
    TRAINING = "training"              # the user's command, here or on a worker
    CONVERTING = "converting"          # the parent's recipe on the new source model
    GATING = "gating"                  # holdout, field data, golden outputs
    REGISTERING = "registering"        # candidate in the registry with its lineage
    AWAITING_APPROVAL = "awaiting_approval"
    CANARY = "canary"                  # a rollout (fleet.server.rollouts) of the candidate
    DONE = "done"                      # promoted
    ROLLED_BACK = "rolled_back"        # the rollout did not promote it
    REJECTED = "rejected"              # a gate failed: the parent stays
    FAILED = "failed"
    CANCELLED = "cancelled"


S = State
FINAL = (S.DONE, S.ROLLED_BACK, S.REJECTED, S.FAILED, S.CANCELLED)
_WORKING = (S.QUEUED, S.SNAPSHOT, S.TRAINING, S.CONVERTING, S.GATING, S.REGISTERING, S.AWAITING_APPROVAL, S.CANARY)
# (state, event) -> next state: the only moves a run makes.
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.QUEUED, "start"): S.SNAPSHOT,
    (S.SNAPSHOT, "snapshot_done"): S.TRAINING,
    (S.TRAINING, "trained"): S.CONVERTING,
    (S.TRAINING, "restart"): S.TRAINING,        # the server restarted (or a worker's claim expired): run it again
    (S.CONVERTING, "converted"): S.GATING,
    (S.GATING, "passed"): S.REGISTERING, (S.GATING, "gate_failed"): S.REJECTED,
    (S.REGISTERING, "registered"): S.AWAITING_APPROVAL, (S.REGISTERING, "registered_auto"): S.CANARY,
    (S.AWAITING_APPROVAL, "approve"): S.CANARY,
    (S.CANARY, "promoted"): S.DONE, (S.CANARY, "rolled_back"): S.ROLLED_BACK,
    **{(s, "fail"): S.FAILED for s in _WORKING},
    **{(s, "cancel"): S.CANCELLED for s in _WORKING},
}


def transition(conn: Any, run: Any, event: str, user: str, figures: dict[str, Any] | None = None,
               **values: Any) -> State:
    """Apply ``event`` to ``run`` (a retrain_runs row) in ``conn``'s transaction, or RetrainError if not allowed."""
    cur = S(run.state)
    nxt = TRANSITIONS.get((cur, event))
    if nxt is None:
        raise RetrainError(f"run {run.id} is {cur.value}: '{event}' is not possible now")
    now = time.time()
    done = conn.execute(update(t.retrain_runs).where(t.retrain_runs.c.id == run.id,
                                                     t.retrain_runs.c.state == run.state,
                                                     t.retrain_runs.c.updated == run.updated)
                        .values(state=nxt.value, updated=now, stage_started=now, **values))
    if done.rowcount != 1:
        raise RetrainError(f"run {run.id} changed meanwhile; try again")
    conn.execute(insert(t.retrain_steps).values(run_id=run.id, ts=now, user=user, event=event,
                                                from_state=cur.value, to_state=nxt.value, figures=figures))
    return nxt


def create(engine: Any, user: str, policy: RetrainPolicy, parent: str, reasons: list[dict[str, Any]]) -> int:
    """Persist a new run (state queued) for ``policy``'s model from ``parent``."""
    now = time.time()
    with engine.begin() as conn:
        active = conn.execute(select(t.retrain_runs.c.id).where(
            t.retrain_runs.c.model == policy.model,
            t.retrain_runs.c.state.in_([s.value for s in _WORKING if s != S.AWAITING_APPROVAL]))).first()
        if active is not None:
            raise RetrainError(f"run {active.id} of {policy.model} is still going: one run per model at a time")
        rid = conn.execute(insert(t.retrain_runs).values(
            model=policy.model, parent=parent, state=S.QUEUED.value, reasons=reasons,
            policy=policy.model_dump(mode="json"), attempt=0, created_by=user, created=now, updated=now,
            stage_started=now)).inserted_primary_key[0]
        conn.execute(insert(t.retrain_steps).values(run_id=rid, ts=now, user=user, event="create", from_state="-",
                                                    to_state=S.QUEUED.value, figures={"reasons": reasons}))
    return int(rid)


def get_run(conn: Any, rid: int) -> Any:
    run = conn.execute(select(t.retrain_runs).where(t.retrain_runs.c.id == rid)).first()
    if run is None:
        raise NotRegistered(f"no re-training run {rid}")
    return run


def show(conn: Any, rid: int) -> dict[str, Any]:
    run = get_run(conn, rid)
    steps = conn.execute(select(t.retrain_steps).where(t.retrain_steps.c.run_id == rid)
                         .order_by(t.retrain_steps.c.id)).all()
    return {**dict(run._mapping), "steps": [dict(s._mapping) for s in steps]}


def listing(conn: Any, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    q = select(t.retrain_runs).order_by(desc(t.retrain_runs.c.id)).limit(limit)
    if model is not None:
        q = q.where(t.retrain_runs.c.model == model)
    return [dict(r._mapping) for r in conn.execute(q)]


def last_run(conn: Any, model: str) -> Any:
    return conn.execute(select(t.retrain_runs).where(t.retrain_runs.c.model == model)
                        .order_by(desc(t.retrain_runs.c.id)).limit(1)).first()


def operator_event(engine: Any, user: User, rid: int, event: str, on_cancel: Any = None) -> dict[str, Any]:
    """approve or cancel, from the CLI, the API or the dashboard; audited either way."""
    try:
        if not user.is_operator:
            raise PermissionError("operator role required")
        if event not in ("approve", "cancel"):
            raise RetrainError(f"unknown run action {event!r}")
        with engine.begin() as conn:
            run = get_run(conn, rid)
            nxt = transition(conn, run, event, user.name, reason=f"cancelled by {user.name}" if event == "cancel"
                             else None)
        if event == "cancel" and on_cancel is not None:
            on_cancel(run)
    except (PermissionError, RetrainError, NotRegistered) as exc:
        audit(engine, user.name, f"retrain_{event}", f"run {rid}", "refused", {"reason": str(exc)})
        raise
    audit(engine, user.name, f"retrain_{event}", f"run {rid}", "done", {"state": nxt.value})
    return {"id": rid, "state": nxt.value}
