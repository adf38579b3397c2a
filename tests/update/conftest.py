"""Fixtures for OTA tests: one signing key pair, signed packages v1/v2 and faulty variants (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.package import generate_keypair, load_private_key


@pytest.fixture(scope="session")
def ota_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ota-keys")
    priv, pub = generate_keypair(d / "fleet")
    rogue_priv, rogue_pub = generate_keypair(d / "rogue")
    return {"priv": priv, "pub": pub, "rogue_priv": rogue_priv, "rogue_pub": rogue_pub}


@pytest.fixture(scope="session")
def ota_packages(tmp_path_factory: pytest.TempPathFactory, ota_keys: dict[str, Path]) -> dict[str, Path]:
    """Signed ONNX classifier packages: v1 (serving), v2, v3, a twin of v1, and faulty ones (see the keys)."""
    from tests.model_factory import classifier_package
    from tests.update.models import nan_package, raising_package

    d = tmp_path_factory.mktemp("ota-pkgs")
    key = load_private_key(ota_keys["priv"])
    rogue = load_private_key(ota_keys["rogue_priv"])
    out = {
        "v1": classifier_package(d / "v1", version="1.0.0", sign_key=key, seed=0).root,
        "v2": classifier_package(d / "v2", version="2.0.0", sign_key=key, seed=1).root,
        "v3": classifier_package(d / "v3", version="3.0.0", sign_key=key, seed=2).root,
        "v1_twin": classifier_package(d / "twin", version="1.1.0", sign_key=key, seed=0).root,  # v1's weights
        "bad_golden": classifier_package(d / "bad", version="2.1.0", sign_key=key, corrupt_golden=True).root,
        "other_profile": classifier_package(d / "pi", version="2.2.0", sign_key=key, profile="raspberry-pi-4").root,
        "unsigned": _unsigned(classifier_package(d / "unsigned", version="2.3.0").root),
        "rogue": classifier_package(d / "rogue", version="2.4.0", sign_key=rogue).root,
        "nan": nan_package(d / "nan", version="2.5.0", sign_key=key).root,
        "raising": raising_package(d / "raising", version="2.6.0", sign_key=key).root,
    }
    return out


def _unsigned(root: Path) -> Path:
    """The factory signs every package; this one must have no signature at all."""
    (root / "signature.json").unlink()
    return root
