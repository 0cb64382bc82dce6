"""Failures of host operations; runtimes' own errors derive from these."""

from __future__ import annotations


class HostError(Exception):
    """A host operation (a command, a kernel object) failed."""


class HostExhausted(HostError):
    """The host has no room for another sandbox (addresses, slots)."""
