"""Filesystem work done with exactly the permissions of the requesting user.

envd runs as root, yet a request made as ``user`` must not read ``/etc/shadow`` or write
``/root``. Instead of re-implementing the kernel's rules (mode bits, supplementary groups, ACLs,
sticky directories, read-only mounts), every operation runs in a worker thread whose own
credentials are switched to the user's for the length of the call, and the kernel decides.

Linux and gVisor keep credentials per thread; only glibc's wrappers broadcast a change to every
thread of the process, so the switch uses the raw ``setresuid``/``setresgid``/``setgroups``
system calls and affects the calling thread alone. Only the effective ids change: the real and
saved ids stay 0, which is what lets the worker become root again afterwards. (``setfsuid``
would be narrower, but gVisor answers it with ENOSYS.)

A worker runs one call at a time and sets every id at the start of each call, so concurrent
requests of different users never share credentials, and a worker that somehow kept a user's
ids would only hold less power, never more. When envd itself is not root (tests, development)
nothing is switched: operations then run with envd's own, smaller, permissions.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from .users import User

P = ParamSpec("P")
T = TypeVar("T")

# (setgroups, setresuid, setresgid) system call numbers.
_SYSCALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}
_KEEP = -1  # "leave this id as it is" for setres[ug]id
WORKERS = 8


@dataclass(frozen=True)
class Ids:
    uid: int
    gid: int
    groups: tuple[int, ...]


class _Switcher:
    """Raw per-thread credential system calls, resolved once."""

    def __init__(self) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None:
            raise RuntimeError(f"envd cannot switch credentials on {platform.machine()}")
        self.setgroups, self.setresuid, self.setresgid = numbers
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        # What a worker returns to after every call: envd's own identity.
        self.home = Ids(os.geteuid(), os.getegid(), tuple(os.getgroups()))

    def _call(self, number: int, *args: int) -> None:
        if self._libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)) == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"credential switch failed: {os.strerror(err)}")

    def become(self, ids: Ids) -> None:
        # Root first: setgroups and setresgid need CAP_SETGID, lost while the euid is a user's.
        self._call(self.setresuid, _KEEP, self.home.uid, _KEEP)
        groups = (ctypes.c_uint * max(len(ids.groups), 1))(*ids.groups)
        self._call(self.setgroups, len(ids.groups), ctypes.addressof(groups))
        self._call(self.setresgid, _KEEP, ids.gid, _KEEP)
        self._call(self.setresuid, _KEEP, ids.uid, _KEEP)

    def become_for_spawn(self, ids: Ids) -> None:
        """Real and effective ids too, so a child spawned from this thread (vfork + exec
        inherits the thread's credentials) is the user through and through; bash would
        otherwise see real != effective and drop to the real id, root. The saved uid stays 0,
        which is what lets :meth:`restore_after_spawn` return."""
        self._call(self.setresuid, _KEEP, self.home.uid, _KEEP)
        groups = (ctypes.c_uint * max(len(ids.groups), 1))(*ids.groups)
        self._call(self.setgroups, len(ids.groups), ctypes.addressof(groups))
        self._call(self.setresgid, ids.gid, ids.gid, _KEEP)
        self._call(self.setresuid, ids.uid, ids.uid, _KEEP)

    def restore_after_spawn(self) -> None:
        self._call(self.setresuid, self.home.uid, self.home.uid, _KEEP)
        self._call(self.setresgid, self.home.gid, self.home.gid, _KEEP)
        self.become(self.home)


_lock = threading.Lock()
_state: tuple[_Switcher | None, ThreadPoolExecutor] | None = None


def _pool() -> tuple[_Switcher | None, ThreadPoolExecutor]:
    """The switcher (None when envd is not root) and the executor only it uses, made once."""
    global _state
    with _lock:
        if _state is None:
            switcher = _Switcher() if os.geteuid() == 0 else None
            _state = (switcher, ThreadPoolExecutor(WORKERS, thread_name_prefix="envd-as-user"))
        return _state


def _run(switcher: _Switcher | None, ids: Ids, call: Callable[[], T]) -> T:
    if switcher is None:
        return call()
    try:
        switcher.become(ids)  # inside the try: a switch failing halfway is undone too
        return call()
    finally:
        switcher.become(switcher.home)


async def _submit(user: User, call: Callable[[], T], release: Callable[[T], object] | None) -> T:
    switcher, executor = _pool()
    ids = Ids(user.uid, user.gid, tuple(user.groups()))
    future = asyncio.get_running_loop().run_in_executor(executor, _run, switcher, ids, call)
    if release is None:
        return await future
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def orphaned(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                release(done.result())

        future.add_done_callback(orphaned)
        raise


_spawner: ThreadPoolExecutor | None = None


def _spawn_in_thread(switcher: _Switcher | None, ids: Ids, call: Callable[[], T]) -> T:
    if switcher is None or ids.uid == switcher.home.uid:
        return call()
    try:
        switcher.become_for_spawn(ids)
        return call()
    finally:
        switcher.restore_after_spawn()


async def spawn_as_user(user: User, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a ``Popen`` without ``user=``) in a thread holding all of ``user``'s ids.

    Why: ``Popen(user=...)`` cannot use vfork, and forking envd's whole address space costs
    ~40 ms in gVisor; a child vforked from a thread with the user's credentials costs none of
    that. While the call runs the thread's real uid is the user's, so a process of that user
    could signal this one thread; envd spends ~1 ms per spawn there. Starts as envd's own user
    run in the same threads: a vfork parent waits for the child's exec, the event loop not.
    """
    global _spawner
    switcher, _ = _pool()
    with _lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(2, thread_name_prefix="envd-spawn")
    ids = Ids(user.uid, user.gid, tuple(user.groups()))
    return await asyncio.get_running_loop().run_in_executor(
        _spawner, _spawn_in_thread, switcher, ids, fn
    )


async def as_user(user: User, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in a worker thread holding ``user``'s uid, gid and supplementary groups."""
    return await _submit(user, functools.partial(fn, *args, **kwargs), None)


async def acquire_as_user(
    user: User,
    release: Callable[[T], object],
    fn: Callable[P, T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Like :func:`as_user` for calls that return a resource (an open fd): if the caller is
    cancelled while the worker is still busy, ``release`` gets the result instead of leaking it."""
    return await _submit(user, functools.partial(fn, *args, **kwargs), release)
