"""The rollout runner in `fleet serve`: each tick runs every active rollout's pending entry action, then checks
whether its stage is over (devices updated, window elapsed, timeout) and makes the transition."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from fleet.server import moves
from fleet.server import registry as reg
from fleet.server.auth import User
from fleet.server.db import tables as t
from fleet.server.errors import ActionRefused, RegistryError
from fleet.server.rollout_judge import Thresholds, group_figures, judge
from fleet.server.rollouts import FINAL, RolloutError, S, get_job, transition
from fleet.server.ticker import Ticker

log = logging.getLogger(__name__)
UPDATED = ("committed", "idle", None)  # what a device that serves the version and is not busy reports
FAILED = ("failed", "rolled_back")


class RolloutRunner(Ticker):
    """Background job: advances every active rollout once per tick (``tick_s``)."""

    name = "rollouts"

    def __init__(self, engine: Any, actions: Any, data_dir: Path, tick_s: float = 0.5) -> None:
        super().__init__(tick_s)
        self.engine, self.actions, self.data_dir = engine, actions, data_dir

    def tick(self) -> None:
        active = [s.value for s in S if s not in FINAL and s != S.PAUSED]
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(select(t.rollouts.c.id).where(t.rollouts.c.state.in_(active)))]
        for rid in ids:
            try:
                self.advance(rid)
            except (RegistryError, ActionRefused) as exc:  # e.g. the broker is away: retried next tick
                log.warning("rollout %s: %s", rid, exc)

    # ------------------------------------------------------------------------------------------------ steps
    def advance(self, rid: int) -> None:
        with self.engine.connect() as conn:
            job = get_job(conn, rid)
        if not job.acted:
            self._enter(job)
            with self.engine.begin() as conn:
                conn.execute(update(t.rollouts).where(t.rollouts.c.id == rid, t.rollouts.c.updated == job.updated)
                             .values(acted=True))
            return
        event, figures, stage = self._check(job)
        if event is not None:
            with self.engine.begin() as conn:
                try:
                    reason = (figures or {}).get("reason") if event in ("fail", "failed") else None
                    transition(conn, get_job(conn, rid), event, f"rollout:{rid}", figures, stage, reason)
                except RolloutError as exc:  # an operator paused or aborted it meanwhile
                    log.info("rollout %s: %s", rid, exc)

    def _row(self, job: Any, version: str) -> Any:
        with self.engine.connect() as conn:
            return reg.get_version(conn, job.name, version)

    def _given(self, job: Any) -> list[str]:
        """Every device that was sent the new version: canaries, and the waves up to the current one."""
        with self.engine.connect() as conn:
            waved = conn.execute(select(t.rollout_steps.c.id).where(t.rollout_steps.c.rollout_id == job.id,
                                                                   t.rollout_steps.c.to_state == S.WAVES.value)
                                 .limit(1)).first() is not None
        waves = job.waves[: job.stage + 1] if waved else []
        return list(job.canaries) + [d for w in waves for d in w]

    def _enter(self, job: Any) -> None:
        state = S(job.state)
        if state == S.CANARY:
            moves.deliver(self.actions, self.data_dir, self._row(job, job.version), list(job.canaries), False)
        elif state == S.WAVES and job.stage < len(job.waves):
            moves.deliver(self.actions, self.data_dir, self._row(job, job.version), list(job.waves[job.stage]), False)
        elif state == S.PROMOTING:
            with self.engine.connect() as conn:
                cur = conn.execute(select(t.model_aliases).where(t.model_aliases.c.name == job.name,
                                                                 t.model_aliases.c.alias == reg.PRODUCTION)).first()
            if cur is None or (cur.version, cur.target) != (job.version, job.target):  # not yet (a resume)
                moves.move(self.engine, self.actions, self.data_dir, User(0, f"rollout:{job.id}", "operator"),
                         job.name, job.version, reg.PRODUCTION, job.target)
        elif state == S.ROLLING_BACK:
            moves.deliver(self.actions, self.data_dir, self._row(job, job.from_version), self._given(job), True)

    def _devices(self, ids: list[str]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.devices).where(t.devices.c.id.in_(ids))).all() if ids else []
        return {r.id: r for r in rows}

    def _on(self, ids: list[str], version: str, since: float) -> tuple[bool, list[str], dict[str, Any]]:
        """(all on ``version`` and settled, the ones that failed since ``since``, each one's state)."""
        devs = self._devices(ids)
        states = {d: (devs[d].version, devs[d].update_state) if d in devs else None for d in ids}
        failed = [d for d in ids if d in devs and devs[d].update_state in FAILED and (devs[d].update_at or 0) >= since]
        ok = all(d in devs and devs[d].version == version and devs[d].update_state in UPDATED for d in ids)
        return ok, failed, {"devices": states}

    def _check(self, job: Any) -> tuple[str | None, dict[str, Any] | None, int | None]:
        state, now = S(job.state), time.time()
        timed_out = now - job.stage_started > job.plan["timeout_s"]
        if state == S.CANARY:
            ok, failed, fig = self._on(list(job.canaries), job.version, job.stage_started)
            if ok:
                return "committed", fig, None
            if failed or timed_out:
                return "failed", {**fig, "reason": f"canaries {failed} failed" if failed else "timeout"}, None
        elif state == S.WATCHING and now - job.stage_started >= job.plan["window_s"]:
            return self._verdict(job, now)
        elif state == S.WAVES:
            if job.stage >= len(job.waves):
                return "last_wave_done", None, None
            ok, failed, fig = self._on(list(job.waves[job.stage]), job.version, job.stage_started)
            if ok:
                last = job.stage + 1 >= len(job.waves)
                return ("last_wave_done", fig, None) if last else ("wave_done", fig, job.stage + 1)
            if failed or timed_out:
                return "failed", {**fig, "reason": f"wave devices {failed} failed" if failed else "timeout"}, None
        elif state == S.PROMOTING:
            return "promoted", None, None
        elif state == S.ROLLING_BACK:
            ok, _, fig = self._on(self._given(job), job.from_version, job.stage_started)
            if ok or timed_out:
                aborted = (job.reason or "").startswith("abort")
                return ("aborted" if aborted else "rolled_back"), {**fig, "complete": ok}, None
        return None, None, None

    def _verdict(self, job: Any, now: float) -> tuple[str, dict[str, Any], None]:
        canaries = list(job.canaries)
        group = job.target.split(":", 1)[1]
        with self.engine.connect() as conn:
            members = [r.id for r in conn.execute(select(t.devices.c.id, t.devices.c.groups))
                       if group in (r.groups or [])]
            control = [d for d in members if d not in canaries]
            c = group_figures(conn, canaries, job.version, job.stage_started, now)
            k = group_figures(conn, control, job.from_version, job.stage_started, now) if control else None
        passed, reason = judge(c, k, Thresholds.model_validate(job.plan["thresholds"]))
        return ("pass" if passed else "fail"), {"canary": c, "control": k, "window": [job.stage_started, now],
                                                "reason": reason}, None
