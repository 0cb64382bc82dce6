"""Every error the SDK raises, in one tree rooted at :class:`SandboxException`.

    SandboxException
    ├── TimeoutException            a request, command or sandbox ran out of time
    ├── NotFoundException           the sandbox, process, file or template does not exist
    │   └── FileNotFoundException
    ├── AuthenticationException     missing or wrong API key / access token
    ├── RateLimitException          429: too many requests or sandboxes; honour retry_after
    ├── InvalidArgumentException    the request itself is wrong (bad path, cwd, value)
    ├── NotEnoughSpaceException     the sandbox's disk is full
    ├── CommandExitException        a command finished with a non-zero exit code
    ├── TemplateException           a template is missing, broken or too old
    ├── SandboxUnavailableException the sandbox is not running or cannot be reached
    └── UnsupportedException        501: this server or its runtime cannot do that (yet)

Errors are converted once, at the transport boundary (``_errors.py``), from HTTP statuses and
Connect codes; nothing below the public surface raises httpx or protobuf errors.
"""

from __future__ import annotations


class SandboxException(Exception):
    """Base of every SDK error."""


class TimeoutException(SandboxException):
    """A request, a command's deadline or the sandbox's own timeout expired."""


class NotFoundException(SandboxException):
    """The sandbox, process, file or template does not exist (or is not yours)."""


class FileNotFoundException(NotFoundException):
    """A path inside the sandbox does not exist."""


class AuthenticationException(SandboxException):
    """The API key or the sandbox access token is missing or wrong."""


class RateLimitException(SandboxException):
    """Too many requests or sandboxes; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidArgumentException(SandboxException):
    """The request was refused as malformed: a bad path, cwd, size or value."""


class NotEnoughSpaceException(SandboxException):
    """The sandbox has no disk space left for the write."""


class TemplateException(SandboxException):
    """A template is unknown, failed to build, or its envd is too old."""


class SandboxUnavailableException(SandboxException):
    """The sandbox is not running (killed, expired, paused) or its port cannot be reached; also
    409: the sandbox is not in a state that allows the call (snapshot or fork of a paused one)."""


class GuestUnresponsiveException(SandboxUnavailableException):
    """409: the paused sandbox was paused while its envd did not answer; restoring that memory
    would bring it back so. Resume it with ``on_resume="reboot"`` (it boots afresh from its
    files)."""


class UnsupportedException(SandboxException):
    """501: the server or its runtime does not offer this (a runtime without checkpoints, a
    filesystem-only snapshot); retrying does not help."""


class CommandExitException(SandboxException):
    """A foreground command exited with a non-zero code; carries the whole result."""

    def __init__(self, stdout: str, stderr: str, exit_code: int, error: str | None) -> None:
        super().__init__(f"command exited with code {exit_code}: {error or stderr.strip()}")
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code
        self.error = error


__all__ = [
    "AuthenticationException",
    "CommandExitException",
    "FileNotFoundException",
    "GuestUnresponsiveException",
    "InvalidArgumentException",
    "NotEnoughSpaceException",
    "NotFoundException",
    "RateLimitException",
    "SandboxException",
    "SandboxUnavailableException",
    "TemplateException",
    "TimeoutException",
    "UnsupportedException",
]
