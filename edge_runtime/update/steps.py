"""The steps of one update, each a plain function of the agent; ``run_steps`` chains them from any state.

Kept apart from agent.py so each step reads on its own: what it does, which event it fires, what it persists.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.update.desired import DesiredModel
from edge_runtime.update.errors import SmokeTestError, TransferError, UpdateError, VerificationError
from edge_runtime.update.health import HealthWindow
from edge_runtime.update.http_transfer import http_download
from edge_runtime.update.states import LIVE_MODEL_AT_RISK, TRANSITIONS, Event, State
from edge_runtime.update.transfer import ChunkDownloader
from edge_runtime.update.verify import check_archive, verify_package

if TYPE_CHECKING:
    from edge_runtime.update.agent import UpdateAgent

log = logging.getLogger(__name__)
TRANSIENT = {"stalled", "package_missing", "interrupted", "io_error", "http_failed"}


# ------------------------------------------------------------------------------------------ boot
def recover(agent: UpdateAgent) -> None:
    """Bring a record left mid-update back to a consistent state (old or new model, never a broken one)."""
    m, rec = agent.machine, agent.machine.record
    if m.resting:
        return
    doc = _stored_doc(agent)
    if rec.state in LIVE_MODEL_AT_RISK:
        # The process died while the new model was (maybe) serving: it is not trusted yet, so switch back.
        if rec.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, f"device restarted during {rec.state.value}; switching back", "restarted")
        _finish_rollback(agent, "device restarted before the new model was committed", "restarted")
        return
    if doc is None or rec.recoveries >= agent.s.max_recoveries:
        fail(agent, f"update interrupted {rec.recoveries + 1} times; giving up", "recoveries_exhausted", doc)
        return
    m.update(recoveries=rec.recoveries + 1)
    agent._resume = (rec.state, doc)


def resume_pending(agent: UpdateAgent) -> None:
    """On the worker thread, before any offer: continue an update that a restart interrupted before the swap."""
    pending = agent._resume
    if pending is not None:
        agent._resume = None
        state, doc = pending
        if (state, Event.RETRY) in TRANSITIONS:
            agent.machine.fire(Event.RETRY, f"resuming {state.value} after a restart", "resumed")
        agent.run_from(state, doc)


def _stored_doc(agent: UpdateAgent) -> DesiredModel | None:
    try:
        return DesiredModel.model_validate_json(agent._doc_file.read_bytes())
    except (OSError, ValueError):
        return None


def load_active(agent: UpdateAgent) -> Any:
    """Load the active slot's model; if it cannot load, fall back to the previous one."""
    ptr = agent.slots.pointers()
    errors = []
    for key in (ptr.active, ptr.previous):
        if key and agent.slots.has(key):
            try:
                model = agent.runtime.load(agent.slots.path(key))
                if key != ptr.active:
                    agent.slots.switch_back(key)
                return model
            except EdgeRuntimeError as exc:
                errors.append(f"{key}: {exc}")
                log.error("cannot load installed model %s: %s", key, exc)
    raise UpdateError("no installed model can be loaded" + (": " + "; ".join(errors) if errors else ""), "no_model")


# ------------------------------------------------------------------------------------------ the chain
def run_steps(agent: UpdateAgent, state: State, doc: DesiredModel) -> State:
    new_model = None
    try:
        if state is State.DOWNLOADING:
            agent.dwell(State.DOWNLOADING)
            download(agent, doc)
            agent.machine.fire(Event.DOWNLOADED, f"{doc.size} bytes, sha256 ok", progress=1.0)
            state = State.VERIFYING
        if state is State.VERIFYING:
            agent.dwell(State.VERIFYING)
            new_model = stage(agent, doc, archive_for(agent, doc))
            if new_model is None:  # the very content that serves (same manifest): nothing to swap
                agent.replay.advance(doc.sequence)
                agent.machine.fire(Event.ALREADY_SERVING, f"{doc.name} {doc.version} already serves this content",
                                   accepted_sequence=max(doc.sequence, agent.machine.record.accepted_sequence))
                return agent.machine.state
            agent.replay.advance(doc.sequence)  # both copies written before the state says verified
            agent.machine.fire(Event.VERIFIED, "signature, hashes, profile, version and smoke test ok",
                               accepted_sequence=max(doc.sequence, agent.machine.record.accepted_sequence))
            state = State.STAGED
        if new_model is None:  # resumed at staged or shadow: load and smoke-test again
            new_model = load_and_smoke(agent, agent.slots.path(slot_for(agent, doc)))
        agent.dwell(State.STAGED)
        if agent.s.shadow_s > 0 and agent.machine.state is State.STAGED:
            agent.machine.fire(Event.SHADOW_START, f"shadow run for {agent.s.shadow_s:g} s")
        if agent.machine.state is State.SHADOW:
            agent.dwell(State.SHADOW)
            rate = shadow_run(agent, new_model)
            agent.machine.fire(Event.SHADOW_DONE, f"shadow agreement {rate:.1%}")
        return activate(agent, doc, new_model)
    except BaseException:
        if new_model is not None and new_model is not agent.live:
            agent.runtime.close(new_model)
        raise


