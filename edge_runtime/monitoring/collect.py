"""The collection policy: which inputs a device keeps for re-training and what may leave it, pushed signed.

The fleet publishes a policy retained on ``{p}/fleet/policy`` (every device) or ``{p}/groups/{g}/policy`` (a
group), in the signed envelope commands use, with schema ``policy-envelope/1`` so no other signed document can
pass for one. A device verifies it with its *operator* keys, checks that it is for a scope the device is in, and
that its ``sequence`` is newer than the last accepted one of that scope (equal: the broker re-sent the retained
copy, ignored). Refusals are reported (``policy_rejected`` events with a code); nothing changes. The last good
envelope of each scope is kept on disk atomically and verified again when loaded, so a device starts offline
with the policy it had. A group's policy overrides the fleet's (the first group in the device's order that has
one). No policy, or ``upload: false``: nothing is uploaded; the device's own config must also allow uploads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import EdgeRuntimeError, SignatureError
from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.package.signing import Ed25519PrivateKey, TrustStore, sign_bytes, verify_bytes
from edge_runtime.sync.replay import ReplayError, SequenceStore
from edge_runtime.sync.topics import Topics, check_segment

log = logging.getLogger(__name__)
ENVELOPE_SCHEMA = "policy-envelope/1"
POLICY_SCHEMA = "collection-policy/1"
MAX_POLICY_BYTES = 32 * 1024
_STRICT = ConfigDict(extra="forbid", frozen=True)


class PolicyRejected(EdgeRuntimeError):
    """A pushed policy was refused; ``code`` says why (unsigned, untrusted_key, replay, wrong_scope, ...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class DriftRule(BaseModel):
    model_config = _STRICT

    seconds: float = Field(default=10.0, ge=0, le=3600, description="Keep inputs this long after a drift event ...")
    frames: int = Field(default=30, ge=0, le=100_000, description="... and at most this many of them.")


class DedupRule(BaseModel):
    model_config = _STRICT

    max_distance: int = Field(default=6, ge=0, le=64, description="pHash Hamming distance at or below which an "
                              "input counts as a near-duplicate of a recent one (0: identical hashes only).")
    window: int = Field(default=256, ge=1, le=10_000, description="Recent kept hashes compared against (bounded).")


class UploadRule(BaseModel):
    model_config = _STRICT

    bytes_per_s: int = Field(default=64 * 1024, ge=1024, description="Upload bandwidth cap (token bucket).")
    bytes_per_day: int = Field(default=256 << 20, ge=1024, description="Upload bytes per UTC day (kept on disk).")
    chunk_bytes: int = Field(default=32 * 1024, ge=1024, le=128 * 1024, description="Bytes per MQTT chunk.")


class Redaction(BaseModel):
    """One redaction step, applied in order before a sample is stored for upload; a failing step drops it."""

    model_config = _STRICT

    kind: Literal["blur_faces", "downscale", "grayscale", "command"] = Field(description="What to do.")
    max_side: int = Field(default=320, ge=16, le=8192, description="downscale: longest side in pixels.")
    min_score: float = Field(default=0.5, gt=0, lt=1, description="blur_faces: face detector score threshold.")
    tile_levels: int = Field(default=1, ge=0, le=3, description="blur_faces: also search overlapping tiles of 1/2, "
                             "1/4 ... of the short side, this many levels (smaller faces, more time; 0: whole frame).")
    argv: tuple[str, ...] = Field(default=(), max_length=32, description="command: the program and its arguments "
                                  "(image on stdin, the redacted image on stdout, PNG or JPEG).")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="command: time limit.")
    max_output_bytes: int = Field(default=16 << 20, ge=1024, le=64 << 20, description="command: output limit.")

    @model_validator(mode="after")
    def _argv(self) -> Redaction:
        if self.kind == "command" and not self.argv:
            raise ValueError("a command redaction needs argv")
        return self


