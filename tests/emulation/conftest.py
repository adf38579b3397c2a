"""The arm64 environment (Debian 12 + QEMU 10 + aarch64 wheels), prepared once per session and cached on disk.

Outside CI a machine that cannot prepare it (no debootstrap, no network) skips these tests with the reason; in CI
(``CI=true``) that is a failure, never a silent skip.
"""

from __future__ import annotations

import os

import pytest

from converters.emulate import Arm64Environment, EmulationError, prepare_environment


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def arm64_env() -> Arm64Environment:
    """Prepared environment; a failure to prepare it fails in CI and skips (with the reason) elsewhere."""
    try:
        return prepare_environment()
    except EmulationError as exc:
        if in_ci():
            pytest.fail(f"arm64 emulation could not be prepared in CI: {exc}", pytrace=False)
        pytest.skip(f"arm64 emulation unavailable on this machine: {exc}")


@pytest.fixture(scope="session")
def demo_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The demo package (BlazeFace short-range, int8 TFLite) for a Raspberry Pi 4, built by the converter."""
    from converters.zoo.blazeface import build_demo_package
    from tests.model_factory import factory_key

    out = tmp_path_factory.mktemp("arm64") / "demo"
    return build_demo_package(out, profile="raspberry-pi-4", sign_key=factory_key())


@pytest.fixture(scope="session")
def int8_onnx_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny image classifier converted to int8 ONNX (QDQ, uint8 in/out) for a Raspberry Pi 5 by the converter."""
    import cv2

    from converters.pipeline import ConvertOptions, convert
    from tests.model_factory import onnx_classifier_model, test_frames

    work = tmp_path_factory.mktemp("arm64-onnx")
    (work / "cal").mkdir()
    for i, frame in enumerate(test_frames(24, seed=3)):
        cv2.imwrite(str(work / "cal" / f"{i:02d}.png"), frame)
    opts = ConvertOptions(
        source=onnx_classifier_model(work / "classifier.onnx"),
        profile="raspberry-pi-5",
        calibration=work / "cal",
        out=work / "pkg",
        format="onnx",
        labels=("a", "b", "c"),
        task="classification",
        mean=(104.0, 117.0, 123.0),
        std=(58.0, 57.0, 59.0),
        color_order="BGR",
    )
    return convert(opts, progress=lambda _msg: None)
