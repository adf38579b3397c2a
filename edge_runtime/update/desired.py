"""The signed desired-model document: which package a device (or a group of devices) should run.

The fleet publishes it retained on ``devices/{id}/desired`` or ``groups/{g}/desired``. The envelope carries the
document as exact JSON text plus an Ed25519 signature over those bytes, so a device trusts nothing the broker (or
anyone who can write to it) did not get signed. ``sequence`` only grows: a replayed old document is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_runtime.errors import SignatureError
from edge_runtime.package.manifest import parse_semver
from edge_runtime.package.signing import OPERATOR, Ed25519PrivateKey, TrustStore, sign_bytes, verify_bytes
from edge_runtime.update.errors import VerificationError

ENVELOPE_SCHEMA = "desired-envelope/1"
MAX_DESIRED_BYTES = 64 * 1024  # a real envelope is well under 2 KiB; anything larger is refused unparsed
DOCUMENT_SCHEMA = "desired/1"


class DesiredModel(BaseModel):
    """What the fleet wants a device or group to run."""

    schema_: Literal["desired/1"] = Field(default=DOCUMENT_SCHEMA, alias="schema", description="Document schema.")
    scope: Literal["device", "group"] = Field(description="Whether `target` names a device or a group.")
    target: str = Field(description="Device id or group name.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model name of the package.")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$", description="Package version (semantic).")
    profile: str = Field(description="Device profile the package was built for.")
    package_id: str = Field(pattern=r"^[0-9a-f]{16,64}$", description="Id of the chunked archive on the broker.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the whole package archive.")
    size: int = Field(gt=0, description="Archive size in bytes.")
    url: str | None = Field(default=None, description="Optional HTTP(S) URL of the same archive.")
    rollback: bool = Field(default=False, description="Explicit rollback: an older version is allowed.")
    sequence: int = Field(ge=1, description="Strictly increasing per publisher (ns since epoch); replays are refused.")
    issued: float = Field(description="Unix time the document was signed.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_semver(v)  # raises ValueError for anything else; name and version become a slot directory name
        return v

    @property
    def version_key(self) -> tuple:  # type: ignore[type-arg]
        return parse_semver(self.version)


@dataclass(frozen=True)
class SignedDesired:
    document: DesiredModel
    signer: str


def sign_desired(doc: DesiredModel, key: Ed25519PrivateKey) -> bytes:
    """Envelope bytes for publishing: exact document text + signature over it."""
    text = json.dumps(doc.model_dump(mode="json", by_alias=True), sort_keys=True)
    sig = json.loads(sign_bytes(key, text.encode()))
    return json.dumps({"schema": ENVELOPE_SCHEMA, "document": text, "signature": sig}).encode()


def new_sequence() -> int:
    return time.time_ns()


def open_desired(payload: bytes, trust: TrustStore) -> SignedDesired:
    """Check the envelope's signature against ``trust`` and parse the document; raise VerificationError.

    The size is checked before parsing, and any JSON (however deep) ends in a VerificationError, never another
    exception: the caller reports every refusal on the update status topic."""
    if len(payload) > MAX_DESIRED_BYTES:
        raise VerificationError(f"desired document of {len(payload)} bytes is over {MAX_DESIRED_BYTES}", "too_large")
    try:
        env = json.loads(payload)
        if env.get("schema") != ENVELOPE_SCHEMA:
            raise VerificationError(f"desired document has unknown schema {str(env.get('schema'))[:64]!r}",
                                    "desired_malformed")
        text, sig = env["document"], env["signature"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise VerificationError("desired document is not a valid envelope", "desired_malformed") from exc
    if not isinstance(text, str) or not isinstance(sig, dict):
        raise VerificationError("desired document envelope has wrong types", "desired_malformed")
    try:
        signer = verify_bytes(text.encode(), json.dumps(sig).encode(), trust, role=OPERATOR)
    except SignatureError as exc:
        code = exc.code if exc.code in ("untrusted_key", "wrong_role") else "signature_invalid"
        raise VerificationError(f"desired document rejected: {exc}", code) from exc
    try:
        return SignedDesired(DesiredModel.model_validate_json(text), signer)
    except (ValidationError, ValueError, RecursionError) as exc:
        msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not a desired document"
        raise VerificationError(f"desired document is invalid: {msg}", "desired_malformed") from exc


def resolve(device_doc: SignedDesired | None, group_docs: list[SignedDesired]) -> SignedDesired | None:
    """A per-device document overrides every group's; among groups the newest sequence wins."""
    if device_doc is not None:
        return device_doc
    return max(group_docs, key=lambda d: d.document.sequence, default=None)


def pin_allows(doc: DesiredModel, pin: str | None) -> bool:
    """With a pinned version the device follows only documents for that version; else it follows the latest."""
    return pin is None or doc.version == pin
