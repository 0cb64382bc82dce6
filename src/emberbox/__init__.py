"""Emberbox: self-hosted sandboxes for AI agents and untrusted code.

    from emberbox import Sandbox

    with Sandbox(template="base") as sandbox:
        print(sandbox.commands.run("echo hello").stdout)
"""

from .sdk._async.commands import AsyncCommandHandle
from .sdk._async.filesystem import AsyncWatchHandle
from .sdk._async.sandbox import AsyncSandbox
from .sdk._sync.commands import CommandHandle
from .sdk._sync.filesystem import WatchHandle
from .sdk.exceptions import (
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxUnavailableException,
    TemplateException,
    TimeoutException,
)
from .sdk.models import (
    CommandResult,
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SandboxMetrics,
    WriteEntry,
    WriteInfo,
)
from .sdk.sandbox import Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncWatchHandle",
    "AuthenticationException",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "FileNotFoundException",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "InvalidArgumentException",
    "NotEnoughSpaceException",
    "NotFoundException",
    "ProcessInfo",
    "PtySize",
    "RateLimitException",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxUnavailableException",
    "TemplateException",
    "TimeoutException",
    "WatchHandle",
    "WriteEntry",
    "WriteInfo",
    "__version__",
]
