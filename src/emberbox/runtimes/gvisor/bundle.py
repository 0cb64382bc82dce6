"""The OCI ``config.json`` for one sandbox, built as plain data (no runsc call, easy to test)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Root inside gets what a VM's root would need (apt, chown, sudo, user switching) but neither
# CAP_SYS_ADMIN nor CAP_SYS_RESOURCE: gVisor lets those bypass RLIMIT_NPROC, our pids limit.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP", "CAP_SYS_PTRACE",
]  # fmt: skip

# A short CFS period: a sandbox over its quota waits at most this long, and so does a
# neighbour behind it (measured next to a spinner, 20 ms: p99 1.25x alone; 100 ms: 2.3x).
CPU_PERIOD_US = 20_000

# Memory. gVisor (runsc 20240729) has no OOM killer of its own: guest
# memory lives in one memfd charged to the host cgroup, and when that cgroup hits its limit the
# host kills a host process. Killing the sentry or the gofer ends the whole sandbox; killing the
# stub process behind one guest address space ends only that guest process. So:
# * the guest sees ``memory_mb`` (runsc reports the cgroup limit at boot as MemTotal) and its
#   init kills the biggest process with SIGKILL when that is used up (guest/oom.py);
# * once booted, the host limit is raised by HOST_HEADROOM_MB for the sentry's own memory and
#   the guard's reaction time (runsc.py applies ``HOST_LIMIT_ANNOTATION``);
# * should the host still run out, runsc.py has given the stubs the highest oom_score_adj, so
#   the host kills the biggest guest process (it exits with status 1), never the sentry.
HOST_HEADROOM_MB = 256
HOST_LIMIT_ANNOTATION = "dev.emberbox.host-memory-limit"


@dataclass(frozen=True)
class BindMount:
    source: Path
    destination: str
    readonly: bool = True


@dataclass(frozen=True)
class BundleSpec:
    """Everything that varies between sandboxes; the rest of the OCI spec is fixed."""

    rootfs: Path
    args: Sequence[str]
    env: Mapping[str, str]
    hostname: str
    netns_path: str
    cgroups_path: str
    cpu_count: int
    memory_mb: int
    pids_limit: int
    cpu_limit: float | None = None  # CPUs of host time per period; default cpu_count
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    binds: Sequence[BindMount] = field(default_factory=tuple)
    # /tmp's host directory; default the image's own /tmp (overlaid by gVisor, see oci_config)
    tmp: Path | None = None


def host_memory_limit(memory_mb: int) -> int:
    """Bytes the host cgroup allows once the sandbox runs: the guest's memory plus headroom."""
    return (memory_mb + HOST_HEADROOM_MB) * 1024 * 1024


def oci_config(spec: BundleSpec) -> dict[str, Any]:
    if spec.cpu_count < 1 or spec.memory_mb < 64 or spec.pids_limit < 16:
        raise ValueError("need cpu_count >= 1, memory_mb >= 64 and pids_limit >= 16")
    caps = list(CAPABILITIES)
    shm_bytes = spec.memory_mb * 1024 * 1024 // 2  # Linux's default tmpfs size: half the RAM
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_bytes}"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]  # fmt: skip
    if spec.tmp is not None or (spec.rootfs / "tmp").is_dir():
        # Without a /tmp mount runsc puts a tmpfs there, i.e. in the sandbox's memory. Binding
        # the image's own (empty) /tmp keeps it on disk: sandboxes get gVisor's disk-backed
        # overlay on it (runsc.py, --overlay2=all:dir=<disk>), so it shares the disk quota;
        # template builds write through to the layer, as a Dockerfile RUN step would. Sandboxes
        # with volumes overlay only the root, so their /tmp is a directory on their disk.
        tmp = spec.tmp if spec.tmp is not None else spec.rootfs / "tmp"
        mounts.append({"destination": "/tmp", "type": "bind",
                       "source": str(tmp), "options": ["rbind", "rw"]})  # fmt: skip
    for bind in spec.binds:
        mounts.append(
            {
                "destination": bind.destination,
                "type": "bind",
                "source": str(bind.source),
                "options": ["rbind", "ro" if bind.readonly else "rw"],
            }
        )
    return {
        "ociVersion": "1.0.0",
        "process": {
            "terminal": False,
            "noNewPrivileges": False,  # sudo must work: the sandbox is the user's machine
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536},
                # Guest tasks are not host pids, so a host pids cgroup alone cannot stop a fork
                # bomb cleanly; gVisor enforces RLIMIT_NPROC inside (also for root, see above).
                {"type": "RLIMIT_NPROC", "hard": spec.pids_limit, "soft": spec.pids_limit},
            ],
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts,
        "annotations": {HOST_LIMIT_ANNOTATION: str(host_memory_limit(spec.memory_mb))},
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": spec.netns_path},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "cgroupsPath": spec.cgroups_path,
            "resources": {
                "memory": {"limit": spec.memory_mb * 1024 * 1024},
                "cpu": {
                    "quota": int((spec.cpu_limit or spec.cpu_count) * CPU_PERIOD_US),
                    "period": CPU_PERIOD_US,
                },
                # Backstop for the host: the sentry uses about two host threads per guest task.
                "pids": {"limit": spec.pids_limit * 3 + 128},
            },
        },
    }


def write_bundle(directory: Path, spec: BundleSpec) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(oci_config(spec), indent=1))
    return directory
