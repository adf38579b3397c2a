"""Alias moves (promote, revert) and delivering a version to targets, safe with two operators at once.

A move is three short transactions around the publication, never network I/O inside a database transaction:

1. **intent** -- lock the model's row in ``model_locks`` (serialises every registry write on that model, on SQLite
   and PostgreSQL alike), refuse if the alias is being published by someone else or a rollout of the model is
   active, then record the move in ``alias_history`` (state ``publishing``); commit. A second operator now gets
   a 409 with the reason instead of waiting on a lock or losing an update.
   The alias itself does not move yet: readers see the move as pending in the alias's history.
2. **publish** -- chunks, the signed desired document (with the package URL when the server has a public URL),
   clearing superseded per-device documents.
3. **outcome** -- the alias moves (and ``previous`` with it) and the history row says ``published``; or, when
   publishing failed, the alias stays where it was, the row says ``failed`` with the error, and the same command
   again retries (publishing is idempotent: a device already serving those bytes ignores the document).

A move whose server died while publishing stays pending for at most ``STALE_S``; then the next move takes over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.update.transfer import DEFAULT_CHUNK, ChunkMeta
from fleet.publish import Published, desired_topic, parse_target, set_desired_many, upload
from fleet.server import device_auth
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.db.engine import dialect_insert
from fleet.server.errors import ActionRefused, RegistryError
from fleet.server.registry import PREVIOUS, PRODUCTION, get_version, package_path

STALE_S = 600.0  # a move still "publishing" after this long belongs to a server that died: it may be taken over
ACTIVE_ROLLOUT = ("canary", "watching", "waves", "promoting", "rolling_back", "paused")
_DONE = ("published", "moved", None)  # history rows that moved the alias (None: recorded before revision 0003)


class MoveConflict(RegistryError):
    """Another move or a rollout holds the model right now (HTTP 409, try again later)."""


def lock_model(conn: Any, name: str) -> None:
    """Take the model's write lock for the rest of ``conn``'s transaction (creating its row the first time)."""
    lk = t.model_locks
    ins = dialect_insert(conn)(lk).values(name=name, since=time.time()).on_conflict_do_nothing()
    conn.execute(ins)
    conn.execute(update(lk).where(lk.c.name == name).values(since=time.time()))


def active_rollout(conn: Any, name: str, target: str | None = None) -> Any:
    """A rollout of ``name`` (to ``target``, when given) not yet ended, or None."""
    ro = t.rollouts
    q = select(ro.c.id, ro.c.state, ro.c.version, ro.c.target).where(ro.c.name == name,
                                                                       ro.c.state.in_(ACTIVE_ROLLOUT))
    if target is not None:
        q = q.where(ro.c.target == target)
    return conn.execute(q.limit(1)).first()


def pending_move(conn: Any, name: str, alias: str | None = None, but: str | None = None) -> Any:
    """A move of ``name``'s ``alias`` (any alias: None) still being published (not stale, not a rollout's own
    earlier try when ``but`` is that rollout), or None."""
    h = t.alias_history
    q = select(h).where(h.c.name == name, h.c.state == "publishing")
    rows = conn.execute(q if alias is None else q.where(h.c.alias == alias)).all()
    return next((r for r in rows if time.time() - r.ts < STALE_S and not (but and r.user == but
                                                                           and but.startswith("rollout:"))), None)


def busy_reason(row: Any) -> str:
    return (f"{row.name}@{row.alias} is being moved by {row.user} ({row.action} to {row.version} since "
            f"{time.strftime('%H:%M:%S', time.gmtime(row.ts))} UTC): try again when that move has finished")


@dataclass(frozen=True)
class Intent:
    history_id: int
    name: str
    alias: str
    version: str
    previous: str | None
    target: str | None
    revert: bool
    user: str


def move(engine: Any, actions: Any, data_dir: Path, user: User, name: str, version: str | None,
         alias: str = PRODUCTION, target: str | None = None, revert: bool = False) -> dict[str, Any]:
    """Promote (``version`` given) or revert ``alias``; publishes when the alias has a target. Audited."""
    what = "revert" if revert else "promote"
    try:
        if not user.is_operator:
            raise PermissionError("operator role required")
        with engine.begin() as conn:
            intent = _claim(conn, actions, user, name, version, alias, target, revert)
        cleared = _publish(engine, actions, data_dir, intent) if intent.target is not None else []
        out = {"name": name, "alias": alias, "version": intent.version, "previous": intent.previous,
               "target": intent.target, "published": intent.target is not None, "cleared_device_documents": cleared}
    except (PermissionError, RegistryError, ActionRefused) as exc:
        audit(engine, user.name, what, f"{name}@{alias}", "refused", {"reason": str(exc)})
        raise
    audit(engine, user.name, what, f"{name}@{alias}", "done", out)
    return out


def _claim(conn: Any, actions: Any, user: User, name: str, version: str | None, alias: str, target: str | None,
           revert: bool) -> Intent:
    """Phase 1 in ``conn``'s transaction: check, then record the move (applied at once when nothing publishes)."""
    a, h = t.model_aliases, t.alias_history
    lock_model(conn, name)
    busy = pending_move(conn, name, alias, but=user.name)
    if busy is not None:
        raise MoveConflict(busy_reason(busy))
    conn.execute(update(h).where(h.c.name == name, h.c.alias == alias, h.c.state == "publishing")
                 .values(state="failed", error="abandoned: the server publishing it stopped before the outcome"))
    # a rollout's own final move is not held up by another rollout (two at PROMOTING would wait on each other);
    # user names cannot contain ':', so no operator passes for a rollout
    job = active_rollout(conn, name) if alias == PRODUCTION and not user.name.startswith("rollout:") else None
    if job is not None:
        raise MoveConflict(f"rollout {job.id} of {name} {job.version} is {job.state}: production moves when it "
                           f"ends (abort it first: edge-runtime registry abort {job.id})")
    cur = conn.execute(select(a).where(a.c.name == name, a.c.alias == alias)).first()
    if revert:
        last = conn.execute(select(h).where(h.c.name == name, h.c.alias == alias, h.c.state.in_(_DONE[:2])
                                            | h.c.state.is_(None)).order_by(h.c.id.desc()).limit(1)).first()
        if cur is None or last is None or last.previous is None:
            raise RegistryError(f"{name}@{alias} has no earlier version to revert to")
        version = last.previous
    assert version is not None
    get_version(conn, name, version)
    target = target or (cur.target if cur is not None else None)
    if target is not None and parse_target(target)[1] == "":
        raise RegistryError(f"bad target {target!r}: a device id or group:NAME")
    if target is not None:
        actions.signing_link()  # no operator key or no broker: refused before anything is recorded
    previous = cur.version if cur is not None else None
    hid = conn.execute(insert(h).values(name=name, alias=alias, version=version, previous=previous, target=target,
                                        user=user.name, ts=time.time(), action="revert" if revert else "promote",
                                        state="publishing" if target is not None else "moved")
                       ).inserted_primary_key[0]
    intent = Intent(hid, name, alias, version, previous, target, revert, user.name)
    if target is None:
        _apply(conn, intent)
    return intent


