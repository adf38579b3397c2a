"""Signed fleet -> device commands (``upload_samples``), verified before anything acts on them.

A command travels in the same signed envelope as a desired document (exact document text + an Ed25519 signature
over it, see :mod:`edge_runtime.update.desired`), with schema ``command-envelope/1`` so a signed document of one
kind can never pass as the other. It must be signed by a key trusted in the *operator* role, name this device,
not be expired (``expires`` at most :data:`MAX_TTL_S` after ``issued``), and carry a ``sequence`` newer than the
last accepted command's (kept in a :class:`~edge_runtime.sync.replay.SequenceStore`, so a replay stays refused
across restarts). Its arguments are bounded (``max`` <= 100 samples). The payload's size is checked before it is
parsed. Every refusal is counted and reported (``command_rejected`` event with a code); nothing else happens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import EdgeRuntimeError, SignatureError
from edge_runtime.package.signing import Ed25519PrivateKey, TrustStore, sign_bytes, verify_bytes
from edge_runtime.sync.replay import ReplayError, SequenceStore
from edge_runtime.sync.topics import Topics

log = logging.getLogger(__name__)
ENVELOPE_SCHEMA = "command-envelope/1"
COMMAND_SCHEMA = "command/1"
MAX_COMMAND_BYTES = 16 * 1024
MAX_TTL_S = 24 * 3600.0
MAX_SAMPLES = 100
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class CommandRejected(EdgeRuntimeError):
    """A command was refused; ``code`` says why (unsigned, untrusted_key, expired, replay, ...)."""

    def __init__(self, message: str, code: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.request_id = code, request_id


class Command(BaseModel):
    """What the fleet asks one device to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["command/1"] = Field(default=COMMAND_SCHEMA, alias="schema", description="Document schema.")
    device: str = Field(pattern=_ID, description="The device this command is for.")
    command: Literal["upload_samples"] = Field(description="What to do.")
    request_id: str = Field(pattern=_ID, description="Echoed in the result event.")
    sequence: int = Field(ge=1, description="Strictly increasing (ns since epoch); an older or equal one is a replay.")
    issued: float = Field(description="Unix time the command was signed.")
    expires: float = Field(description="Unix time after which the command is refused.")
    max: int = Field(default=10, ge=1, le=MAX_SAMPLES, description="upload_samples: newest N stored samples.")
    ids: tuple[str, ...] = Field(default=(), max_length=MAX_SAMPLES, description="upload_samples: these sample ids.")

    @model_validator(mode="after")
    def _window(self) -> Command:
        if not 0 < self.expires - self.issued <= MAX_TTL_S:
            raise ValueError(f"expires must be after issued and at most {MAX_TTL_S:g} s later")
        if any(len(i) > 128 for i in self.ids):
            raise ValueError("sample ids are at most 128 characters")
        return self


def new_command(device: str, command: str, ttl_s: float = 300.0, **args: Any) -> Command:
    now = time.time()
    return Command(device=device, command=command, request_id=f"r{time.time_ns()}",  # type: ignore[arg-type]
                   sequence=time.time_ns(), issued=now, expires=now + ttl_s, **args)


