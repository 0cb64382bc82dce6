"""What can go wrong with a sandbox operation, in the control plane's own words.

The lifecycle service raises these; ``api/errors.py`` alone turns them into HTTP statuses and
``{code, message}`` bodies, so nothing below ``api/`` knows about HTTP.
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base: ``message`` is safe to show to the caller; ``error_code`` is a stable name."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class NotFound(LifecycleError):
    """No such sandbox or template for this team (another team's is "not found" too)."""


class Invalid(LifecycleError):
    """The request itself is wrong (a timeout out of range, a bad cursor)."""


class Conflict(LifecycleError):
    """The sandbox is not in a state that allows this (pausing a paused sandbox)."""


class Busy(Conflict):
    """The same thing is already under way; retrying shortly will work."""


class QuotaExceeded(LifecycleError):
    """A per-team limit refuses it; retrying does not help until something is freed."""


class Unsupported(LifecycleError):
    """This deployment cannot do it (yet); we refuse instead of ignoring the option."""


class NoCapacity(LifecycleError):
    """The node has no room for the sandbox right now."""


class GuestUnhealthy(LifecycleError):
    """The sandbox's envd does not answer, and the caller asked for a healthy guest."""


class SandboxFailed(LifecycleError):
    """The node could not start, pause, resume or stop the sandbox."""


class NodeFailed(LifecycleError):
    """The node could not be reached, or failed inside, outside any one sandbox."""


class Unreachable(LifecycleError):
    """The sandbox did not answer a request the control plane made to it."""
