"""One data dir per instance id on a host, or a clear refusal.

A node's host-wide objects (cgroups, interfaces, firewall chains, leases) carry a short id
hashed from its data dir, short because interface names have 15 characters. Two data dirs
can hash to the same id (1 in 65,536 for a pair), and a node starting on one would take the
other's sandboxes for orphans of its own and remove them. So a runtime claims its id for its
data dir, in ``directory``:

* ``<instance>.owner`` names the data dir that owns the id. It stays when that data dir's
  runtimes stop, since its sandboxes run on without a node; another data dir takes the id
  over only once no runtime of the owner runs and the owner has no sandboxes (``in_use``).
* ``<instance>.lock``: every runtime holds a shared ``flock`` on it while it lives, so the
  kernel counts them (runtimes of one data dir share the id, a template build beside its
  node), and drops a dead process's, even on SIGKILL.
* ``<instance>.guard``: held (exclusively, for a moment) while the two above are read and
  changed, so two claims never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import write_atomic


class InstanceTaken(RuntimeError):
    """Another data dir on this host holds the same instance id."""


class InstanceClaim:
    def __init__(
        self, directory: Path, instance: str, data_dir: Path, in_use: Callable[[Path], bool]
    ) -> None:
        self.directory = directory
        self.instance = instance
        self.data_dir = str(data_dir.resolve())
        self.in_use = in_use  # whether a data dir still has sandboxes on this host
        self._fd: int | None = None

    def _path(self, kind: str) -> Path:
        return self.directory / f"{self.instance}.{kind}"

    def acquire(self) -> InstanceClaim:
        """Hold the id for this data dir beside its other runtimes; refuse it while another
        data dir owns it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _held(self._path("guard"), fcntl.LOCK_EX):
            owner_file = self._path("owner")
            try:
                owner = owner_file.read_text()
            except FileNotFoundError:
                owner = ""
            fd = os.open(self._path("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if owner and owner != self.data_dir and not self._stale(fd, owner):
                    raise InstanceTaken(
                        f"the data dir {self.data_dir} and the data dir {owner}, in use on this "
                        f"host, share the instance id {self.instance} that names their "
                        "sandboxes' cgroups, interfaces and firewall chains; use another "
                        "EMBERBOX_DATA_DIR"
                    )
                if owner != self.data_dir:
                    write_atomic(owner_file, self.data_dir)
                fcntl.flock(fd, fcntl.LOCK_SH)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        return self

    def _stale(self, fd: int, owner: str) -> bool:
        """No runtime of ``owner`` runs (no shared lock: ours is exclusive, for a moment) and
        it has no sandboxes left."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return not self.in_use(Path(owner))

    def release(self) -> None:
        """This runtime's hold ends; the data dir stays the id's owner (its sandboxes may)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a runtime never closed (a script's) lets go of it too
        self.release()


@contextlib.contextmanager
def _held(path: Path, how: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)
