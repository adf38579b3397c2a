"""One device environment per session: the wheel installed with the device extras (plus serve) in a fresh venv."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.installed.device_env import DeviceEnv, build_device_env


@pytest.fixture(scope="session")
def device_env(tmp_path_factory: pytest.TempPathFactory) -> DeviceEnv:
    return build_device_env(tmp_path_factory.mktemp("device-install"), extras="device,serve")


@pytest.fixture(scope="session")
def device_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_runtime.package import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys") / "release")
