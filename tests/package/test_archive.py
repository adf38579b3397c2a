"""Given a hostile package archive, when it is loaded (API, `verify`, `run`), then it is refused before anything
is unpacked or used, with one clear reason, and nothing it carried is left on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.errors import PackageError, SignatureError
from edge_runtime.package import (
    OPERATOR,
    RELEASE,
    TrustConfig,
    TrustStore,
    generate_keypair,
    load_package,
    load_private_key,
    pack_archive,
)
from edge_runtime.package.archive import ArchiveLimits, extract_verified, read_archive_head
from edge_runtime.package.cache import packages_dir
from tests.package import hostile
from tests.package.helpers import make_package

CLI = [sys.executable, "-m", "edge_runtime.cli"]

# attack -> what the one-line refusal says
REFUSALS = {
    "gzip_bomb": "gzip-compressed archive",
    "gnu_sparse": "sparse file member",
    "pax_sparse": "pax header member",
    "huge_declared_member": "model.onnx is 7516192768 bytes, the manifest says",
    "extra_member": "member its manifest does not list: 'evil.py'",
    "symlink": "symlink member",
    "hardlink": "hard link member",
    "directory": "directory member",
    "path_traversal": "unsafe member name '../escape.txt'",
    "absolute_path": "unsafe member name '/tmp/escape.txt'",
    "duplicate_member": "'model.onnx' appears twice",
    "tampered_file": "model.onnx does not match its sha256",
    "resized_file": "the manifest says",
    "missing_file": "lacks listed file(s) golden.npz",
    "manifest_not_first": "first member must be manifest.json",
    "truncated": "truncated",
    "many_members": "member its manifest does not list: 'm0'",
    "not_a_tar": "not a POSIX ustar archive",
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_RUNTIME_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A signed package directory, its archive, and the release key's public half."""
    d = tmp_path_factory.mktemp("signed")
    priv, pub = generate_keypair(d / "release")
    pkg = make_package(d / "pkg", sign_key=load_private_key(priv))
    return pkg.root, pack_archive(pkg.root, d / "pkg.erpkg"), pub