class CollectionPolicy(BaseModel):
    """What a device keeps and uploads (see the module docstring for how it is pushed)."""

    model_config = _STRICT

    upload: bool = Field(default=False, description="Opt-in: samples may leave the device (its config must agree).")
    low_confidence: float | None = Field(default=0.5, ge=0, le=1, description="Keep inputs below this confidence.")
    random_rate: float = Field(default=0.01, ge=0, le=1, description="Also keep this share at random (against "
                               "the bias of confidence-only sampling).")
    on_drift: DriftRule | None = Field(default=None, description="Keep inputs for a while after a drift event.")
    class_quota: int | None = Field(default=None, ge=0, description="Most samples per predicted class and period "
                                    "(unless class_quotas names the class).")
    class_quotas: dict[str, int] = Field(default_factory=dict, max_length=1000,
                                         description="Per predicted class label: most samples per period.")
    quota_period: Literal["hour", "day"] = Field(default="hour", description="Period of the class quotas.")
    min_interval_s: float = Field(default=0.0, ge=0, description="At most one sample per this many seconds.")
    dedup: DedupRule | None = Field(default_factory=DedupRule, description="Near-duplicate suppression (pHash).")
    max_disk_bytes: int = Field(default=50 << 20, ge=1024, description="Disk cap of kept samples.")
    upload_limits: UploadRule = Field(default_factory=UploadRule, description="Bandwidth caps and chunking.")
    redact: tuple[Redaction, ...] = Field(default=(), max_length=8, description="Redaction steps, in order.")

    @model_validator(mode="after")
    def _quotas(self) -> CollectionPolicy:
        if any(v < 0 for v in self.class_quotas.values()):
            raise ValueError("class_quotas are counts (0 or more)")
        return self


class PolicyDocument(BaseModel):
    """The signed document: a policy for a scope, with a sequence for replay protection."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["collection-policy/1"] = Field(default=POLICY_SCHEMA, alias="schema", description="Schema.")
    scope: str = Field(pattern=r"^(fleet|group:[A-Za-z0-9][A-Za-z0-9._-]{0,127})$", description="fleet or group:G.")
    sequence: int = Field(ge=1, description="Strictly increasing per scope (ns since the epoch).")
    issued: float = Field(description="Unix time it was signed.")
    policy: CollectionPolicy = Field(description="The policy.")


def scope_topic(topics: Topics, scope: str) -> str:
    """The retained topic of a scope's policy."""
    if scope == "fleet":
        return topics.fleet_policy()
    kind, _, group = scope.partition(":")
    if kind != "group":
        raise ValueError(f"invalid policy scope {scope!r}: fleet or group:NAME")
    return topics.group_policy(group)


def sign_policy(scope: str, policy: CollectionPolicy, key: Ed25519PrivateKey) -> tuple[PolicyDocument, bytes]:
    doc = PolicyDocument(scope=scope, sequence=time.time_ns(), issued=time.time(), policy=policy)
    text = json.dumps(doc.model_dump(mode="json", by_alias=True), sort_keys=True)
    sig = json.loads(sign_bytes(key, text.encode()))
    return doc, json.dumps({"schema": ENVELOPE_SCHEMA, "document": text, "signature": sig}).encode()


def open_policy(payload: bytes, trust: TrustStore | None) -> PolicyDocument:
    """Verify and parse a policy envelope; raise PolicyRejected with a code."""
    if len(payload) > MAX_POLICY_BYTES:
        raise PolicyRejected(f"policy of {len(payload)} bytes is over {MAX_POLICY_BYTES}", "too_large")
    try:
        env = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PolicyRejected("policy is not JSON", "malformed") from exc
    if not isinstance(env, dict) or env.get("schema") != ENVELOPE_SCHEMA:
        raise PolicyRejected("policy is not in a signed envelope (unsigned policies are refused)", "unsigned")
    text, sig = env.get("document"), env.get("signature")
    if not isinstance(text, str) or not isinstance(sig, dict):
        raise PolicyRejected("policy envelope has wrong types", "malformed")
    if not trust:
        raise PolicyRejected("this device trusts no operator key; every policy is refused", "no_trusted_keys")
    try:
        verify_bytes(text.encode(), json.dumps(sig).encode(), trust, role="operator")
    except SignatureError as exc:
        code = exc.code if exc.code in ("untrusted_key", "wrong_role") else "signature_invalid"
        raise PolicyRejected(f"policy rejected: {exc}", code) from exc
    try:
        return PolicyDocument.model_validate_json(text)
    except (ValidationError, ValueError) as exc:
        raise PolicyRejected(f"policy is invalid: {str(exc)[:200]}", "malformed") from exc


