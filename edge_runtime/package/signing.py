"""Ed25519 keys, signatures and the trust store with its two roles.

The signature covers the exact bytes it is made over (a package's ``manifest.json``, a desired document's text);
the manifest covers every other package file by SHA-256. Keys are PEM (private: PKCS#8, mode 0600, optionally
encrypted with a passphrase; public: SubjectPublicKeyInfo). A key id is the first 16 hex digits of the SHA-256 of
the raw 32-byte public key.

Trust has two roles: ``release`` keys sign packages, ``operator`` keys sign desired documents, commands and
policies. A key may hold both. :func:`verify_bytes` refuses a valid signature by a trusted key that lacks the
role asked for, so a leaked build key cannot steer devices and a leaked operator key cannot ship a model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import SignatureError
from edge_runtime.fsutil import atomic_write_bytes

SIGNATURE_ALG = "ed25519"
RELEASE = "release"
OPERATOR = "operator"
ROLES: frozenset[str] = frozenset({RELEASE, OPERATOR})
PASSPHRASE_ENV = "EDGE_RUNTIME_KEY_PASSPHRASE"  # noqa: S105 (the variable name, not a secret)
MAX_SIGNATURE_DOC = 16 * 1024  # a real one is ~200 bytes; anything far larger is refused before parsing
_KEY_ID_MAX = 64


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- private keys and passphrases -----------------------------------------------------------------------------


def read_passphrase(passphrase_file: str | Path | None = None, *, env: bool = True) -> bytes | None:
    """The passphrase from ``passphrase_file`` (first line), else from $EDGE_RUNTIME_KEY_PASSPHRASE, else None."""
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SignatureError(f"cannot read passphrase file {passphrase_file}: {exc}", "key_invalid") from exc
        value = text.splitlines()[0] if text.strip() else ""
    elif env and os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV]
    else:
        return None
    if not value:
        raise SignatureError("the key passphrase is empty", "key_invalid")
    return value.encode("utf-8")


def generate_keypair(out_prefix: str | Path, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, 0600, encrypted when a passphrase is given) and ``PREFIX.pub``.

    Refuses to overwrite an existing key.
    """
    prefix = Path(out_prefix)
    priv_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise SignatureError(f"{p} already exists; refusing to overwrite a key", "key_invalid")
    private = Ed25519PrivateKey.generate()
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    priv_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(priv_path, priv_pem, mode=0o600)
    atomic_write_bytes(pub_path, pub_pem, mode=0o644)
    return priv_path, pub_path


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load a PEM private key; an encrypted one needs ``passphrase``, else $EDGE_RUNTIME_KEY_PASSPHRASE."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc.strerror}", "key_invalid") from exc
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    if encrypted and passphrase is None:
        passphrase = read_passphrase(None)
    if encrypted and passphrase is None:
        raise SignatureError(
            f"{path} is encrypted: give its passphrase with --passphrase-file FILE or ${PASSPHRASE_ENV}", "key_invalid"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise SignatureError(f"wrong passphrase for {path}", "key_invalid") from exc
        raise SignatureError(f"{path} is not a PEM private key", "key_invalid") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key", "key_invalid")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read public key {path}: {exc.strerror}", "key_invalid") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key", "key_invalid") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key", "key_invalid")
    return key


# --- trust ------------------------------------------------------------------------------------------------------


class TrustConfig(BaseModel):
    """Device-config ``trust:`` section: which public keys hold which role."""

    model_config = ConfigDict(extra="forbid")

    release: list[Path] = Field(
        default_factory=list, description="Public keys (.pub) or folders of them whose holders may sign packages."
    )
    operator: list[Path] = Field(
        default_factory=list,
        description="Public keys (.pub) or folders of them whose holders may sign desired documents, commands and "
        "policies.",
    )


def check_trust_fields(trust: TrustConfig | None, trusted_keys: Iterable[object]) -> None:
    """Config check: exactly one of ``trust`` / legacy ``trusted_keys``, and ``trust`` names a release key."""
    legacy = list(trusted_keys)
    if trust is not None and legacy:
        raise ValueError("give either trust (release/operator keys) or the legacy trusted_keys, not both")
    if trust is None and not legacy:
        raise ValueError("no trusted keys: add trust: {release: [KEY.pub], operator: [KEY.pub]}")
    if trust is not None and not trust.release:
        raise ValueError("trust.release is empty: the device could install no package")


def _public_keys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for p in map(Path, paths):
        files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
        for f in files:
            k = load_public_key(f)
            keys[key_id(k)] = k
    return keys