def archive_for(agent: UpdateAgent, doc: DesiredModel) -> Any:
    return agent.downloads / f"{doc.package_id}.erpkg"


def slot_for(agent: UpdateAgent, doc: DesiredModel) -> str:
    """The installed slot holding the document's archive (content-addressed: by its sha256, never by version)."""
    key = agent.slots.key_for_archive(doc.sha256)
    if key is None:
        raise UpdateError(f"the package for {doc.name} {doc.version} is no longer installed", "staged_missing")
    return key


def download(agent: UpdateAgent, doc: DesiredModel) -> Any:
    """Fetch the archive (MQTT chunks, or HTTP when the document has a URL); retries are bounded."""
    if agent.slots.key_for_archive(doc.sha256):  # these very bytes are installed: instant local rollback
        return None
    agent.slots.make_room(doc.size)
    last = [0.0]

    def progress(good: int, total: int, stats: dict[str, int]) -> None:
        if good < 0:
            agent.machine.update(reason=f"chunk failed its hash; re-fetching ({stats['corrupt_chunks']} so far)",
                                 code="chunk_corrupt")
        elif good / total - last[0] >= 0.1 or good == total:
            last[0] = good / total
            agent.machine.update(progress=good / total)

    if doc.url and agent.s.allow_http:
        try:
            return http_download(doc.url, archive_for(agent, doc), doc.sha256, doc.size, agent.stop_event)
        except TransferError as exc:  # any HTTP failure: the same signed bytes come over MQTT instead
            if exc.code == "interrupted":
                raise UpdateError(str(exc), exc.code) from exc
            log.warning("HTTP download failed (%s); falling back to MQTT chunks", exc)
            agent.machine.update(reason=f"{exc}; falling back to MQTT chunks", code="http_fallback")
    while True:
        try:
            return ChunkDownloader(agent.link, agent.topics, agent.downloads, doc.package_id, doc.sha256, doc.size,
                                   agent.s.transfer, progress, agent.stop_event).run()  # type: ignore[arg-type]
        except TransferError as exc:
            if exc.code == "interrupted" or not agent.machine.retry(str(exc), exc.code):
                raise UpdateError(str(exc), exc.code) from exc


def stage(agent: UpdateAgent, doc: DesiredModel, archive: Any) -> Any:
    """Verify the archive, install it into the inactive slot, verify the package there, load, smoke-test.

    Returns the loaded candidate, or None when the archive is exactly the content that serves."""
    key = agent.slots.key_for_archive(doc.sha256)
    fresh = False
    if key is None:
        check_archive(archive, doc)  # size and sha256 against the signed document, before unpacking
        key, fresh = agent.slots.install_archive(archive, doc.sha256)
    try:
        if key == agent.slots.pointers().active:
            agent.slots.set_candidate(None)
            return None
        check_same_version(agent, doc, key)
        verify_package(agent.slots.path(key), agent.trust, agent.s.profile, doc, agent.installed_version())
        model = load_and_smoke(agent, agent.slots.path(key))
    except UpdateError:
        if fresh:
            agent.slots.remove(key)
        agent.slots.set_candidate(None)
        raise
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
    agent.slots.set_candidate(key)
    return model


def check_same_version(agent: UpdateAgent, doc: DesiredModel, key: str) -> None:
    """Refuse other bytes under the version that serves: a version names one content, so a fix needs a new one."""
    active = agent.slots.pointers().active
    if active is None or not agent.slots.has(active) or agent.slots.name_version(active) != (doc.name, doc.version):
        return
    raise VerificationError(
        f"{doc.version} is installed with different content (serving {active}, offered {key}); "
        f"publish the changed package under a new version", "version_conflict")


def load_and_smoke(agent: UpdateAgent, path: Any) -> Any:
    try:
        model = agent.runtime.load(path)
    except EdgeRuntimeError as exc:
        raise UpdateError(f"new model does not load: {exc}", "load_failed") from exc
    ok, reasons = agent.runtime.smoke(model, agent.budget_ms)
    if not ok:
        agent.runtime.close(model)
        raise SmokeTestError("smoke test failed: " + "; ".join(reasons))
    return model


class Shadow:
    """Runs the candidate on live inputs in its own thread (newest-only queue), counting agreement."""

    def __init__(self, agent: UpdateAgent, model: Any) -> None:
        self.model, self.agent = model, agent
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
        deadline = self.agent.now() + seconds
        while self.agent.now() < deadline and not self.agent.stop_event.is_set():
            try:
                frame, live = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                pred = self.model.predict(frame)
            except EdgeRuntimeError:
                pred = None
            self.total += 1
            self.agreed += int(pred is not None and self.agent.agree(live, pred))
        return self.agreed / self.total if self.total else 0.0