@pytest.fixture(scope="module")
def archives(signed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hostile")
    return {name: build() for name, build in hostile.attacks(signed[0], out, big=64 << 20).items()}


def _trust(pub: Path) -> TrustStore:
    return TrustStore.from_paths([pub], [RELEASE])


def _leftovers(cache: Path) -> list[str]:
    pk = cache / "packages"
    return sorted(p.name for p in pk.iterdir()) if pk.is_dir() else []


def test_the_good_archive_loads(signed) -> None:
    _, archive, pub = signed
    pkg = load_package(archive, _trust(pub))
    assert pkg.signer and pkg.root.parent == packages_dir() and oct(pkg.root.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("attack", sorted(REFUSALS))
def test_hostile_archive_is_refused_and_leaves_nothing(attack: str, archives, signed, private_cache, tmp_path) -> None:
    _, _, pub = signed
    with pytest.raises(PackageError, match=REFUSALS[attack].replace("(", r"\(").replace(")", r"\)")):
        load_package(archives[attack], _trust(pub))
    assert _leftovers(private_cache) == []  # no entry, no half-written temp folder
    assert not (tmp_path.parent / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()
    with pytest.raises(PackageError):  # the same with no signature required: the archive checks do not depend on it
        extract_verified(archives[attack], tmp_path / "out", must_sign=False)
    assert not (tmp_path / "out").exists()


def test_signature_is_checked_before_any_file_is_written(signed, tmp_path, private_cache) -> None:
    root, _, _ = signed
    _, other = generate_keypair(tmp_path / "other")
    bomb = hostile.with_member(root, tmp_path / "x.erpkg", hostile.member("evil.py", b"x"))
    with pytest.raises(SignatureError, match="untrusted key"):
        load_package(bomb, _trust(other))
    assert _leftovers(private_cache) == []


def test_unsigned_archive_is_refused_unless_allowed(tmp_path) -> None:
    pkg = make_package(tmp_path / "p")
    archive = pack_archive(pkg.root, tmp_path / "p.erpkg")
    assert read_archive_head(archive).signature_raw is None
    with pytest.raises(SignatureError, match="not signed.*edge-runtime keygen") as exc:
        load_package(archive)
    assert exc.value.code == "signature_missing"
    assert load_package(archive, allow_unsigned=True).signer is None


def test_a_key_without_the_release_role_cannot_sign_packages(signed, tmp_path) -> None:
    """An operator key (desired documents, commands) is trusted, yet a package it signed is refused."""
    op_priv, op_pub = generate_keypair(tmp_path / "operator")
    _, rel_pub = generate_keypair(tmp_path / "release")
    pkg = make_package(tmp_path / "p", sign_key=load_private_key(op_priv))
    archive = pack_archive(pkg.root, tmp_path / "p.erpkg")
    trust = TrustStore.from_config(TrustConfig(release=[rel_pub], operator=[op_pub]))
    for target in (pkg.root, archive):
        with pytest.raises(SignatureError, match="not as a release key") as exc:
            load_package(target, trust)
        assert exc.value.code == "wrong_role"
    assert trust.for_role(OPERATOR).keys  # the key is trusted, just not for this


def test_total_size_and_member_limits(signed) -> None:
    _, archive, pub = signed
    with pytest.raises(PackageError, match="add up to .* more than the 100 allowed"):
        load_package(archive, _trust(pub), limits=ArchiveLimits(max_total_bytes=100))
    with pytest.raises(PackageError, match="more than 2 members"):
        load_package(archive, _trust(pub), limits=ArchiveLimits(max_members=2))
    with pytest.raises(PackageError, match="manifest.json is .* more than the 64 allowed"):
        load_package(archive, _trust(pub), limits=ArchiveLimits(max_manifest_bytes=64))


# ---- the cache


def _entry(archive: Path) -> Path:
    from edge_runtime.fsutil import sha256_file

    return packages_dir() / sha256_file(archive)


def test_a_tampered_cached_file_is_never_used(signed) -> None:
    root, archive, pub = signed
    entry = load_package(archive, _trust(pub)).root
    (entry / "model.onnx").write_bytes(b"planted model of the same length?")
    again = load_package(archive, _trust(pub))
    assert (again.root / "model.onnx").read_bytes() == (root / "model.onnx").read_bytes()
    (entry / "evil.py").write_text("planted")
    assert not (load_package(archive, _trust(pub)).root / "evil.py").exists()


def test_a_cached_folder_with_a_loose_mode_is_extracted_again(signed) -> None:
    root, archive, pub = signed
    entry = load_package(archive, _trust(pub)).root
    (entry / "golden.npz").write_bytes(b"x")
    os.chmod(entry, 0o755)
    pkg = load_package(archive, _trust(pub))
    assert oct(pkg.root.stat().st_mode & 0o777) == "0o700"
    assert (pkg.root / "golden.npz").read_bytes() == (root / "golden.npz").read_bytes()


def test_a_cached_entry_that_is_a_symlink_is_refused(signed, tmp_path) -> None:
    root, archive, pub = signed
    _entry(archive).symlink_to(root)  # a look-alike folder somewhere else
    with pytest.raises(PackageError, match="not a directory"):
        load_package(archive, _trust(pub))


def test_a_loose_packages_folder_is_tightened_and_a_shared_cache_root_refused(signed, private_cache) -> None:
    _, archive, pub = signed
    packages_dir()
    os.chmod(private_cache / "packages", 0o777)
    load_package(archive, _trust(pub))
    assert oct((private_cache / "packages").stat().st_mode & 0o777) == "0o700"
    os.chmod(private_cache, 0o777)
    with pytest.raises(PackageError, match="writable by group or others"):
        load_package(archive, _trust(pub))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting a folder owned by another user needs root")


@needs_root
def test_a_folder_planted_by_another_user_is_refused(signed) -> None:
    root, archive, pub = signed
    entry = _entry(archive)
    entry.mkdir(mode=0o700)
    for name in ("manifest.json", "signature.json", "model.onnx", "golden.npz"):
        (entry / name).write_bytes((root / name).read_bytes())  # even an exact copy: not ours, not used
    os.chown(entry, 65534, 65534)
    with pytest.raises(PackageError, match="owned by uid 65534"):
        load_package(archive, _trust(pub))


@needs_root
def test_a_packages_folder_owned_by_another_user_is_refused(signed, private_cache) -> None:
    _, archive, pub = signed
    packages_dir()
    os.chown(private_cache / "packages", 65534, 65534)
    with pytest.raises(PackageError, match="owned by uid 65534"):
        load_package(archive, _trust(pub))


# ---- the real commands


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-runtime: error:") and message in lines[0], proc.stderr


def test_verify_command_refuses_every_hostile_archive(archives, signed, tmp_path) -> None:
    """`edge-runtime verify` on each archive (the CLI's main, in one fresh process to spare 18 interpreter
    starts): exit 2 and exactly one error line each, no traceback; then one real process for the bomb."""
    _, _, pub = signed
    env = {**os.environ, "EDGE_RUNTIME_CACHE": str(tmp_path / "cache")}
    names = sorted(archives)
    runs = [["verify", str(archives[n]), "--trust", str(pub)] for n in names]
    code = f"from edge_runtime.cli import main; print([main(a) for a in {runs!r}])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.strip() == str([2] * len(names)) and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(names), proc.stderr
    for name, line in zip(names, lines, strict=True):
        assert line.startswith("edge-runtime: error:") and REFUSALS[name] in line, (name, line)
    bomb = subprocess.run([*CLI, "verify", str(archives["gzip_bomb"]), "--trust", str(pub)],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    _one_line_exit_2(bomb, REFUSALS["gzip_bomb"])
    assert _leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("attack", ["gzip_bomb", "gnu_sparse", "symlink", "path_traversal", "extra_member"])
def test_run_command_refuses_hostile_archives(attack: str, archives, signed, tmp_path) -> None:
    _, _, pub = signed
    env = {**os.environ, "EDGE_RUNTIME_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([*CLI, "run", "--package", str(archives[attack]), "--trust", str(pub), "--source", "stdin"],
                          input="", capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    _one_line_exit_2(proc, REFUSALS[attack])


def test_commands_refuse_unsigned_and_untrusted_packages_and_say_how_to_sign(tmp_path, signed) -> None:
    _, archive, _ = signed
    unsigned = make_package(tmp_path / "unsigned").root
    for args in (["verify", str(unsigned)], ["run", "--package", str(unsigned), "--source", "stdin"]):
        proc = subprocess.run([*CLI, *args], input="", capture_output=True, text=True, timeout=120)
        _one_line_exit_2(proc, "is not signed (signature.json missing): sign it with `edge-runtime keygen")
        assert "--trust KEY.pub" in proc.stderr and "--allow-unsigned" in proc.stderr
    proc = subprocess.run([*CLI, "verify", str(archive)], capture_output=True, text=True, timeout=120)
    _one_line_exit_2(proc, "signed by untrusted key")
    ok = subprocess.run([*CLI, "verify", str(unsigned), "--allow-unsigned"],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0 and "signature not checked (--allow-unsigned)" in ok.stdout, ok.stderr


def test_listed_paths_that_collide_are_refused_not_a_traceback(signed, tmp_path) -> None:
    """A (signed or allowed-unsigned) manifest listing both "x" and "x/y": one clear refusal, nothing written."""
    import hashlib
    import json

    root, _, _ = signed
    doc = json.loads((root / "manifest.json").read_bytes())
    doc["files"] += [{"path": p, "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1} for p in ("x", "x/y")]
    raw = json.dumps(doc).encode()
    parts = [hostile.member("manifest.json", raw), *hostile.file_members(root),
             hostile.member("x", b"x"), hostile.member("x/y", b"x")]  # fmt: skip
    archive = hostile.write(tmp_path / "collide.erpkg", parts)
    with pytest.raises(PackageError, match="'x/y' collides with another listed path"):
        extract_verified(archive, tmp_path / "out", must_sign=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signer", ["operator", "none"])
def test_the_agent_refuses_a_first_package_not_signed_by_a_release_key(signer: str, tmp_path) -> None:
    """A real `edge-runtime agent` with separate roles: a package signed by its operator key (trusted, wrong role)
    or not signed at all is refused before anything is installed, with one line and exit 2."""
    import yaml

    from tests.mqtt_broker import free_port

    rel_priv, rel_pub = generate_keypair(tmp_path / "release")
    op_priv, op_pub = generate_keypair(tmp_path / "operator")
    pkg = make_package(tmp_path / "p", sign_key=load_private_key(op_priv) if signer == "operator" else None)
    archive = pack_archive(pkg.root, tmp_path / "first.erpkg")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "roles-1", "profile": "x86-laptop", "state_dir": str(tmp_path / "state"),
        "trust": {"release": [str(rel_pub)], "operator": [str(op_pub)]}, "initial_package": str(archive),
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
    }))  # fmt: skip
    env = {**os.environ, "EDGE_RUNTIME_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([*CLI, "agent", "--config", str(cfg)], capture_output=True, text=True, timeout=120, env=env)
    _one_line_exit_2(proc, "not as a release key" if signer == "operator" else "is not signed")
    assert not list((tmp_path / "state").rglob("manifest.json"))  # nothing installed in a slot
