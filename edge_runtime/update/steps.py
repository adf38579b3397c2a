"""The steps of one update, each a plain function of an :class:`Attempt`; ``run`` chains them from any state.

A step reads what it needs from the attempt (the verified document, the slot key) and its context (machine,
slots, runtime, link), fires its event, and persists before anything irreversible. Boot-time helpers
(``recover``, ``load_active``) work on the context alone.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.update.attempt import Attempt, UpdateContext
from edge_runtime.update.desired import DesiredModel
from edge_runtime.update.errors import SmokeTestError, TransferError, UpdateError, VerificationError
from edge_runtime.update.health import HealthWindow, Verdict
from edge_runtime.update.http_transfer import http_download, part_path
from edge_runtime.update.runtime import agree
from edge_runtime.update.states import LIVE_MODEL_AT_RISK, TRANSITIONS, Event, State
from edge_runtime.update.transfer import ChunkDownloader
from edge_runtime.update.verify import check_archive, verify_package

log = logging.getLogger(__name__)
TRANSIENT = {"stalled", "package_missing", "interrupted", "io_error", "http_failed"}


class Stopped(UpdateError):
    """The agent is stopping in the middle of an attempt; a restart resumes it (nothing failed)."""

    code = "interrupted"


# ------------------------------------------------------------------------------------------ boot
def recover(ctx: UpdateContext) -> Attempt | None:
    """Bring a record left mid-update back to a consistent state; return the attempt to resume, if any.

    Before the swap the attempt resumes where it stopped. After the swap (activating, health check) the new model
    is not trusted yet: the committed model serves again, and the attempt resumes from staged (a new swap and a
    new health window), bounded by ``max_recoveries``. A restart while switching back finishes the switch.
    """
    ctx.clean_stale_downloads()
    m, rec = ctx.machine, ctx.machine.record
    if m.resting:
        _prune(ctx)
        return None
    doc = ctx.stored_doc()
    exhausted = doc is None or rec.recoveries >= ctx.settings.max_recoveries
    if rec.state in LIVE_MODEL_AT_RISK and doc is not None and ctx.slots.key_for_archive(doc.sha256) is None:
        exhausted = True  # the swapped-in slot is gone: nothing to try again, switch back
    if rec.state is State.ROLLING_BACK or (rec.state in LIVE_MODEL_AT_RISK and exhausted):
        if rec.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, f"device restarted during {rec.state.value} {rec.recoveries + 1} times; "
                   "switching back", "restarted")
        _finish_rollback(ctx, "device restarted before the new model was committed", "restarted")
        return None
    if exhausted:
        fail(ctx, f"update interrupted {rec.recoveries + 1} times; giving up", "recoveries_exhausted", doc)
        return None
    assert doc is not None
    attempt = Attempt(ctx, doc, rec.state)
    if rec.state in LIVE_MODEL_AT_RISK:
        _restore_pointers(ctx)
        ctx.slots.set_candidate(attempt.key)  # still installed, protected from pruning until it serves
        m.fire(Event.RETRY, f"device restarted during {rec.state.value}; {rec.from_key} serves, trying "
               f"{attempt.key} again", "restarted", recoveries=rec.recoveries + 1)
        attempt.start = State.STAGED
    else:
        m.update(recoveries=rec.recoveries + 1)
    return attempt


def resume(attempt: Attempt | None) -> State | None:
    """On the worker thread, before any offer: continue an attempt that a restart interrupted."""
    if attempt is None:
        return None
    m = attempt.ctx.machine
    if attempt.start is m.state and (m.state, Event.RETRY) in TRANSITIONS:
        m.fire(Event.RETRY, f"resuming {m.state.value} after a restart", "resumed")
    return run(attempt)


def load_active(ctx: UpdateContext) -> Any:
    """Load the active slot's model; if it cannot load, fall back to the previous one."""
    ptr = ctx.slots.pointers()
    errors = []
    for key in (ptr.active, ptr.previous):
        if key and ctx.slots.has(key):
            try:
                model = ctx.runtime.load(ctx.slots.path(key))
                if key != ptr.active:
                    ctx.slots.switch_back(key)
                return model
            except EdgeRuntimeError as exc:
                errors.append(f"{key}: {exc}")
                log.error("cannot load installed model %s: %s", key, exc)
    raise UpdateError("no installed model can be loaded" + (": " + "; ".join(errors) if errors else ""), "no_model")


