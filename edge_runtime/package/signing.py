"""Ed25519 keys and package signatures.

The signature covers the exact bytes of ``manifest.json``; the manifest covers every other file by SHA-256.
Keys are stored as PEM (private: PKCS#8, mode 0600; public: SubjectPublicKeyInfo). A key id is the first 16 hex
digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.errors import SignatureError
from edge_runtime.fsutil import atomic_write_bytes

SIGNATURE_ALG = "ed25519"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``; refuse to overwrite an existing key."""
    prefix = Path(out_prefix)
    priv_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise SignatureError(f"{p} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    priv_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(priv_path, priv_pem, mode=0o600)
    atomic_write_bytes(pub_path, pub_pem, mode=0o644)
    return priv_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class TrustStore:
    """The public keys a device (or a verify command) trusts, by key id."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def from_paths(cls, paths: list[str | Path]) -> TrustStore:
        """Each path is a .pub file or a directory of them."""
        keys: dict[str, Ed25519PublicKey] = {}
        for p in map(Path, paths):
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            for f in files:
                k = load_public_key(f)
                keys[key_id(k)] = k
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)


def sign_bytes(private: Ed25519PrivateKey, data: bytes) -> bytes:
    """Signature document (JSON bytes) over ``data``."""
    doc = {
        "alg": SIGNATURE_ALG,
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(data)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def verify_bytes(data: bytes, signature_doc: bytes, trust: TrustStore) -> str:
    """Check ``signature_doc`` over ``data`` against ``trust``; return the signer's key id."""
    try:
        doc = json.loads(signature_doc)
        alg, kid, sig = doc["alg"], doc["key_id"], base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError("signature file is malformed") from exc
    if alg != SIGNATURE_ALG:
        raise SignatureError(f"unsupported signature algorithm {alg!r}")
    key = trust.keys.get(kid)
    if key is None:
        raise SignatureError(f"package is signed by untrusted key {kid}")
    try:
        key.verify(sig, data)
    except InvalidSignature as exc:
        raise SignatureError(f"signature by key {kid} does not match the manifest (tampered?)") from exc
    return str(kid)


def default_key_dir() -> Path:
    return Path(os.environ.get("EDGE_RUNTIME_KEYS", Path.home() / ".config" / "edge-runtime" / "keys"))
