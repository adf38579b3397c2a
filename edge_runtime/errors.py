"""Typed exceptions.

Everything a *user* can get wrong (a bad file, a wrong flag, a tampered package) raises a subclass of
:class:`EdgeRuntimeError`. The CLI turns those into one clear line and a non-zero exit code; anything else is a
bug and is allowed to end in a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EdgeRuntimeError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""

    exit_code = 2


class ProfileError(EdgeRuntimeError):
    """A device profile is unknown or invalid."""


class PackageError(EdgeRuntimeError):
    """A model package is missing, malformed, or fails its integrity checks."""


class SignatureError(PackageError):
    """A signature is missing, malformed, invalid, or made by a key not trusted for the role it is used in.

    ``code`` names the reason for status reports: ``signature_missing``, ``signature_malformed``,
    ``untrusted_key``, ``wrong_role``, ``signature_invalid`` or ``key_invalid`` (a key file that cannot be used).
    """

    def __init__(self, message: str, code: str = "signature_invalid") -> None:
        super().__init__(message)
        self.code = code


class ConversionError(EdgeRuntimeError):
    """A model could not be converted or quantized."""


class AccuracyBudgetError(ConversionError):
    """The quantized model misses the profile's accuracy budget even after remedies."""


class CalibrationError(ConversionError):
    """Calibration or validation data is missing, empty, or of the wrong shape."""


class MissingDependencyError(EdgeRuntimeError):
    """An optional dependency (an extra) is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed: pip install 'edge-runtime[{extra}]'")
        self.extra = extra


class BackendError(EdgeRuntimeError):
    """An inference backend is unavailable or failed to load a model."""


class InferenceError(BackendError):
    """The model failed while running on an input (the backend raised during inference): counted, never fatal
    to the pipeline by itself; the update agent's health window turns a run of them into a rollback."""


class InputError(EdgeRuntimeError):
    """An input frame or array does not fit the model's input spec."""


class SourceError(EdgeRuntimeError):
    """A camera, video, stream or sensor source cannot be opened or read."""


class ConfigError(EdgeRuntimeError):
    """A configuration file or option is invalid."""


def first_line(exc: BaseException) -> str:
    """A third-party exception as one line (``ValueError: first line``), to put inside an EdgeRuntimeError."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def first_validation_error(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error's first problem; pydantic's 'Value error, ' prefix dropped."""
    e = exc.errors()[0]
    return ".".join(str(p) for p in e["loc"]), str(e["msg"]).removeprefix("Value error, ")


def validation_message(exc: ValidationError, root: str = "") -> str:
    """The first problem of a pydantic error as one line: ``mqtt.tls.ca_cert: Field required (and 2 more)``.

    ``root`` names the location when the problem is with the whole document (empty: the message alone).
    """
    loc, msg = first_validation_error(exc)
    loc = loc or root
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
