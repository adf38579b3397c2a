"""Re-training: labels, triggers, dataset snapshots, runs as server jobs, gates, candidate -> canary (issue 16)."""

from __future__ import annotations

from fleet.server.errors import RegistryError


class RetrainError(RegistryError):
    """A label, import, policy or run request cannot be carried out (the API answers 409, the CLI exits 2)."""
