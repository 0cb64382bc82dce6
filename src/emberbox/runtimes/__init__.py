"""Sandbox runtimes and the choice between them.

The ``name`` (from ``Settings.runtime``) is ``gvisor``, ``firecracker``, ``process`` (plain envd
processes on the host, **no isolation**: development and tests) or ``auto``.
``auto`` picks Firecracker only where *hardware* KVM works (``kvm_intel``/``kvm_amd`` loaded and
the CPU advertises vmx/svm): a ``/dev/kvm`` served by a software hypervisor such as ``kvm_pvm``
cannot boot stock guest kernels, so there it falls back to gVisor.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..vocabulary import PAUSE_KEEP_S
from .base import Runtime

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "gvisor", "firecracker", "process")


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
    """The concrete runtime ``name`` (default auto) stands for.

    ``auto``: as root with runsc on PATH, Firecracker where hardware KVM works and its runtime
    is installed, else gVisor; otherwise the unisolated process runtime.
    """
    chosen = (name or "auto").lower()
    if chosen not in RUNTIMES:
        raise ValueError(f"unknown runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}")
    if chosen != "auto":
        return chosen
    if os.geteuid() != 0 or not shutil.which("runsc"):
        return "process"
    if hardware_kvm():
        try:
            importlib.import_module("emberbox.runtimes.firecracker")
            return "firecracker"
        except ImportError:
            log.warning("hardware KVM present but the Firecracker runtime is not installed")
    return "gvisor"


def select_runtime(
    name: str | None,
    data_dir: Path,
    envd_command: Sequence[str] | None = None,
    runsc: str = "",
    template_snapshots: bool = True,
    egress_dns: Sequence[str] = (),
    egress_ca: str = "",
    pause_keep_s: float = PAUSE_KEEP_S,
) -> Runtime:
    """The runtime ``name`` stands for, keeping its state under ``data_dir``.

    ``envd_command`` replaces the envd the process runtime starts (tests run a wrapped one);
    ``runsc`` names the runsc binary (default: the one on PATH); ``template_snapshots`` False
    makes every create boot (gVisor restores a snapshot of the template otherwise);
    ``egress_dns`` are the resolvers the egress gateway asks (default: the host's), and
    ``egress_ca`` a PEM file of CAs it trusts besides the system's when it intercepts;
    ``pause_keep_s`` how long gVisor keeps a paused sandbox's processes for a fast resume.
    """
    resolved = resolve_name(name)
    if resolved == "gvisor":
        from ..templates.store import TemplateStore
        from .gvisor import GVisorConfig, GVisorRuntime

        config = GVisorConfig(
            data_dir=data_dir,
            template_snapshots=template_snapshots,
            egress_dns=tuple(egress_dns),
            egress_ca=egress_ca,
            pause_keep_s=pause_keep_s,
        )
        if runsc:
            config = dataclasses.replace(config, runsc=runsc)
        return GVisorRuntime(config, TemplateStore(data_dir))
    if resolved == "process":
        from .process import ProcessRuntime

        return ProcessRuntime(data_dir, envd_command)
    module = importlib.import_module("emberbox.runtimes.firecracker")
    runtime: Runtime = module.FirecrackerRuntime(data_dir)
    return runtime


__all__ = ["RUNTIMES", "Runtime", "hardware_kvm", "resolve_name", "select_runtime"]
