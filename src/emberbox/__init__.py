"""Emberbox: self-hosted sandboxes for AI agents and untrusted code.

from emberbox import Sandbox

with Sandbox(template="base") as sandbox:
    print(sandbox.commands.run("echo hello").stdout)
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from .sdk._async.commands import AsyncCommandHandle
    from .sdk._async.egress import AsyncEgressPaginator
    from .sdk._async.filesystem import AsyncWatchHandle
    from .sdk._async.sandbox import AsyncSandbox
    from .sdk._async.secrets import AsyncSecret, AsyncSecretPaginator
    from .sdk._async.snapshots import AsyncSnapshotPaginator
    from .sdk._sync.commands import CommandHandle
    from .sdk._sync.egress import EgressPaginator
    from .sdk._sync.filesystem import WatchHandle
    from .sdk._sync.secrets import Secret, SecretPaginator
    from .sdk._sync.snapshots import SnapshotPaginator
    from .sdk.code_models import (
        Context,
        Execution,
        ExecutionError,
        Logs,
        OutputMessage,
        Result,
    )
    from .sdk.exceptions import (
        AuthenticationException,
        CommandExitException,
        FileNotFoundException,
        GuestUnresponsiveException,
        InvalidArgumentException,
        NotEnoughSpaceException,
        NotFoundException,
        RateLimitException,
        SandboxException,
        SandboxUnavailableException,
        TemplateException,
        TimeoutException,
        UnsupportedException,
    )
    from .sdk.models import (
        CommandResult,
        EgressRecord,
        EntryInfo,
        FilesystemEvent,
        FilesystemEventType,
        FileType,
        ProcessInfo,
        PtySize,
        SandboxInfo,
        SandboxMetrics,
        SecretInfo,
        SnapshotInfo,
        WriteEntry,
        WriteInfo,
    )
    from .sdk.sandbox import Sandbox

# Loaded on first use, so that envd (which lives in this package) starts without the SDK.
_EXPORTS = {
    "AsyncCommandHandle": ".sdk._async.commands",
    "AsyncEgressPaginator": ".sdk._async.egress",
    "AsyncSandbox": ".sdk._async.sandbox",
    "AsyncSecret": ".sdk._async.secrets",
    "AsyncSecretPaginator": ".sdk._async.secrets",
    "AsyncSnapshotPaginator": ".sdk._async.snapshots",
    "AsyncWatchHandle": ".sdk._async.filesystem",
    "AuthenticationException": ".sdk.exceptions",
    "CommandExitException": ".sdk.exceptions",
    "CommandHandle": ".sdk._sync.commands",
    "CommandResult": ".sdk.models",
    "Context": ".sdk.code_models",
    "EgressPaginator": ".sdk._sync.egress",
    "EgressRecord": ".sdk.models",
    "EntryInfo": ".sdk.models",
    "Execution": ".sdk.code_models",
    "ExecutionError": ".sdk.code_models",
    "FileNotFoundException": ".sdk.exceptions",
    "GuestUnresponsiveException": ".sdk.exceptions",
    "FileType": ".sdk.models",
    "FilesystemEvent": ".sdk.models",
    "FilesystemEventType": ".sdk.models",
    "InvalidArgumentException": ".sdk.exceptions",
    "Logs": ".sdk.code_models",
    "NotEnoughSpaceException": ".sdk.exceptions",
    "NotFoundException": ".sdk.exceptions",
    "OutputMessage": ".sdk.code_models",
    "ProcessInfo": ".sdk.models",
    "PtySize": ".sdk.models",
    "RateLimitException": ".sdk.exceptions",
    "Result": ".sdk.code_models",
    "Sandbox": ".sdk.sandbox",
    "SandboxException": ".sdk.exceptions",
    "SandboxInfo": ".sdk.models",
    "SandboxMetrics": ".sdk.models",
    "SandboxUnavailableException": ".sdk.exceptions",
    "Secret": ".sdk._sync.secrets",
    "SecretInfo": ".sdk.models",
    "SecretPaginator": ".sdk._sync.secrets",
    "SnapshotInfo": ".sdk.models",
    "SnapshotPaginator": ".sdk._sync.snapshots",
    "TemplateException": ".sdk.exceptions",
    "TimeoutException": ".sdk.exceptions",
    "UnsupportedException": ".sdk.exceptions",
    "WatchHandle": ".sdk._sync.filesystem",
    "WriteEntry": ".sdk.models",
    "WriteInfo": ".sdk.models",
}


def __getattr__(name: str) -> _Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emberbox' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "AsyncCommandHandle",
    "AsyncEgressPaginator",
    "AsyncSandbox",
    "AsyncSecret",
    "AsyncSecretPaginator",
    "AsyncSnapshotPaginator",
    "AsyncWatchHandle",
    "AuthenticationException",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "Context",
    "EgressPaginator",
    "EgressRecord",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileNotFoundException",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "GuestUnresponsiveException",
    "InvalidArgumentException",
    "Logs",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "ProcessInfo",
    "PtySize",
    "RateLimitException",
    "Result",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxUnavailableException",
    "Secret",
    "SecretInfo",
    "SecretPaginator",
    "SnapshotInfo",
    "SnapshotPaginator",
    "TemplateException",
    "TimeoutException",
    "UnsupportedException",
    "WatchHandle",
    "WriteEntry",
    "WriteInfo",
    "__version__",
]
