"""Sandbox runtimes and the choice between them.

``EMBERBOX_RUNTIME`` (or the ``name`` argument) is ``gvisor``, ``firecracker`` or ``auto``.
``auto`` picks Firecracker only where *hardware* KVM works (``kvm_intel``/``kvm_amd`` loaded and
the CPU advertises vmx/svm): a ``/dev/kvm`` served by a software hypervisor such as ``kvm_pvm``
cannot boot stock guest kernels, so there it falls back to gVisor.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from .base import Runtime

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "gvisor", "firecracker")


def hardware_kvm(sys_module: Path = Path("/sys/module"), cpuinfo: Path = Path("/proc/cpuinfo"),
                 dev: Path = Path("/dev/kvm")) -> bool:  # fmt: skip
    """True when /dev/kvm is backed by VT-x/AMD-V, not by a nested software hypervisor."""
    if not dev.exists():
        return False
    if not any((sys_module / m).exists() for m in ("kvm_intel", "kvm_amd")):
        return False
    try:
        flags = next(
            (line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return False
    return "vmx" in flags or "svm" in flags


def resolve_name(name: str | None = None) -> str:
    """The concrete runtime ``name`` (or ``$EMBERBOX_RUNTIME``, default auto) stands for."""
    chosen = (name or os.environ.get("EMBERBOX_RUNTIME") or "auto").lower()
    if chosen not in RUNTIMES:
        raise ValueError(f"unknown runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}")
    if chosen != "auto":
        return chosen
    if hardware_kvm():
        try:
            importlib.import_module("emberbox.runtimes.firecracker")
            return "firecracker"
        except ImportError:
            log.warning("hardware KVM present but the Firecracker runtime is not installed")
    return "gvisor"


def select_runtime(name: str | None = None) -> Runtime:
    """Instantiate the runtime chosen by ``name``/config with its default settings."""
    resolved = resolve_name(name)
    if resolved == "gvisor":
        from .gvisor import GVisorRuntime

        return GVisorRuntime()
    module = importlib.import_module("emberbox.runtimes.firecracker")
    runtime: Runtime = module.FirecrackerRuntime()
    return runtime


__all__ = ["RUNTIMES", "Runtime", "hardware_kvm", "resolve_name", "select_runtime"]
