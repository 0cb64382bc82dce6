"""Where the gVisor runtime keeps its state and how it calls runsc, in one place."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...templates.store import data_dir
from ...vocabulary import HOST_MIN_FREE_MB, PAUSE_KEEP_S


@dataclass(frozen=True)
class GVisorConfig:
    """Knobs of the gVisor runtime; the defaults are what was measured to work on our hosts.

    **Parameters:**
    * data_dir - (optional) root of all state; sandboxes live in ``<data_dir>/gvisor``.
    * runsc - (optional) the runsc binary; default the one on PATH (the server passes
      ``Settings.runsc``).
    * platform - (optional) ``systrap`` (fast, runsc >= 2023) or ``ptrace``; ``None`` picks the
      best one the binary offers (``kvm`` hangs on nested PVM hosts, so it is never auto-picked).
    * subnet - (optional) pool of /30 links, one per sandbox (host .1, sandbox .2).
    * cgroup_parent - (optional) cgroup under which each sandbox gets
      ``<parent>/<instance>/<id>``.
    * leases_root - (optional) host-wide directory of address leases, shared by every data dir
      so that two instances on one host never lease the same /30.
    * instances_root - (optional) host-wide directory where each instance id is claimed for
      one data dir (``host/instance_claim.py``).

    Host-wide names (netns, veths, cgroups) carry ``instance``, a short hash of the data dir,
    so instances with different data dirs never touch each other's sandboxes (two data dirs
    whose ids collide are refused, see ``instances_root``).
    """

    data_dir: Path = field(default_factory=data_dir)
    runsc: str = field(default_factory=lambda: shutil.which("runsc") or "runsc")
    platform: str | None = None
    subnet: str = "10.11.0.0/16"
    cgroup_parent: str = "emberbox"
    leases_root: Path = Path("/run/emberbox/leases")
    instances_root: Path = Path("/run/emberbox/instances")
    boot_timeout: float = 30.0
    host_cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    cpu_reserve: float = 0.5
    # Restore creates from a snapshot of each template taken once, instead of booting it.
    template_snapshots: bool = True
    # The resolvers the egress gateway asks for sandboxes with domain rules; empty: the host's.
    egress_dns: tuple[str, ...] = ()
    # CAs (a PEM file) the gateway trusts besides the system's when it intercepts HTTPS for
    # header rules; empty: the system's only.
    egress_ca: str = ""
    # Run ulogd for the egress audit log's kernel side (``host/flow_monitor.py``). Off for a
    # process that only builds templates beside a node: the node's ulogd is the one.
    egress_audit: bool = True
    # A paused sandbox's processes stay, stopped, beside its saved memory up to this long (0:
    # never; resident, a minute at most: ``kept.py``) while the host has more than
    # ``pause_keep_min_free_mb`` available: a resume then continues them instead of restoring.
    pause_keep_s: float = PAUSE_KEEP_S
    pause_keep_min_free_mb: int = HOST_MIN_FREE_MB

    @property
    def cpu_cap(self) -> float:
        """The most host CPU time one sandbox may use: all CPUs but ``cpu_reserve``.

        A sandbox allowed every CPU starves its neighbours' gVisor sentries in long tails
        (measured: a neighbour's ``commands.run`` p99 went from 0.13 s to 5 s next to a
        spinner; with 1.5 of 2 CPUs, 0.3 s, and 0.18 s with a 20 ms CFS period).
        See ``benchmarks/fairness_bench.py``.
        """
        return max(0.5, self.host_cpus - self.cpu_reserve)

    @property
    def root(self) -> Path:
        return self.data_dir / "gvisor"

    @property
    def runsc_root(self) -> Path:
        """runsc's own ``--root`` state directory (container records)."""
        return self.root / "runsc"

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"

    @property
    def snapshots_dir(self) -> Path:
        """Checkpoints that outlive their sandbox (snapshots, forks), one directory each."""
        return self.root / "snapshots"

    @property
    def template_snapshots_dir(self) -> Path:
        """Each template's own checkpoint, taken after its first boot (``warm.py``)."""
        return self.root / "template-snapshots"

    @property
    def formatted_disks_dir(self) -> Path:
        """One freshly made ext4 per disk size, which sandbox disks copy (host/rootfs.py)."""
        return self.root / "formatted-disks"

    @property
    def leases_dir(self) -> Path:
        return self.leases_root

    @property
    def instance(self) -> str:
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:4]

    @property
    def cgroup_base(self) -> str:
        """Parent cgroup of this instance's sandboxes (relative to each hierarchy's root)."""
        return f"{self.cgroup_parent}/{self.instance}"

    @property
    def network(self) -> ipaddress.IPv4Network:
        net = ipaddress.IPv4Network(self.subnet)
        if net.prefixlen > 29:
            raise ValueError(f"subnet {self.subnet} is too small for a pool of /30 links")
        return net
