"""What the update steps work with: the device's update context, what serves now, and one update attempt.

The agent owns one :class:`UpdateContext` (settings, state machine, slots, runtime, link) and one
:class:`Serving` (the model that serves, the host that runs it, the health window or shadow run watching it).
Each offer it applies becomes an :class:`Attempt`: the verified desired document, the slot key it installs into,
and where in the chain it starts (a fresh offer at downloading, a resumed one wherever the restart left it).
The steps (``update/steps.py``) take an attempt and never the agent, so nothing reaches into the agent's fields
and ``steps`` does not import ``agent``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.package.signing import TrustStore
from edge_runtime.package.store import read_manifest
from edge_runtime.sync.topics import Topics
from edge_runtime.update.desired import DesiredModel, SignedDesired
from edge_runtime.update.errors import UpdateError
from edge_runtime.update.health import HealthWindow
from edge_runtime.update.machine import UpdateMachine
from edge_runtime.update.runtime import ModelRuntime
from edge_runtime.update.settings import UpdateSettings
from edge_runtime.update.slots import SlotStore
from edge_runtime.update.states import State

log = logging.getLogger(__name__)


class ModelHost(Protocol):
    """Whatever serves inferences (edge_runtime.pipeline.Pipeline): swaps models between two inferences."""

    def swap_model(self, new_model: Any) -> Any: ...


class Link(Protocol):
    def subscribe(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def set_retained(self, topic: str, payload: bytes) -> None: ...


class Watcher(Protocol):
    """Sees every inference of the serving model: a shadow run (``offer``) is one."""

    def offer(self, frame: Any, live_pred: Any) -> None: ...


class Serving:
    """The model that serves now, the host that runs it, and what watches its results (health window, shadow).

    The pipeline's sink and error hook (``UpdateAgent.observe`` / ``observe_error``) read ``health`` and
    ``shadow``; the steps set them for the length of a health window or shadow run.
    """

    def __init__(self) -> None:
        self.host: ModelHost | None = None
        self.model: Any = None
        self.health: HealthWindow | None = None
        self.shadow: Watcher | None = None

    def swap(self, new_model: Any) -> None:
        """Make ``new_model`` serve (between two inferences when a host runs)."""
        if self.host is not None and new_model is not None:
            self.host.swap_model(new_model)
        self.model = new_model

    @property
    def key(self) -> str | None:
        """``name-version`` of the serving model (what status reports; slots are keyed by content)."""
        m = getattr(self.model, "manifest", None)
        return f"{m.name}-{m.version}" if m is not None else None


@dataclass
class UpdateContext:
    """Everything that lives as long as the device: shared by all attempts (built once by the agent)."""

    settings: UpdateSettings
    machine: UpdateMachine
    slots: SlotStore
    runtime: ModelRuntime
    trust: TrustStore
    link: Link
    topics: Topics
    budget_ms: float
    stop_event: threading.Event = field(default_factory=threading.Event)
    serving: Serving = field(default_factory=Serving)
    replay: Any = None  # edge_runtime.sync.replay.SequenceStore: the accepted desired-document sequence
    http_token: str | None = None  # the device's package-download token (settings.http_token_file)

    @property
    def root(self) -> Path:
        return Path(self.settings.state_dir)

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def doc_file(self) -> Path:
        """The desired document being applied, kept so a restart can resume the attempt."""
        return self.root / "desired.json"

    def save_doc(self, doc: DesiredModel) -> None:
        atomic_write_bytes(self.doc_file, doc.model_dump_json(by_alias=True).encode())

    def stored_doc(self) -> DesiredModel | None:
        try:
            return DesiredModel.model_validate_json(self.doc_file.read_bytes())
        except (OSError, ValueError):
            return None

    def dwell(self, state: State) -> None:
        """Extra time in ``state`` (fault-injection tests and demos only)."""
        seconds = self.settings.dwell_s.get(state, 0.0)
        if seconds:
            self.stop_event.wait(seconds)

    def installed_version(self) -> str | None:
        key = self.slots.pointers().active
        if key is None or not self.slots.has(key):
            return None
        return read_manifest(self.slots.path(key))[0].version

    def clean_stale_downloads(self) -> list[Path]:
        """Remove temp files a crash left in downloads/ (progress records, partial HTTP bodies); return them."""
        removed = []
        if self.downloads.is_dir():
            for p in self.downloads.glob(".*.tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError as exc:
                    log.warning("cannot remove stale download file %s: %s", p, exc)
        if removed:
            log.info("removed %d stale temp file(s) from %s", len(removed), self.downloads)
        return removed

    @staticmethod
    def now() -> float:
        return time.monotonic()


@dataclass
class Attempt:
    """One update attempt: the verified desired document, where it installs, and where the chain starts.

    ``signed`` is the verified envelope when the offer came from the broker (None when a restart resumes the
    document kept on disk). ``new_model`` is the candidate once loaded; the steps close it if it never serves.
    """

    ctx: UpdateContext
    doc: DesiredModel
    start: State = State.DOWNLOADING
    signed: SignedDesired | None = None
    new_model: Any = None

    @property
    def installed_key(self) -> str | None:
        """The slot holding the document's archive, if installed (content-addressed: by sha256, never by version)."""
        return self.ctx.slots.key_for_archive(self.doc.sha256)

    @property
    def key(self) -> str:
        """The slot the package was installed into (and serves from); UpdateError if it is gone."""
        key = self.installed_key
        if key is None:
            raise UpdateError(f"the package for {self.doc.name} {self.doc.version} is no longer installed",
                              "staged_missing")
        return key

    @property
    def archive(self) -> Path:
        """Where the downloaded archive lies until it is installed."""
        return self.ctx.downloads / f"{self.doc.package_id}.erpkg"
