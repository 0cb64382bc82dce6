"""Clients of envd that live outside the sandbox: the node's handshake, template builds, tests."""

from .client import CommandResult, EnvdClient
from .handshake import EnvdDefaults, HandshakeFailed, handshake, wait_healthy, wait_ready
from .http import sandbox_http

__all__ = [
    "CommandResult",
    "EnvdClient",
    "EnvdDefaults",
    "HandshakeFailed",
    "handshake",
    "sandbox_http",
    "wait_healthy",
    "wait_ready",
]
