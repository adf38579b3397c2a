"""A converted package: its signature verifies, and tampering with any file is caught."""

from __future__ import annotations

import shutil

import pytest

from converters.pipeline import ConvertOptions, convert
from edge_runtime.cli import main
from edge_runtime.errors import PackageError
from edge_runtime.package import TrustStore, load_package


@pytest.fixture(scope="module")
def signed_pkg(tmp_path_factory, sklearn_models, data_dir, session_keys):
    out = tmp_path_factory.mktemp("signed") / "pkg"
    opts = ConvertOptions(
        source=sklearn_models["mlp.pkl"], profile="x86-laptop", calibration=data_dir / "features_calib.npy",
        out=out, sign_key=session_keys[0], labels=tuple(str(i) for i in range(10)),
    )  # fmt: skip
    return convert(opts, progress=lambda s: None).root


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["model.onnx", "golden.npz", "manifest.json", "signature.json"])
def test_tampering_with_any_file_is_caught(victim, signed_pkg, session_keys, tmp_path, capsys):
    trust = TrustStore.from_paths([str(session_keys[1])])
    assert load_package(signed_pkg, trust=trust).manifest.outputs.labels[3] == "3"
    copy = tmp_path / "pkg"
    shutil.copytree(signed_pkg, copy)
    _flip_last_byte(copy / victim)
    with pytest.raises(PackageError):
        load_package(copy, trust=trust)
    assert main(["verify", str(copy), "--key", str(session_keys[1])]) != 0
    assert "edge-runtime: error:" in capsys.readouterr().err


def test_an_added_file_or_another_key_is_refused(signed_pkg, tmp_path):
    from edge_runtime.package import generate_keypair

    copy = tmp_path / "pkg"
    shutil.copytree(signed_pkg, copy)
    (copy / "extra.bin").write_bytes(b"smuggled")
    with pytest.raises(PackageError, match="does not cover"):
        load_package(copy, allow_unsigned=True)
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(PackageError):
        load_package(signed_pkg, trust=TrustStore.from_paths([str(other_pub)]))
