"""The fleet server's exception hierarchy: user mistakes end as one line (exit 2), never a traceback."""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class FleetServerError(EdgeRuntimeError):
    """Base class for fleet server errors caused by configuration, input or environment."""


class DatabaseError(FleetServerError):
    """The database URL is wrong, the database unreachable, or its schema newer than this server."""


class AuthError(FleetServerError):
    """A user or token cannot be created (bad name, role or password)."""


class ActionRefused(FleetServerError):
    """An action cannot be carried out (no operator key, unknown device, bad argument)."""
