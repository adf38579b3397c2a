"""Reuse the OTA fixtures (keys and signed packages)."""

from tests.update.conftest import ota_keys, ota_packages  # noqa: F401