def sign_command(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    """Envelope bytes: exact document text + signature over it (the desired document's envelope shape)."""
    text = json.dumps(cmd.model_dump(mode="json", by_alias=True), sort_keys=True)
    sig = json.loads(sign_bytes(key, text.encode()))
    return json.dumps({"schema": ENVELOPE_SCHEMA, "document": text, "signature": sig}).encode()


def _envelope(payload: bytes) -> tuple[str, dict[str, Any]]:
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected(f"command of {len(payload)} bytes is over {MAX_COMMAND_BYTES}", "too_large")
    try:
        env = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise CommandRejected("command is not JSON", "malformed") from exc
    if not isinstance(env, dict) or env.get("schema") != ENVELOPE_SCHEMA:
        rid = env.get("request_id") if isinstance(env, dict) and isinstance(env.get("request_id"), str) else None
        raise CommandRejected("command is not in a signed envelope (unsigned commands are refused)", "unsigned",
                              rid[:128] if rid else None)
    text, sig = env.get("document"), env.get("signature")
    if not isinstance(text, str) or not isinstance(sig, dict):
        raise CommandRejected("command envelope has wrong types", "malformed")
    return text, sig


def open_command(payload: bytes, trust: TrustStore | None, device: str, now: float | None = None) -> Command:
    """Verify and parse a command for ``device``; raise CommandRejected with a code."""
    text, sig = _envelope(payload)
    if not trust:
        raise CommandRejected("this device trusts no operator key; every command is refused", "no_trusted_keys")
    try:
        verify_bytes(text.encode(), json.dumps(sig).encode(), trust, role="operator")
    except SignatureError as exc:
        code = getattr(exc, "code", "") if getattr(exc, "code", "") in ("untrusted_key", "wrong_role") else \
            "signature_invalid"
        raise CommandRejected(f"command rejected: {exc}", code) from exc
    try:
        cmd = Command.model_validate_json(text)
    except (ValidationError, ValueError) as exc:
        raise CommandRejected(f"command is invalid: {str(exc)[:200]}", "malformed") from exc
    if cmd.device != device:
        raise CommandRejected(f"command is for device {cmd.device}", "wrong_target", cmd.request_id)
    if (now if now is not None else time.time()) > cmd.expires:
        raise CommandRejected(f"command expired at {cmd.expires:.0f}", "expired", cmd.request_id)
    return cmd


Action = Callable[[Command], None]
Report = Callable[[str, dict[str, Any]], None]


class CommandHandler:
    """Subscribes to the device's command topic; verifies, de-duplicates and dispatches each command."""

    def __init__(self, device: str, trust: TrustStore | None, store: SequenceStore | None, report: Report) -> None:
        self.device, self.trust, self.store, self.report = device, trust, store, report
        self.actions: dict[str, Action] = {}
        self.counters = {"accepted": 0, "rejected": 0}
        self.last_rejected: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, command: str, action: Action) -> None:
        self.actions[command] = action

    def attach(self, link: Any, topics: Topics) -> None:
        link.subscribe(topics.commands(self.device), self.on_message)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Network thread: never raises; a refusal is counted and reported, an accepted command runs."""
        try:
            cmd = self.check(payload)
        except CommandRejected as exc:
            self._rejected(exc)
            return
        action = self.actions.get(cmd.command)
        try:
            if action is None:
                raise CommandRejected(f"{cmd.command} is not handled here", "unsupported", cmd.request_id)
            action(cmd)
        except CommandRejected as exc:
            self._rejected(exc)
        except Exception:  # an action bug must not kill the network thread
            log.exception("command %s failed", cmd.command)

    def check(self, payload: bytes) -> Command:
        """Verify ``payload`` and accept its sequence (persisted before anything acts on it)."""
        cmd = open_command(payload, self.trust, self.device)
        if self.store is None:
            raise CommandRejected("no replay state for commands here; refused", "no_replay_state", cmd.request_id)
        with self._lock:
            try:
                self.store.accept(cmd.sequence)
            except ReplayError as exc:
                raise CommandRejected(str(exc), exc.code, cmd.request_id) from exc
        self.counters["accepted"] += 1
        return cmd

    def _rejected(self, exc: CommandRejected) -> None:
        self.counters["rejected"] += 1
        self.last_rejected = {"code": exc.code, "reason": str(exc)}
        log.warning("command rejected (%s): %s", exc.code, exc)
        try:
            self.report("command_rejected", {"code": exc.code, "reason": str(exc)[:300],
                                             "request_id": exc.request_id})
        except Exception:  # reporting must never stop the handler
            log.exception("cannot report a rejected command")
