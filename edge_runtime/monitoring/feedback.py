"""Signed feedback labels over MQTT on ``{p}/devices/{device}/feedback``, checked as commands are.

The envelope is the desired document's: the exact document text and an Ed25519 signature over it, by a key the
device trusts in the ``operator`` role. The document names the device, carries a ``sequence`` that must grow
and an ``issued`` time that must not predate this run (a label names a sample index of the current run, so a
replayed message from an earlier run would mislabel new predictions). Labels then go to Monitor.feedback.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import SignatureError
from edge_runtime.monitoring.field import FeedbackError
from edge_runtime.package.signing import OPERATOR, Ed25519PrivateKey, TrustStore, sign_bytes, verify_bytes

if TYPE_CHECKING:
    from edge_runtime.monitoring.monitor import Monitor

log = logging.getLogger(__name__)
ENVELOPE_SCHEMA = "feedback-envelope/1"
DOCUMENT_SCHEMA = "feedback/1"


def sign_feedback(device: str, labels: list[dict[str, Any]], key: Ed25519PrivateKey,
                  sequence: int | None = None, issued: float | None = None) -> bytes:
    """The envelope bytes an operator publishes (fleet side and tests)."""
    doc = {"schema": DOCUMENT_SCHEMA, "device": device, "sequence": sequence or time.time_ns(),
           "issued": time.time() if issued is None else issued, "labels": labels}
    text = json.dumps(doc, sort_keys=True)
    return json.dumps({"schema": ENVELOPE_SCHEMA, "document": text,
                       "signature": json.loads(sign_bytes(key, text.encode()))}).encode()


def open_feedback(payload: bytes, trust: TrustStore, device: str) -> dict[str, Any]:
    """The verified document; FeedbackError (one line) for anything unsigned, untrusted, malformed or not ours."""
    try:
        env = json.loads(payload)
        text, sig = env["document"], env["signature"]
        if env.get("schema") != ENVELOPE_SCHEMA or not isinstance(text, str) or not isinstance(sig, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise FeedbackError("feedback is not a signed feedback envelope") from exc
    try:
        verify_bytes(text.encode(), json.dumps(sig).encode(), trust, role=OPERATOR)
    except SignatureError as exc:
        raise FeedbackError(f"feedback rejected: {exc}") from exc
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("schema") != DOCUMENT_SCHEMA or doc.get("device") != device:
        raise FeedbackError("feedback document is not feedback/1 for this device")
    if not isinstance(doc.get("sequence"), int) or not isinstance(doc.get("issued"), int | float):
        raise FeedbackError("feedback document needs an integer sequence and an issued time")
    return doc


class FeedbackSubscriber:
    """Subscribes the device's feedback topic and hands verified labels to the monitor (replays refused)."""

    def __init__(self, monitor: Monitor, trust: TrustStore, device: str) -> None:
        self.monitor, self.trust, self.device = monitor, trust, device
        self.started = time.time()
        self.last_sequence = 0
        self.counts = {"accepted": 0, "rejected": 0}
        self.last_error: str | None = None

    def __call__(self, topic: str, payload: bytes) -> None:
        try:
            doc = open_feedback(payload, self.trust, self.device)
            if doc["sequence"] <= self.last_sequence:
                raise FeedbackError(f"feedback sequence {doc['sequence']} is not newer than {self.last_sequence}")
            if doc["issued"] < self.started - 5.0:
                raise FeedbackError("feedback issued before this run started (its ids name another run's samples)")
            self.last_sequence = doc["sequence"]
            result = self.monitor.feedback({"labels": doc.get("labels")})
        except FeedbackError as exc:
            self.counts["rejected"] += 1
            self.last_error = str(exc)
            log.warning("feedback on %s refused: %s", topic, exc)
            return
        self.counts["accepted"] += 1
        log.info("feedback: %s", result)
