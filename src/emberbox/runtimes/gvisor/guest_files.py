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


def _walk(root: str, mount: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under the mount ``mount`` (relative to ``root``, the mount itself excluded)
    and its lstat; mounts under it (/proc, /dev, /tmp, bound files) are not descended into."""
    top = os.lstat(os.path.join(root, mount)).st_dev
    stack = [mount]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError:
            continue
        for name in names:
            path = os.path.join(rel, name)
            try:
                st = os.lstat(os.path.join(root, path))
            except OSError:
                continue
            yield path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == top:
                stack.append(path)


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


def save(root: str = "/", out: IO[bytes] | None = None, stop_others: bool = True) -> None:
    """Write the tar of what changed under ``root`` to ``out`` (stdout). With ``stop_others``
    every other process is stopped first, so no file changes while it is read; they run on
    only if the save fails (a saved sandbox is stopped for good)."""
    stream = out if out is not None else sys.stdout.buffer
    if stop_others:
        os.kill(-1, signal.SIGSTOP)
    try:
        paths: list[bytes] = []
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for mount in _mounts(root):
                top = os.lstat(os.path.join(root, mount)).st_dev
                upper = _upper_device(os.path.join(root, mount))
                for path, st in _walk(root, mount):
                    if os.path.basename(path) == _PROBE:
                        continue
                    paths.append(os.fsencode(path))
                    directory = stat.S_ISDIR(st.st_mode) and st.st_dev == top
                    if not directory and st.st_dev != upper:
                        continue  # the template's, or a file bound in (/etc/hosts)
                    if stat.S_ISSOCK(st.st_mode):
                        continue
                    _add(tar, os.path.join(root, path), path)
            listing = b"\0".join(paths)
            info = tarfile.TarInfo(PATHS_MEMBER)
            info.size = len(listing)
            tar.addfile(info, io.BytesIO(listing))
    except BaseException:
        if stop_others:
            os.kill(-1, signal.SIGCONT)
        raise


def _add(tar: tarfile.TarFile, source: str, name: str) -> None:
    try:
        info = tar.gettarinfo(source, arcname=name)
        if info.isreg():
            with open(source, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
    except OSError:
        pass  # gone or unreadable since it was listed: not kept


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
                if os.path.lexists(target) and not os.path.isdir(target):
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