def _publish(engine: Any, actions: Any, data_dir: Path, intent: Intent) -> list[str]:
    """Phases 2 and 3: publish without any transaction open, then record the outcome."""
    with engine.connect() as conn:
        row = get_version(conn, intent.name, intent.version)
        scope, tname = parse_target(intent.target or "")
        members = group_members(conn, tname) if scope == "group" else []
    try:
        cleared = deliver(actions, data_dir, row, [intent.target or ""], intent.revert, members)
    except (RegistryError, ActionRefused) as exc:
        with engine.begin() as conn:
            _finish(conn, intent, "failed", str(exc))
        stays = intent.previous or "no version"
        raise ActionRefused(f"{exc}; {intent.name}@{intent.alias} stays on {stays} (the failed move is in its "
                            "history): run the same command again to retry") from None
    with engine.begin() as conn:
        _finish(conn, intent, "published", None)
        _apply(conn, intent)
    return cleared


def _finish(conn: Any, intent: Intent, state: str, error: str | None) -> None:
    h = t.alias_history
    conn.execute(update(h).where(h.c.id == intent.history_id).values(state=state, error=error))


def _apply(conn: Any, intent: Intent) -> None:
    """Move the alias (and ``previous`` with production) as the intent says."""
    now = time.time()
    _set_alias(conn, intent.name, intent.alias, intent.version, intent.target, intent.user, now)
    if intent.alias == PRODUCTION and intent.previous not in (None, intent.version):
        _set_alias(conn, intent.name, PREVIOUS, intent.previous, None, intent.user, now, clear_target=True)


def _set_alias(conn: Any, name: str, alias: str, version: str, target: str | None, user: str, now: float,
               clear_target: bool = False) -> None:
    a = t.model_aliases
    values: dict[str, Any] = {"version": version, "moved_by": user, "moved": now}
    if target is not None or clear_target:
        values["target"] = target
    if not conn.execute(update(a).where(a.c.name == name, a.c.alias == alias).values(**values)).rowcount:
        conn.execute(insert(a).values(name=name, alias=alias, **{"target": target, **values}))


def group_members(conn: Any, group: str) -> list[str]:
    return sorted(r.id for r in conn.execute(select(t.devices.c.id, t.devices.c.groups))
                  if group in (r.groups or []))


def deliver(actions: Any, data_dir: Path, row: Any, targets: list[str], rollback: bool,
            members: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Grant, chunks (retained), one signed desired document per target, then clear superseded device documents.

    The document carries the package's HTTP(S) URL when the server has a public URL (devices fetch it with their
    own credential and fall back to the chunks); the grant lets exactly these targets fetch it."""
    link, key = actions.signing_link()
    archive = package_path(data_dir, row.sha256)
    if not archive.is_file():
        raise RegistryError(f"the stored package of {row.name} {row.version} is missing ({archive})")
    with actions.engine.begin() as conn:
        device_auth.grant(conn, row.sha256, targets)
    try:
        upload(link, actions.topics, archive, DEFAULT_CHUNK)
        pub = Published(row.name, row.version, row.profile, ChunkMeta.model_validate(row.meta))
        set_desired_many(link, actions.topics, pub, targets, key, rollback=rollback,
                         url=actions.package_url(row.sha256))
        cleared = []
        for dev in members:  # after the group's document: each member then resolves to it
            h = link.publish(desired_topic(actions.topics, "device", dev), b"", qos=1, retain=True)
            if not h.wait(10):
                raise RegistryError(f"the broker did not acknowledge clearing {dev}'s own document")
            cleared.append(dev)
    except EdgeRuntimeError as exc:
        if isinstance(exc, RegistryError):
            raise
        raise ActionRefused(f"publishing failed: {exc}") from None
    return cleared