# ------------------------------------------------------------------------------------------ the chain
def run(attempt: Attempt) -> State:
    """Run ``attempt`` from its start state to committed or failed (the live model always serves)."""
    ctx = attempt.ctx
    try:
        return _chain(attempt)
    except Stopped:
        log.info("agent stopped during %s; the update resumes at the next start", ctx.machine.state.value)
        return ctx.machine.state
    except UpdateError as exc:
        return fail(ctx, str(exc), exc.code, attempt.doc)
    except Exception as exc:  # e.g. an unreadable archive or an I/O error: never leave the machine mid-step
        log.exception("update step failed unexpectedly")
        return fail(ctx, f"unexpected error: {exc}", "internal_error", attempt.doc)
    finally:
        if attempt.new_model is not None and attempt.new_model is not ctx.serving.model:
            ctx.runtime.close(attempt.new_model)
        attempt.new_model = None


def _chain(a: Attempt) -> State:
    ctx, m, doc, state = a.ctx, a.ctx.machine, a.doc, a.start
    if state is State.DOWNLOADING:
        ctx.dwell(State.DOWNLOADING)
        download(a)
        m.fire(Event.DOWNLOADED, f"{doc.size} bytes, sha256 ok", progress=1.0)
        state = State.VERIFYING
    if state is State.VERIFYING:
        ctx.dwell(State.VERIFYING)
        a.new_model = stage(a)
        if ctx.replay is not None:
            ctx.replay.advance(doc.sequence)  # both copies written before the state says verified
        if a.new_model is None:  # the very content that serves (same manifest): nothing to swap
            return m.fire(Event.ALREADY_SERVING, f"{doc.name} {doc.version} already serves this content",
                          accepted_sequence=max(doc.sequence, m.record.accepted_sequence))
        m.fire(Event.VERIFIED, "signature, hashes, profile, version and smoke test ok",
               accepted_sequence=max(doc.sequence, m.record.accepted_sequence))
    if a.new_model is None:  # resumed at staged or shadow: load and smoke-test again
        a.new_model = load_and_smoke(ctx, ctx.slots.path(a.key))
    ctx.dwell(State.STAGED)
    if ctx.settings.shadow_s > 0 and m.state is State.STAGED:
        m.fire(Event.SHADOW_START, f"shadow run for {ctx.settings.shadow_s:g} s")
    if m.state is State.SHADOW:
        ctx.dwell(State.SHADOW)
        rate = shadow_run(a)
        m.fire(Event.SHADOW_DONE, f"shadow agreement {rate:.1%}")
    return activate(a)


def download(a: Attempt) -> Any:
    """Fetch the archive (HTTP(S) first when the document has a URL, else or then MQTT chunks); bounded retries."""
    ctx, doc = a.ctx, a.doc
    if a.installed_key is not None:  # these very bytes are installed: instant local rollback, nothing to fetch
        return None
    ctx.slots.make_room(doc.size)
    last = [0.0]

    def progress(good: int, total: int, stats: dict[str, int]) -> None:
        if good < 0:
            ctx.machine.update(reason=f"chunk failed its checks; re-fetching ({stats['corrupt_chunks']} so far)",
                               code="chunk_corrupt")
        elif good / total - last[0] >= 0.1 or good == total:
            last[0] = good / total
            ctx.machine.update(progress=good / total)

    if doc.url and ctx.settings.allow_http:
        fetched = _http(a)
        if fetched is not None:
            return fetched
    while True:
        try:
            return ChunkDownloader(ctx.link, ctx.topics, ctx.downloads, doc.package_id, doc.sha256, doc.size,
                                   ctx.settings.transfer, progress, ctx.stop_event).run()  # type: ignore[arg-type]
        except TransferError as exc:
            if exc.code == "interrupted" or not ctx.machine.retry(str(exc), exc.code):
                raise UpdateError(str(exc), exc.code) from exc


def _http(a: Attempt) -> Any:
    """The HTTP(S) download, resumed with Range while each try gets further (bounded by ``max_retries``); None:
    it failed (unreachable, refused, no progress) and the reason is reported, so the MQTT chunks come instead."""
    ctx, doc = a.ctx, a.doc
    assert doc.url is not None
    part, tries = part_path(a.archive), 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            return http_download(doc.url, a.archive, doc.sha256, doc.size, ctx.stop_event, token=ctx.http_token,
                                 allow_plain_http=ctx.settings.allow_plain_http)
        except TransferError as exc:
            if exc.code == "interrupted":
                raise UpdateError(str(exc), exc.code) from exc
            tries += 1
            grew = (part.stat().st_size if part.exists() else 0) > before
            if exc.code == "http_failed" and grew and tries <= ctx.settings.max_retries:
                log.info("HTTP download interrupted (%s); resuming with a range request", exc)
                ctx.machine.update(reason=f"{exc}; resuming over HTTP", code="http_resume")
                continue
            log.warning("HTTP download failed (%s); falling back to MQTT chunks", exc)
            code = exc.code if exc.code in ("http_unauthorized", "insecure_url") else "http_fallback"
            ctx.machine.update(reason=f"{exc}; falling back to MQTT chunks", code=code)
            return None


