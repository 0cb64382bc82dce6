"""A sandbox's files without its memory: what a filesystem-only pause keeps.

gVisor keeps a sandbox's writes in an overlay whose upper layer lives inside the sentry, so
the host cannot read them; only the guest can. This module is run *inside* the guest by the
guest's own Python (its source is passed to ``python -c``, so it needs only the standard
library and works with any template's envd): :func:`save` writes a tar of what the sandbox
changed to stdout, :func:`load` (PID 1 of the rebooted sandbox) reads it from stdin, applies
it and becomes the template's init.

Inside gVisor's overlay a file in the upper layer (written or copied up) reports the upper
layer's device, one of the template's layers another; directories report the overlay's own.
So the tar holds every upper file, every directory's header (a directory changed or made by
the sandbox cannot be told apart otherwise; :func:`load` skips those that match) and, last,
the list of every path, from which :func:`load` removes what the sandbox had deleted. The
root and /tmp are overlays of their own (gVisor mounts the image's /tmp apart); both are kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import stat
import sys
import tarfile
from collections.abc import Iterator
from typing import IO

# The last member: every path of the kept mounts, NUL-separated. Real members are relative.
PATHS_MEMBER = "/emberbox-paths"
MOUNTS = ("", "tmp")  # relative to the root: the overlays whose writes are kept
_PROBE = ".emberbox-upper-probe"


def _walk(root: str, mount: str, strict: bool = False) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every path under the mount ``mount`` (relative to ``root``, the mount itself excluded),
    parents before children, and its directory entry; mounts under it (/proc, /dev, /tmp,
    bound files) are not descended into. Only directories are stat'ed here: a stat costs a
    sentry round trip (~80 us on a nested host), and the load needs none of the files'.
    ``strict`` (a save) raises what it cannot read: a directory left out of the list of
    paths would have its template files deleted by the load."""
    top = os.lstat(os.path.join(root, mount)).st_dev
    stack = [mount]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as found:
                entries = sorted(found, key=lambda entry: entry.name)
        except OSError:
            if strict:
                raise
            continue
        for entry in entries:
            path = os.path.join(rel, entry.name)
            yield path, entry
            try:
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_dev == top
                ):
                    stack.append(path)
            except OSError:
                if strict:
                    raise
                continue


def _mounts(root: str) -> list[str]:
    """The kept mounts this root has (a sandbox with volumes has no /tmp overlay of its own,
    but it cannot be paused)."""
    top = os.lstat(root).st_dev
    out = [""]
    for mount in MOUNTS[1:]:
        try:
            st = os.lstat(os.path.join(root, mount))
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_dev != top:
            out.append(mount)
    return out


def _upper_device(directory: str) -> int:
    """The device files in this overlay's upper layer report: that of a file made here."""
    probe = os.path.join(directory, _PROBE)
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)
        os.unlink(probe)


def _stop_others() -> list[int]:
    """SIGSTOP every process but PID 1 and this one, again until a pass finds none running
    (one may fork meanwhile); returns those it stopped (one stopped already, by its user,
    stays so when the others are let go)."""
    stopped: list[int] = []
    skip = {1, os.getpid()}
    for _ in range(5):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in skip:
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                skip.add(int(entry))
                if state not in ("T", "t"):
                    os.kill(int(entry), signal.SIGSTOP)
                    stopped.append(int(entry))
                    found = True
            except (OSError, IndexError):
                continue  # it exited meanwhile
        if not found:
            break
    return stopped


def _let_go(pids: list[int]) -> None:
    """Children before their parents (they were stopped in pid order): a shell whose job
    went on first would take it for stopped."""
    for pid in reversed(pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)


def save(
    root: str = "/",
    out: IO[bytes] | None = None,
    stop_others: bool = True,
    keep_running: bool = False,
    limit: int | None = None,
) -> None:
    """Write the tar of what changed under ``root`` to ``out`` (stdout). With ``stop_others``
    every other process is stopped first, so no file changes while it is read; they run on
    afterwards with ``keep_running`` (a snapshot), else only if the save fails (a pause).
    Files whose sizes add up past ``limit`` bytes (the sandbox's disk; a sparse file counts
    whole, as the tar holds it) fail the save: its host copy is outside the disk's quota."""
    stream = out if out is not None else sys.stdout.buffer
    stopped = _stop_others() if stop_others else []
    try:
        paths: list[bytes] = []
        total = 0
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for mount in _mounts(root):
                top = os.lstat(os.path.join(root, mount)).st_dev
                upper = _upper_device(os.path.join(root, mount))
                for path, entry in _walk(root, mount, strict=True):
                    if entry.name == _PROBE:
                        continue
                    paths.append(os.fsencode(path))
                    st = entry.stat(follow_symlinks=False)  # (nothing runs to remove it)
                    directory = stat.S_ISDIR(st.st_mode) and st.st_dev == top
                    if not directory and st.st_dev != upper:
                        continue  # the template's, or a file bound in (/etc/hosts)
                    if stat.S_ISSOCK(st.st_mode):
                        continue
                    total += st.st_size if stat.S_ISREG(st.st_mode) else 0
                    if limit is not None and total > limit:
                        raise OSError(f"the sandbox's files add up to more than its disk "
                                      f"({limit} bytes; sparse files count whole)")  # fmt: skip
                    _add(tar, os.path.join(root, path), path)
            listing = b"\0".join(paths)
            info = tarfile.TarInfo(PATHS_MEMBER)
            info.size = len(listing)
            tar.addfile(info, io.BytesIO(listing))
    except BaseException:
        _let_go(stopped)
        raise
    if keep_running:
        _let_go(stopped)


def _add(tar: tarfile.TarFile, source: str, name: str) -> None:
    """Every error is raised: the pause then fails and the sandbox runs on (a file left out
    would be lost, a hard link to it would break the load)."""
    info = tar.gettarinfo(source, arcname=name)
    if info.isreg():
        with open(source, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _same_directory(path: str, member: tarfile.TarInfo) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and stat.S_IMODE(st.st_mode) == member.mode
        and (st.st_uid, st.st_gid) == (member.uid, member.gid)
    )


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def load(root: str = "/", source: IO[bytes] | None = None) -> None:
    """Apply the tar :func:`save` wrote (from ``source``, stdin) to a fresh root: its files and
    directories go in, then every path the saved sandbox no longer had goes away."""
    stream = source if source is not None else sys.stdin.buffer
    keep: set[bytes] | None = None
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name == PATHS_MEMBER:
                data = tar.extractfile(member)
                keep = set(data.read().split(b"\0")) if data is not None else set()
                continue
            target = os.path.join(root, member.name)
            if member.isdir():
                if _same_directory(target, member):
                    continue
                # (a symlink to a directory is replaced too: isdir would follow it)
                if os.path.islink(target) or (
                    os.path.lexists(target) and not os.path.isdir(target)
                ):
                    _remove(target)
            else:
                _remove(target)
            tar.extract(member, root, numeric_owner=True, **trusted)  # type: ignore[arg-type]
    if keep is None:
        raise ValueError("the saved files end before their list of paths")
    for mount in _mounts(root):
        # Parents come before their children: a removed tree is not looked into again.
        for path, _ in list(_walk(root, mount)):
            if os.fsencode(path) not in keep:
                _remove(os.path.join(root, path))


def boot(argv: list[str]) -> None:
    """PID 1 of a sandbox rebooted from its files: apply them, then become its init."""
    load()
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)  # the saved files came on stdin: let go of them
    os.close(devnull)
    os.execv(argv[0], argv)
