"""One data dir per instance id on a host, or a clear refusal.

A node's host-wide objects (cgroups, interfaces, firewall chains, leases) carry a short id
hashed from its data dir, short because interface names have 15 characters. Two data dirs
can hash to the same id (1 in 65,536 for a pair), and a node starting on one would take the
other's sandboxes for orphans of its own and remove them. So a runtime claims its id for its
data dir: a :class:`HeldLock` on ``<directory>/<instance>.lock`` naming the data dir.
Runtimes of the same data dir (a template build beside a node) share the claim; another
data dir is refused.
"""

from __future__ import annotations

from pathlib import Path

from .held_lock import HeldLock


class InstanceTaken(RuntimeError):
    """Another data dir on this host holds the same instance id."""


class InstanceClaim:
    def __init__(self, directory: Path, instance: str, data_dir: Path) -> None:
        self.lock = HeldLock(directory / f"{instance}.lock")
        self.instance = instance
        self.data_dir = str(data_dir.resolve())

    def acquire(self) -> InstanceClaim:
        """Hold the id for this data dir (or find it held for it already); else refuse."""
        holder = self.lock.take(self.data_dir)
        if holder is not None and holder != self.data_dir:
            raise InstanceTaken(
                f"the data dir {self.data_dir} and the data dir {holder or '(unknown)'}, "
                f"in use on this host, share the instance id {self.instance} that names "
                "their sandboxes' cgroups, interfaces and firewall chains; use another "
                "EMBERBOX_DATA_DIR"
            )
        return self  # (held, or held for this data dir by another runtime: shared)

    def release(self) -> None:
        self.lock.release()

    def __del__(self) -> None:  # a runtime never closed (a script's) lets go of it too
        self.release()