def stage(a: Attempt) -> Any:
    """Verify the archive, install it into the inactive slot, verify the package there, load, smoke-test.

    Returns the loaded candidate, or None when the archive is exactly the content that serves."""
    ctx, doc = a.ctx, a.doc
    key, fresh = a.installed_key, False
    try:
        if key is None:
            check_archive(a.archive, doc)  # size and sha256 against the signed document, before unpacking
            key, fresh = ctx.slots.install_archive(a.archive, doc.sha256)
        if key == ctx.slots.pointers().active:
            ctx.slots.set_candidate(None)
            return None
        check_same_version(ctx, doc, key)
        verify_package(ctx.slots.path(key), ctx.trust, ctx.settings.profile, doc, ctx.installed_version())
        model = load_and_smoke(ctx, ctx.slots.path(key))
    except UpdateError:
        if fresh and key is not None:
            ctx.slots.remove(key)
        ctx.slots.set_candidate(None)
        raise
    finally:
        a.archive.unlink(missing_ok=True)
    ctx.slots.set_candidate(key)
    return model


def check_same_version(ctx: UpdateContext, doc: DesiredModel, key: str) -> None:
    """Refuse other bytes under the version that serves: a version names one content, so a fix needs a new one."""
    active = ctx.slots.pointers().active
    if active is None or not ctx.slots.has(active) or ctx.slots.name_version(active) != (doc.name, doc.version):
        return
    raise VerificationError(
        f"{doc.version} is installed with different content (serving {active}, offered {key}); "
        f"publish the changed package under a new version", "version_conflict")


def load_and_smoke(ctx: UpdateContext, path: Any) -> Any:
    try:
        model = ctx.runtime.load(path)
    except EdgeRuntimeError as exc:
        raise UpdateError(f"new model does not load: {exc}", "load_failed") from exc
    ok, reasons = ctx.runtime.smoke(model, ctx.budget_ms)
    if not ok:
        ctx.runtime.close(model)
        raise SmokeTestError("smoke test failed: " + "; ".join(reasons))
    return model


class Shadow:
    """Runs the candidate on live inputs in its own thread (newest-only queue), counting agreement."""

    def __init__(self, ctx: UpdateContext, model: Any) -> None:
        self.model, self.ctx = model, ctx
        self.q: queue.Queue[tuple[Any, Any]] = queue.Queue(maxsize=1)
        self.total = self.agreed = 0

    def offer(self, frame: Any, live_pred: Any) -> None:
        if frame is None:
            return
        try:
            self.q.put_nowait((frame, live_pred))
        except queue.Full:
            pass

    def run(self, seconds: float) -> float:
        deadline = self.ctx.now() + seconds
        while self.ctx.now() < deadline and not self.ctx.stop_event.is_set():
            try:
                frame, live = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                pred = self.model.predict(frame)
            except EdgeRuntimeError:
                pred = None
            self.total += 1
            self.agreed += int(pred is not None and agree(live, pred))
        return self.agreed / self.total if self.total else 0.0


def shadow_run(a: Attempt) -> float:
    ctx = a.ctx
    shadow = Shadow(ctx, a.new_model)
    ctx.serving.shadow = shadow
    try:
        rate = shadow.run(ctx.settings.shadow_s)
    finally:
        ctx.serving.shadow = None
    if ctx.stop_event.is_set():
        raise Stopped("agent stopped during the shadow run")
    ctx.machine.update(reason=f"shadow: {shadow.agreed}/{shadow.total} agree",
                       shadow={"inputs": shadow.total, "agreed": shadow.agreed, "agreement": round(rate, 4)})
    if shadow.total == 0 or rate < ctx.settings.min_agreement:
        raise UpdateError(f"shadow agreement {rate:.1%} over {shadow.total} inputs is below "
                          f"{ctx.settings.min_agreement:.0%}", "shadow_disagrees")
    return rate


