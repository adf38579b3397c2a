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
