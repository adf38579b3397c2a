"""Rollouts as server-side jobs: one transition table, state persisted before every step, resumable after a kill.

A rollout takes a registered version to a group: the canaries get per-device documents, are watched for a window
against a control group (``rollout_judge``), then the other members follow in waves, and finally the registry's
``production`` alias moves to the version for the group (which clears the per-device documents). A failed stage or
an abort sends signed rollback documents to every device that had been given the new version.

Every transition is one database transaction (the job row and a ``rollout_steps`` row with the figures it used).
A state's entry action (publishing) runs after the transition is committed and is marked done (``acted``)
afterwards; after a restart, a state whose action is not marked done runs it again. Publishing is idempotent: a
device already serving those bytes ignores the document.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update

from fleet.server import moves
from fleet.server import registry as reg
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.errors import RegistryError
from fleet.server.rollout_judge import Thresholds


class State(StrEnum):
    CANARY = "canary"          # canaries updating
    WATCHING = "watching"      # canaries committed, watched for the window
    WAVES = "waves"            # wave ``stage`` updating
    PROMOTING = "promoting"    # production alias moves to the version for the group
    ROLLING_BACK = "rolling_back"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"          # rolled back after a failed stage
    ABORTED = "aborted"        # rolled back on an operator's abort


S = State
# (state, event) -> next state: the only moves a rollout makes.
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.CANARY, "committed"): S.WATCHING, (S.CANARY, "failed"): S.ROLLING_BACK,
    (S.WATCHING, "pass"): S.WAVES, (S.WATCHING, "fail"): S.ROLLING_BACK,
    (S.WAVES, "wave_done"): S.WAVES, (S.WAVES, "last_wave_done"): S.PROMOTING, (S.WAVES, "failed"): S.ROLLING_BACK,
    (S.PROMOTING, "promoted"): S.DONE,
    (S.ROLLING_BACK, "rolled_back"): S.FAILED, (S.ROLLING_BACK, "aborted"): S.ABORTED,
    **{(s, "pause"): S.PAUSED for s in (S.CANARY, S.WATCHING, S.WAVES)},
    **{(s, "abort"): S.ROLLING_BACK for s in (S.CANARY, S.WATCHING, S.WAVES, S.PAUSED)},
}
FINAL = (S.DONE, S.FAILED, S.ABORTED)


class RolloutError(RegistryError):
    """A rollout cannot be created or moved (bad plan, unknown group, transition not allowed)."""


class RolloutPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=reg.NAME_PATTERN, description="Registered model.")
    version: str = Field(max_length=64, description="Registered version to roll out.")
    target: str = Field(pattern=r"^group:.+", max_length=200, description="group:NAME.")
    canaries: list[str] = Field(default_factory=list, description="Canary devices (default: canary_percent).")
    canary_percent: float = Field(default=10, gt=0, le=100, description="Share of members as canaries.")
    waves: int = Field(default=1, ge=1, le=100, description="The other members in this many waves.")
    window_s: float = Field(default=60, ge=0, le=86400, description="Seconds the committed canaries are watched.")
    timeout_s: float = Field(default=300, gt=0, le=86400, description="Time each stage's devices have to update.")
    thresholds: Thresholds = Field(default_factory=Thresholds)


def _members(conn: Any, group: str) -> list[tuple[str, str | None]]:
    return sorted((r.id, r.version) for r in conn.execute(select(t.devices.c.id, t.devices.c.groups,
                                                                  t.devices.c.version))
                  if group in (r.groups or []))


def create(engine: Any, user: User, plan: RolloutPlan) -> dict[str, Any]:
    """Validate the plan against the registry and the group's members, then persist the job (state canary)."""
    if not user.is_operator:
        raise PermissionError("operator role required")
    group = plan.target.split(":", 1)[1]
    with engine.begin() as conn:
        _claim_model(conn, plan.name, plan.target)
        reg.get_version(conn, plan.name, plan.version)
        members = _members(conn, group)
        if not members:
            raise RolloutError(f"group {group!r} has no known devices")
        ids = [m for m, _ in members]
        olds = sorted({v for _, v in members if v and v != plan.version})
        if len(olds) != 1:
            raise RolloutError(f"group {group!r} serves versions {olds or 'none'} besides {plan.version}: a rollout "
                               "needs one old version to judge against and return to")
        canaries = plan.canaries or ids[: max(1, math.ceil(len(ids) * plan.canary_percent / 100))]
        unknown = sorted(set(canaries) - set(ids))
        if unknown:
            raise RolloutError(f"canaries {', '.join(unknown)} are not members of group {group!r}")
        rest = [d for d in ids if d not in canaries]
        n = min(plan.waves, len(rest)) or 1
        waves = [rest[i * len(rest) // n:(i + 1) * len(rest) // n] for i in range(n)] if rest else []
        now = time.time()
        rid = conn.execute(insert(t.rollouts).values(
            name=plan.name, version=plan.version, from_version=olds[0], target=plan.target, canaries=canaries,
            waves=waves, plan=plan.model_dump(mode="json"), state=S.CANARY.value, stage=0, acted=False,
            stage_started=now, created_by=user.name, created=now, updated=now)).inserted_primary_key[0]
        conn.execute(insert(t.rollout_steps).values(rollout_id=rid, ts=now, user=user.name, event="create",
                                                    from_state="-", to_state=S.CANARY.value,
                                                    figures={"canaries": canaries, "waves": waves}))
    audit(engine, user.name, "rollout", f"{plan.name} {plan.version} {plan.target}", "done", {"rollout": rid})
    return {"id": rid, "state": S.CANARY.value, "canaries": canaries, "waves": waves, "from_version": olds[0]}


def _claim_model(conn: Any, name: str, target: str) -> None:
    """Lock the model; refuse while another rollout of it to ``target`` is active or its production is being
    published."""
    moves.lock_model(conn, name)
    job = moves.active_rollout(conn, name, target=target)
    if job is not None:
        raise moves.MoveConflict(f"rollout {job.id} of {name} {job.version} to {target} is {job.state}: one rollout "
                                 f"per model and target at a time (abort it first: edge-runtime registry abort "
                                 f"{job.id})")
    busy = moves.pending_move(conn, name, reg.PRODUCTION)
    if busy is not None:
        raise moves.MoveConflict(moves.busy_reason(busy))


def transition(conn: Any, job: Any, event: str, user: str, figures: dict[str, Any] | None = None,
               stage: int | None = None, reason: str | None = None) -> State:
    """Apply ``event`` to ``job`` (a rollouts row) in ``conn``'s transaction, or RolloutError if not allowed."""
    cur = S(job.state)
    nxt = S(job.resume_state) if (cur, event) == (S.PAUSED, "resume") and job.resume_state else TRANSITIONS.get(
        (cur, event))
    if nxt is None:
        raise RolloutError(f"rollout {job.id} is {cur.value}: '{event}' is not possible now")
    now = time.time()
    values: dict[str, Any] = {"state": nxt.value, "updated": now, "acted": False,
                              "stage": job.stage if stage is None else stage}
    if nxt != S.PAUSED:
        values["stage_started"] = now
    values["resume_state"] = cur.value if nxt == S.PAUSED else None
    if reason is not None:
        values["reason"] = reason
    done = conn.execute(update(t.rollouts).where(t.rollouts.c.id == job.id, t.rollouts.c.state == job.state,
                                                 t.rollouts.c.updated == job.updated).values(**values))
    if done.rowcount != 1:
        raise RolloutError(f"rollout {job.id} changed meanwhile; try again")
    conn.execute(insert(t.rollout_steps).values(rollout_id=job.id, ts=now, user=user, event=event,
                                                from_state=cur.value, to_state=nxt.value, figures=figures))
    return nxt


def operator_event(engine: Any, user: User, rid: int, event: str) -> dict[str, Any]:
    """pause, resume or abort, from the API or the dashboard; audited either way."""
    try:
        if not user.is_operator:
            raise PermissionError("operator role required")
        if event not in ("pause", "resume", "abort"):
            raise RolloutError(f"unknown rollout action {event!r}")
        with engine.begin() as conn:
            job = get_job(conn, rid)
            nxt = transition(conn, job, event, user.name, reason=f"{event} by {user.name}" if event == "abort"
                             else None)
    except (PermissionError, RegistryError) as exc:
        audit(engine, user.name, f"rollout_{event}", f"rollout {rid}", "refused", {"reason": str(exc)})
        raise
    audit(engine, user.name, f"rollout_{event}", f"rollout {rid}", "done", {"state": nxt.value})
    return {"id": rid, "state": nxt.value}


def get_job(conn: Any, rid: int) -> Any:
    job = conn.execute(select(t.rollouts).where(t.rollouts.c.id == rid)).first()
    if job is None:
        raise reg.NotRegistered(f"no rollout {rid}")
    return job


def show(conn: Any, rid: int) -> dict[str, Any]:
    job = get_job(conn, rid)
    steps = conn.execute(select(t.rollout_steps).where(t.rollout_steps.c.rollout_id == rid)
                         .order_by(t.rollout_steps.c.id)).all()
    return {**dict(job._mapping), "steps": [dict(s._mapping) for s in steps]}


def listing(conn: Any, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(select(t.rollouts).order_by(t.rollouts.c.id.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]