# ------------------------------------------------------------------------------------------ swap and after
def activate(a: Attempt) -> State:
    ctx, m = a.ctx, a.ctx.machine
    m.fire(Event.ACTIVATE, f"swapping in {a.key}")  # persisted before the live model changes
    ctx.dwell(State.ACTIVATING)
    old = ctx.serving.model
    try:
        verdict = _swap_and_watch(a)
    except Stopped:
        raise
    except Exception as exc:  # the swap or the health window broke: the old model serves again, never the new one
        code = exc.code if isinstance(exc, UpdateError) else "internal_error"
        reason = f"{exc}" if isinstance(exc, UpdateError) else f"unexpected error after the swap: {exc}"
        if m.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, reason, code)
        return switch_back(a, old, reason, code)
    if not verdict.healthy:
        m.fire(Event.UNHEALTHY, f"health window failed: {verdict.reason}", "unhealthy", health=verdict.stats)
        return switch_back(a, old, f"health window failed: {verdict.reason}", "unhealthy")
    _prune(ctx)  # before the commit is reported: what the status says is what is on disk
    m.fire(Event.HEALTHY, verdict.reason, health=verdict.stats)
    if old is not None:
        ctx.runtime.close(old)
    return m.state


def _swap_and_watch(a: Attempt) -> Verdict:
    """Swap the candidate in between two inferences, then run the health window; return its verdict."""
    ctx = a.ctx
    ctx.serving.swap(a.new_model)
    ctx.slots.activate(a.key)
    window = HealthWindow(ctx.settings.health, ctx.budget_ms, a.doc.version)
    ctx.serving.health = window
    try:
        ctx.machine.fire(Event.SWAPPED, f"{a.key} serves; health window {ctx.settings.health.window_s:g} s")
        ctx.dwell(State.HEALTH_CHECK)
        while not (verdict := window.verdict()).done:
            if ctx.stop_event.wait(0.1):
                raise Stopped("agent stopped during the health window")
    finally:
        ctx.serving.health = None
    return verdict


def switch_back(a: Attempt, old: Any, reason: str, code: str) -> State:
    """The old model serves again (in this process, between two inferences); the candidate is closed."""
    ctx = a.ctx
    if old is not None:
        ctx.serving.swap(old)
    return _finish_rollback(ctx, reason, code)


def _restore_pointers(ctx: UpdateContext) -> None:
    """Slots back to what served before the attempt, with its rollback target (``previous``) kept."""
    rec = ctx.machine.record
    previous = rec.from_previous if rec.from_previous and ctx.slots.has(rec.from_previous) else None
    ctx.slots.switch_back(rec.from_key, previous)


def _finish_rollback(ctx: UpdateContext, reason: str, code: str) -> State:
    rec = ctx.machine.record
    _restore_pointers(ctx)
    _prune(ctx)  # keep_versions holds after rollbacks too
    failed = (rec.failed_packages + [rec.package_id])[-20:] if rec.package_id else rec.failed_packages
    return ctx.machine.fire(Event.ROLLED_BACK, f"{reason}; serving {rec.from_key} again", code,
                            failed_packages=failed)


def _prune(ctx: UpdateContext) -> None:
    """Hold keep_versions (never the active, previous or candidate slot); a disk error is logged, not fatal."""
    try:
        removed = ctx.slots.prune()
    except OSError as exc:
        log.error("cannot prune old versions: %s", exc)
        return
    if removed:
        log.info("removed old versions %s (keep_versions %d)", ", ".join(removed), ctx.settings.keep_versions)


def fail(ctx: UpdateContext, reason: str, code: str, doc: DesiredModel | None) -> State:
    """End the attempt: from a pre-swap state to failed; after the swap through rolling back."""
    m = ctx.machine
    if m.resting:
        return m.state
    if m.state in LIVE_MODEL_AT_RISK:
        if m.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, reason, code)
        return _finish_rollback(ctx, reason, code)
    rec = m.record
    failed = rec.failed_packages
    if code not in TRANSIENT and rec.package_id:
        failed = (failed + [rec.package_id])[-20:]
    if code in ("hash_mismatch", "chunk_corrupt", "chunk_wrong_size", "oversize") and doc is not None:
        for p in ctx.downloads.glob(f"{doc.package_id}.*"):
            p.unlink(missing_ok=True)
    ctx.slots.set_candidate(None)
    return m.fire(Event.ERROR, reason, code, failed_packages=failed)
