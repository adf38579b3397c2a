"""Trust roles, signature documents of every odd shape, and passphrase-encrypted keys."""

from __future__ import annotations

import json

import pytest

from edge_runtime.errors import SignatureError
from edge_runtime.package.signing import (
    OPERATOR,
    PASSPHRASE_ENV,
    RELEASE,
    TrustConfig,
    TrustStore,
    check_trust_fields,
    generate_keypair,
    load_private_key,
    read_passphrase,
    sign_bytes,
    verify_bytes,
)


@pytest.fixture()
def pair(tmp_path):
    """Two key pairs: one for releases, one for operators."""
    rel_priv, rel_pub = generate_keypair(tmp_path / "release")
    op_priv, op_pub = generate_keypair(tmp_path / "operator")
    return {"rel": load_private_key(rel_priv), "rel_pub": rel_pub, "op": load_private_key(op_priv), "op_pub": op_pub}


def _store(pair) -> TrustStore:
    return TrustStore.from_config(TrustConfig(release=[pair["rel_pub"]], operator=[pair["op_pub"]]))


def test_each_role_verifies_only_its_own_signatures(pair) -> None:
    trust = _store(pair)
    data = b"manifest bytes"
    assert verify_bytes(data, sign_bytes(pair["rel"], data), trust, role=RELEASE)
    assert verify_bytes(data, sign_bytes(pair["op"], data), trust, role=OPERATOR)
    with pytest.raises(SignatureError, match="not as a release key") as exc:
        verify_bytes(data, sign_bytes(pair["op"], data), trust, role=RELEASE)
    assert exc.value.code == "wrong_role"
    with pytest.raises(SignatureError, match="not as a operator key") as exc:
        verify_bytes(data, sign_bytes(pair["rel"], data), trust, role=OPERATOR)
    assert exc.value.code == "wrong_role"


def test_a_key_listed_under_both_roles_holds_both(pair) -> None:
    trust = TrustStore.from_config(TrustConfig(release=[pair["rel_pub"]], operator=[pair["rel_pub"]]))
    for role in (RELEASE, OPERATOR):
        assert verify_bytes(b"x", sign_bytes(pair["rel"], b"x"), trust, role=role)
    assert trust.for_role(OPERATOR).keys.keys() == trust.keys.keys()


def test_legacy_single_list_means_both_roles(pair) -> None:
    trust = TrustStore.load(None, [pair["rel_pub"]])
    assert trust.has_role(RELEASE) and trust.has_role(OPERATOR)
    assert verify_bytes(b"x", sign_bytes(pair["rel"], b"x"), trust, role=OPERATOR)


def test_a_key_without_roles_verifies_nothing(pair) -> None:
    kid = verify_bytes(b"x", sign_bytes(pair["rel"], b"x"), _store(pair), role=RELEASE)
    bare = TrustStore({kid: pair["rel"].public_key()})
    with pytest.raises(SignatureError, match="no role"):
        verify_bytes(b"x", sign_bytes(pair["rel"], b"x"), bare, role=RELEASE)


def test_tampered_data_and_untrusted_key(pair, tmp_path) -> None:
    trust = _store(pair)
    with pytest.raises(SignatureError) as exc:
        verify_bytes(b"y", sign_bytes(pair["rel"], b"x"), trust, role=RELEASE)
    assert exc.value.code == "signature_invalid"
    rogue = load_private_key(generate_keypair(tmp_path / "rogue")[0])
    with pytest.raises(SignatureError, match="untrusted key") as exc:
        verify_bytes(b"x", sign_bytes(rogue, b"x"), trust, role=RELEASE)
    assert exc.value.code == "untrusted_key"


GOOD = {"alg": "ed25519", "key_id": "0123456789abcdef", "signature": "AAAA"}
ODD_DOCS = [
    b"",
    b"not json",
    b"[" * 100_000,
    b"[]",
    b'"a string"',
    b"null",
    b"1e999",
    json.dumps({**GOOD, "key_id": ["a", "list"]}).encode(),
    json.dumps({**GOOD, "key_id": {"a": "dict"}}).encode(),
    json.dumps({**GOOD, "key_id": 12}).encode(),
    json.dumps({**GOOD, "key_id": None}).encode(),
    json.dumps({**GOOD, "key_id": "x" * 10_000}).encode(),
    json.dumps({**GOOD, "key_id": "../../etc"}).encode(),
    json.dumps({**GOOD, "alg": ["ed25519"]}).encode(),
    json.dumps({**GOOD, "alg": "rsa"}).encode(),
    json.dumps({**GOOD, "signature": 5}).encode(),
    json.dumps({**GOOD, "signature": "not base64!"}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "signature"}).encode(),
    b" " * 20_000 + json.dumps(GOOD).encode(),
]