@dataclass(frozen=True)
class TrustStore:
    """The public keys a device (or a verify command) trusts, by key id, and the roles each one holds.

    A key listed in ``keys`` but absent from ``roles`` holds no role and verifies nothing.
    """

    keys: Mapping[str, Ed25519PublicKey]
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kid, held in self.roles.items():
            if kid not in self.keys or not set(held) <= ROLES:
                raise ValueError(f"bad trust entry {kid}: {sorted(held)}")

    @classmethod
    def from_keys(cls, keys: Iterable[Ed25519PublicKey], roles: Iterable[str]) -> TrustStore:
        held = _check_roles(roles)
        by_id = {key_id(k): k for k in keys}
        return cls(by_id, {kid: held for kid in by_id})

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], roles: Iterable[str] = ROLES) -> TrustStore:
        """Each path is a .pub file or a directory of them; every key gets ``roles`` (default: both)."""
        keys = _public_keys(paths)
        held = _check_roles(roles)
        return cls(keys, {kid: held for kid in keys})

    @classmethod
    def from_config(cls, cfg: TrustConfig) -> TrustStore:
        """A store from a ``trust:`` section; a key listed under both roles holds both."""
        return cls.from_paths(cfg.release, [RELEASE]) | cls.from_paths(cfg.operator, [OPERATOR])

    @classmethod
    def load(cls, trust: TrustConfig | None, trusted_keys: Iterable[str | Path] = ()) -> TrustStore:
        """A device's store: its ``trust:`` section, else the legacy single ``trusted_keys`` list (both roles)."""
        if trust is not None:
            return cls.from_config(trust)
        return cls.from_paths(trusted_keys, ROLES)

    def __or__(self, other: TrustStore) -> TrustStore:
        keys = {**self.keys, **other.keys}
        roles = {kid: self.roles_of(kid) | other.roles_of(kid) for kid in keys}
        return TrustStore(keys, roles)

    def roles_of(self, kid: str) -> frozenset[str]:
        return frozenset(self.roles.get(kid, frozenset()))

    def has_role(self, role: str) -> bool:
        """Whether any key holds ``role`` (a device with no release key can install nothing)."""
        return any(role in held for held in self.roles.values())

    def for_role(self, role: str) -> TrustStore:
        """The sub-store of keys holding ``role``."""
        kids = [kid for kid, held in self.roles.items() if role in held]
        return TrustStore({k: self.keys[k] for k in kids}, {k: self.roles[k] for k in kids})

    def __bool__(self) -> bool:
        return bool(self.keys)


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    held = frozenset([roles] if isinstance(roles, str) else roles)
    if not held or not held <= ROLES:
        raise ValueError(f"roles must be a non-empty subset of {sorted(ROLES)}, not {sorted(held)}")
    return held


# --- signatures -------------------------------------------------------------------------------------------------


def sign_bytes(private: Ed25519PrivateKey, data: bytes) -> bytes:
    """Signature document (JSON bytes) over ``data``."""
    doc = {
        "alg": SIGNATURE_ALG,
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(data)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _parse_signature_doc(signature_doc: bytes) -> tuple[str, bytes]:
    if not isinstance(signature_doc, (bytes, bytearray)) or len(signature_doc) > MAX_SIGNATURE_DOC:
        raise SignatureError("signature document is malformed (not bytes, or too large)", "signature_malformed")
    try:
        doc = json.loads(signature_doc)
    except (ValueError, RecursionError) as exc:
        raise SignatureError("signature document is not valid JSON", "signature_malformed") from exc
    if not isinstance(doc, dict):
        raise SignatureError("signature document is not a JSON object", "signature_malformed")
    alg, kid, sig = doc.get("alg"), doc.get("key_id"), doc.get("signature")
    if not all(isinstance(v, str) for v in (alg, kid, sig)):
        raise SignatureError("signature document needs string fields alg, key_id, signature", "signature_malformed")
    assert isinstance(alg, str) and isinstance(kid, str) and isinstance(sig, str)
    if alg != SIGNATURE_ALG:
        raise SignatureError(f"unsupported signature algorithm {alg[:32]!r}", "signature_malformed")
    if not 0 < len(kid) <= _KEY_ID_MAX or not kid.isascii() or not kid.isalnum():
        raise SignatureError("signature document has a malformed key_id", "signature_malformed")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("signature is not valid base64", "signature_malformed") from exc
    return kid, raw


def verify_bytes(data: bytes, signature_doc: bytes, trust: TrustStore, *, role: str) -> str:
    """Check ``signature_doc`` over ``data``: made by a key in ``trust`` that holds ``role``; return its key id.

    Raises :class:`SignatureError` (with a ``code``) for every failure, whatever the document holds.
    """
    if role not in ROLES:
        raise ValueError(f"unknown trust role {role!r}")
    kid, sig = _parse_signature_doc(signature_doc)
    key = trust.keys.get(kid)
    if key is None:
        raise SignatureError(f"signed by untrusted key {kid}", "untrusted_key")
    held = trust.roles_of(kid)
    if role not in held:
        has = ", ".join(sorted(held)) or "no role"
        raise SignatureError(
            f"signed by key {kid}, which is trusted as {has} but not as a {role} key", "wrong_role"
        )
    try:
        key.verify(sig, data)
    except InvalidSignature as exc:
        raise SignatureError(f"signature by key {kid} does not match the signed bytes (tampered?)") from exc
    return kid


def default_key_dir() -> Path:
    return Path(os.environ.get("EDGE_RUNTIME_KEYS", Path.home() / ".config" / "edge-runtime" / "keys"))