def shadow_run(agent: UpdateAgent, model: Any) -> float:
    shadow = Shadow(agent, model)
    agent._shadow = shadow
    try:
        rate = shadow.run(agent.s.shadow_s)
    finally:
        agent._shadow = None
    agent.machine.update(reason=f"shadow: {shadow.agreed}/{shadow.total} agree",
                         shadow={"inputs": shadow.total, "agreed": shadow.agreed, "agreement": round(rate, 4)})
    if shadow.total == 0 or rate < agent.s.min_agreement:
        raise UpdateError(f"shadow agreement {rate:.1%} over {shadow.total} inputs is below "
                          f"{agent.s.min_agreement:.0%}", "shadow_disagrees")
    return rate


# ------------------------------------------------------------------------------------------ swap and after
def activate(agent: UpdateAgent, doc: DesiredModel, new_model: Any) -> State:
    m = agent.machine
    key = slot_for(agent, doc)
    m.fire(Event.ACTIVATE, f"swapping in {key}")  # persisted before the live model changes
    agent.dwell(State.ACTIVATING)
    old = agent.live
    try:
        verdict = _swap_and_watch(agent, key, new_model)
    except Exception as exc:  # the swap or the health window broke: the old model serves again, never the new one
        code = exc.code if isinstance(exc, UpdateError) else "internal_error"
        reason = f"{exc}" if isinstance(exc, UpdateError) else f"unexpected error after the swap: {exc}"
        if m.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, reason, code)
        return switch_back(agent, old, new_model, reason, code)
    if not verdict.healthy:
        m.fire(Event.UNHEALTHY, f"health window failed: {verdict.reason}", "unhealthy", health=verdict.stats)
        return switch_back(agent, old, new_model, f"health window failed: {verdict.reason}", "unhealthy")
    m.fire(Event.HEALTHY, verdict.reason, health=verdict.stats)
    agent.slots.prune()
    if old is not None:
        agent.runtime.close(old)
    return m.state


def _swap_and_watch(agent: UpdateAgent, key: str, new_model: Any) -> Any:
    """Swap ``new_model`` in between two inferences, then run the health window; return its verdict."""
    if agent.host is not None:
        agent.host.swap_model(new_model)
    agent.live = new_model
    agent.slots.activate(key)
    window = HealthWindow(agent.s.health, agent.budget_ms)
    base_errors = agent.error_count()
    agent._health = window
    agent.machine.fire(Event.SWAPPED, f"{key} serves; health window {agent.s.health.window_s:g} s")
    agent.dwell(State.HEALTH_CHECK)
    try:
        while not (verdict := window.verdict()).done:
            window.errors = max(window.errors, agent.error_count() - base_errors)
            if agent.stop_event.wait(0.1):
                raise UpdateError("agent stopped during the health window", "interrupted")
    finally:
        agent._health = None
    return verdict


def switch_back(agent: UpdateAgent, old: Any, new_model: Any, reason: str, code: str) -> State:
    if agent.host is not None and old is not None:
        agent.host.swap_model(old)
    agent.live = old
    agent.runtime.close(new_model)
    return _finish_rollback(agent, reason, code)


def _finish_rollback(agent: UpdateAgent, reason: str, code: str) -> State:
    rec = agent.machine.record
    agent.slots.switch_back(rec.from_key)
    failed = (rec.failed_packages + [rec.package_id])[-20:] if rec.package_id else rec.failed_packages
    return agent.machine.fire(Event.ROLLED_BACK, f"{reason}; serving {rec.from_key} again", code,
                              failed_packages=failed)


def fail(agent: UpdateAgent, reason: str, code: str, doc: DesiredModel | None) -> State:
    """End the attempt: from a pre-swap state to failed; after the swap through rolling back."""
    m = agent.machine
    if m.resting:
        return m.state
    if m.state in LIVE_MODEL_AT_RISK:
        if m.state is not State.ROLLING_BACK:
            m.fire(Event.ERROR, reason, code)
        return _finish_rollback(agent, reason, code)
    rec = m.record
    failed = rec.failed_packages
    if code not in TRANSIENT and rec.package_id:
        failed = (failed + [rec.package_id])[-20:]
    if code in ("hash_mismatch", "chunk_corrupt", "chunk_wrong_size", "oversize") and doc is not None:
        for p in agent.downloads.glob(f"{doc.package_id}.*"):
            p.unlink(missing_ok=True)
    agent.slots.set_candidate(None)
    return m.fire(Event.ERROR, reason, code, failed_packages=failed)