@pytest.mark.parametrize("doc", ODD_DOCS, ids=range(len(ODD_DOCS)))
def test_odd_signature_documents_are_signature_errors(pair, doc: bytes) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_bytes(b"x", doc, _store(pair), role=RELEASE)
    assert exc.value.code in ("signature_malformed", "untrusted_key")


def test_unknown_role_is_a_programming_error(pair) -> None:
    with pytest.raises(ValueError):
        verify_bytes(b"x", sign_bytes(pair["rel"], b"x"), _store(pair), role="admin")


def test_trust_config_checks() -> None:
    with pytest.raises(ValueError, match="not both"):
        check_trust_fields(TrustConfig(release=["a.pub"]), ["b.pub"])
    with pytest.raises(ValueError, match="no trusted keys"):
        check_trust_fields(None, [])
    with pytest.raises(ValueError, match="release is empty"):
        check_trust_fields(TrustConfig(operator=["a.pub"]), [])


def test_encrypted_private_key_needs_the_right_passphrase(tmp_path, monkeypatch) -> None:
    priv, _ = generate_keypair(tmp_path / "k", passphrase=b"correct horse")
    assert b"ENCRYPTED" in priv.read_bytes() and oct(priv.stat().st_mode & 0o777) == "0o600"
    assert load_private_key(priv, b"correct horse")
    with pytest.raises(SignatureError, match="wrong passphrase"):
        load_private_key(priv, b"wrong")
    with pytest.raises(SignatureError, match="is encrypted"):
        load_private_key(priv)
    pf = tmp_path / "pass.txt"
    pf.write_text("correct horse\n")
    assert read_passphrase(pf) == b"correct horse"
    monkeypatch.setenv(PASSPHRASE_ENV, "from env")
    assert read_passphrase(None) == b"from env"
    pf.write_text("")
    with pytest.raises(SignatureError, match="empty"):
        read_passphrase(pf)
    with pytest.raises(SignatureError, match="cannot read passphrase"):
        read_passphrase(tmp_path / "missing")


def test_every_signing_command_takes_the_passphrase(tmp_path, capsys, monkeypatch) -> None:
    """keygen, sign, pack, convert and fleet: the right passphrase signs, a wrong one is one line and exit 2."""
    from edge_runtime.cli import main
    from tests.package.helpers import make_package

    good, bad = tmp_path / "pass.txt", tmp_path / "wrong.txt"
    good.write_text("s3cret phrase\n")
    bad.write_text("guess\n")
    key = tmp_path / "keys" / "rel"
    assert main(["keygen", "--out", str(key), "--passphrase-file", str(good)]) == 0
    assert "encrypted with the passphrase" in capsys.readouterr().out
    pkg = make_package(tmp_path / "p").root
    assert main(["sign", str(pkg), "--key", f"{key}.key"]) == 2
    assert "is encrypted: give its passphrase" in capsys.readouterr().err
    refused = [
        ["sign", str(pkg), "--key", f"{key}.key", "--passphrase-file", str(bad)],
        ["pack", str(pkg), "--sign-key", f"{key}.key", "--passphrase-file", str(bad)],
        ["convert", str(tmp_path / "m.onnx"), "--profile", "x86-laptop", "--calibration", str(tmp_path),
         "--out", str(tmp_path / "o"), "--sign-key", f"{key}.key", "--passphrase-file", str(bad)],
        ["fleet", "--passphrase-file", str(bad), "publish", str(pkg), "--target", "cam-1", "--key", f"{key}.key"],
    ]  # fmt: skip
    for argv in refused:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"edge-runtime: error: wrong passphrase for {key}.key"], (argv, err)
    assert main(["sign", str(pkg), "--key", f"{key}.key", "--passphrase-file", str(good)]) == 0
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret phrase")
    assert main(["pack", str(pkg), "--sign-key", f"{key}.key", "--out", str(tmp_path / "p.erpkg")]) == 0
    assert main(["verify", str(tmp_path / "p.erpkg"), "--trust", f"{key}.pub"]) == 0


def test_the_sample_agent_config_gives_each_role_its_keys() -> None:
    from pathlib import Path

    from edge_runtime.commands.agent import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "deploy" / "agent.example.yaml")
    assert cfg.trust is not None and cfg.trust.release and cfg.trust.operator and not cfg.trusted_keys
