"""Errors raised by the noise kernels.

They subclass the built-in types a caller would expect (``ValueError`` for a bad
argument, ``ImportError`` for a missing optional package) so generic code keeps
working, while the CLI can tell a user's mistake from a bug in this project.
"""

from __future__ import annotations


class KernelError(ValueError):
    """A noise-kernel argument is invalid; the message names it and what was expected."""


class MissingExtraError(ImportError):
    """An optional package is needed; the message names the pip extra that provides it."""
