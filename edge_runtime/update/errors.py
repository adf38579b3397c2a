"""Typed errors of the update subsystem. Each carries a short machine-readable ``code`` for status reports."""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class UpdateError(EdgeRuntimeError):
    """An update step failed; the device keeps (or goes back to) a verified model."""

    code = "update_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class TransferError(UpdateError):
    """The package could not be fetched completely and intact."""

    code = "transfer_failed"


class VerificationError(UpdateError):
    """The package or the desired document failed a check (hash, signature, key, profile, version)."""

    code = "verification_failed"


class DiskFullError(UpdateError):
    """No room for the package, even after pruning old versions (ENOSPC or over the disk budget)."""

    code = "disk_full"


class SmokeTestError(UpdateError):
    """The new model loads but fails its golden pairs or the latency budget."""

    code = "smoke_test_failed"
