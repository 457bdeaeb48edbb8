"""The project's error hierarchy.

Every error a user can cause (a bad config, a bad file, a missing extra) is an
``AuditError`` or a kernel error; the CLI prints those as one line and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from kernels.errors import KernelError, MissingExtraError


class AuditError(Exception):
    """Base class of the errors a user can cause and fix."""


class ConfigError(AuditError, ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


class InputError(AuditError, ValueError):
    """An input file or array is unusable (the message names the file and the problem)."""


class EngineError(AuditError):
    """A model artifact cannot be loaded or does not accept the data."""


#: What the CLI reports as a one-line error with exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (AuditError, KernelError, MissingExtraError)

__all__ = ["AuditError", "ConfigError", "EngineError", "InputError", "KernelError", "MissingExtraError", "USER_ERRORS"]