class PolicyStore:
    """The accepted policy of each scope this device is in, persisted; :attr:`current` is the one in force."""

    def __init__(self, directory: Path, groups: tuple[str, ...], trust: TrustStore | None, topics: Topics,
                 on_policy: Callable[[PolicyDocument | None], None] = lambda _d: None,
                 report: Callable[[str, dict[str, Any]], None] = lambda _k, _b: None) -> None:
        self.dir, self.trust, self.topics = Path(directory), trust, topics
        self.on_policy, self.report = on_policy, report
        self.scopes = ("fleet", *(f"group:{check_segment(g, 'group')}" for g in groups))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.docs: dict[str, PolicyDocument] = {}
        self.counters = {"accepted": 0, "rejected": 0, "unchanged": 0}
        self.last_rejected: dict[str, str] = {}
        for scope in self.scopes:
            self._load(scope)
        # the kept (signed) document is a floor for its sequence: deleting the replay files lets nothing older in
        self.replay = {s: SequenceStore(self._path(s, "seq"), floor=self.docs[s].sequence if s in self.docs else 0)
                       for s in self.scopes}

    def _path(self, scope: str, ext: str) -> Path:
        return self.dir / f"policy-{scope.replace(':', '-')}.{ext}"

    def _load(self, scope: str) -> None:
        path = self._path(scope, "json")
        if not path.is_file():
            return
        try:
            doc = open_policy(path.read_bytes(), self.trust)
        except (OSError, PolicyRejected) as exc:
            log.warning("kept policy %s not used: %s", path, exc)
            return
        if doc.scope == scope:
            self.docs[scope] = doc

    @property
    def current(self) -> PolicyDocument | None:
        """A group's policy (the first group with one) over the fleet's; None without any."""
        for scope in (*self.scopes[1:], "fleet"):
            if scope in self.docs:
                return self.docs[scope]
        return None

    def offer(self, topic_scope: str, payload: bytes) -> PolicyDocument | None:
        """A message on a policy topic: the new document when accepted, None when unchanged; PolicyRejected."""
        doc = open_policy(payload, self.trust)
        if doc.scope != topic_scope or doc.scope not in self.scopes:
            raise PolicyRejected(f"policy for {doc.scope} arrived on the {topic_scope} topic", "wrong_scope")
        with self._lock:
            held = self.docs.get(doc.scope)
            if held is not None and held.sequence == doc.sequence:
                self.counters["unchanged"] += 1
                return None  # the retained copy again (reconnect)
            try:
                self.replay[doc.scope].accept(doc.sequence)
            except ReplayError as exc:
                raise PolicyRejected(str(exc), "stale" if exc.code == "replay" else exc.code) from exc
            atomic_write_bytes(self._path(doc.scope, "json"), payload)
            self.docs[doc.scope] = doc
            self.counters["accepted"] += 1
        return doc

    def on_message(self, topic: str, payload: bytes) -> None:
        """Network thread: never raises; an accepted policy goes to ``on_policy``, a refusal to ``report``."""
        scope = next((s for s in self.scopes if scope_topic(self.topics, s) == topic), None)
        if scope is None or not payload:
            return  # an empty retained message: the fleet cleared the topic; the last good policy stays
        try:
            doc = self.offer(scope, payload)
        except PolicyRejected as exc:
            self.counters["rejected"] += 1
            self.last_rejected = {"code": exc.code, "reason": str(exc)[:300]}
            log.warning("collection policy rejected (%s): %s", exc.code, exc)
            self.report("policy_rejected", {"scope": scope, **self.last_rejected})
            return
        except OSError as exc:
            log.error("cannot keep the collection policy: %s", exc)
            return
        if doc is not None:
            cur = self.current
            log.info("collection policy %s (sequence %d) accepted", doc.scope, doc.sequence)
            self.on_policy(cur)
            self.report("policy_applied", {"scope": cur.scope if cur else None,
                                           "sequence": cur.sequence if cur else None,
                                           "upload": bool(cur and cur.policy.upload)})

    def attach(self, link: Any) -> None:
        for scope in self.scopes:
            link.subscribe(scope_topic(link.topics, scope), self.on_message)

    def describe(self) -> dict[str, Any]:
        cur = self.current
        return {"scope": cur.scope if cur else None, "sequence": cur.sequence if cur else None,
                "upload": bool(cur and cur.policy.upload), **self.counters}
