"""Root side of ``sudo`` in gVisor sandboxes.

gVisor always sets PR_SET_NO_NEW_PRIVS (runsc: "noNewPrivileges ignored"), so setuid binaries
never gain root and the real sudo cannot work. The sandbox convention is passwordless sudo
for ``user``, so we provide it the other way round: a root broker on a Unix socket runs the
command for callers in group ``sudo`` (checked with SO_PEERCRED) on the caller's own stdin,
stdout and stderr (passed with SCM_RIGHTS), and answers with the exit code.

The command leads a process group of its own (the caller's may be in another session, a
PTY's, which no process group can join): the shim sends it the signals it gets (Ctrl-C in a
terminal, envd's kill at a command's end of time) as 4-byte numbers, and a shim gone (killed
with its command's group, SIGKILL) takes the command with it, as real sudo's would go.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import grp
import json
import os
import pwd
import select
import signal
import socket
import struct
import subprocess
import threading

from ..process.exit_fd import exit_fd
from .sudo import FORWARDED, SOCKET_PATH

MAX_HEADER = 1 << 20


def _allowed(uid: int) -> bool:
    if uid == 0:
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrnam("sudo").gr_mem
    except KeyError:
        return False


def _recv_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The request's bytes and the fds that came with them (however many: the caller's to
    close, whatever the request is)."""
    fds = array.array("i")
    # (close-on-exec: a process envd starts meanwhile must not inherit the caller's stdio,
    # which would hold its pipes open after the command ended)
    data, ancdata, _, _ = conn.recvmsg(
        MAX_HEADER, socket.CMSG_SPACE(3 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _spawn(request: dict[str, object], fds: list[int]) -> subprocess.Popen[bytes]:
    pw = pwd.getpwnam(str(request.get("user") or "root"))
    env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}  # type: ignore[call-overload]
    env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    env["SUDO_USER"] = str(request["caller"])
    argv = [str(a) for a in list(request["argv"])]  # type: ignore[call-overload]
    ignored = frozenset(int(n) for n in list(request.get("ignored") or []))  # type: ignore[call-overload]
    cwd = str(request.get("cwd") or pw.pw_dir)
    return subprocess.Popen(
        argv,
        stdin=fds[0],
        stdout=fds[1],
        stderr=fds[2],
        cwd=cwd if os.path.isdir(cwd) else pw.pw_dir,
        env=env,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
        process_group=0,
        preexec_fn=functools.partial(_dispositions, ignored),
    )


def _dispositions(ignored: frozenset[int]) -> None:
    """In the command's process, before its exec: the forwarded signals as its caller had
    them (ignored under ``nohup``), never as envd has them (one envd ignores would stay
    ignored through the exec, and a shell cannot even trap it)."""
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_IGN if int(signum) in ignored else signal.SIG_DFL)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        fds: list[int] = []
        try:
            data, fds = _recv_request(conn)
            if not _allowed(uid) or len(fds) != 3:
                conn.sendall(struct.pack("!i", 1) + b"not in the sudoers group\n")
                return
            try:
                request = json.loads(data.decode())
                request["caller"] = pwd.getpwuid(uid).pw_name
                proc = _spawn(request, fds)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                conn.sendall(struct.pack("!i", 1) + f"sudo: {exc}\n".encode())
                return
        finally:
            for fd in fds:
                os.close(fd)
        code = _follow(conn, proc)
        code = 128 - code if code < 0 else code
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!i", code))


def _follow(conn: socket.socket, proc: subprocess.Popen[bytes]) -> int:
    """Pass the signals the shim sends on to the command's group until it exits; the shim
    gone, the group is killed. Its exit status."""
    try:
        exited = exit_fd(proc.pid)
    except (OSError, RuntimeError):  # (out of fds or threads: it runs on unfollowed)
        return proc.wait()
    pending = b""
    events = select.poll()  # (not select(): envd's fds may number past FD_SETSIZE)
    events.register(conn, select.POLLIN)
    events.register(exited, select.POLLIN)
    try:
        while proc.poll() is None:
            if conn.fileno() not in (fd for fd, _ in events.poll()):
                continue
            try:
                data = conn.recv(64)
            except OSError:
                data = b""
            if not data:  # the shim is gone (killed, with its command's group)
                _signal_group(proc, signal.SIGKILL)
                break
            pending += data
            while len(pending) >= 4:
                (signum,), pending = struct.unpack("!i", pending[:4]), pending[4:]
                if signum in FORWARDED:
                    _signal_group(proc, signum)
        return proc.wait()
    finally:
        os.close(exited)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.returncode is None:  # (reaped: its number may be another's)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


async def serve() -> None:
    os.makedirs(os.path.dirname(SOCKET_PATH), mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET_PATH)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET_PATH)
    os.chmod(SOCKET_PATH, 0o666)
    server.listen(64)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(server)
        conn.setblocking(True)
        # A thread of its own, for as long as the command runs: not the loop's default
        # executor, which a few long sudo'd commands would fill for every to_thread in envd.
        threading.Thread(target=_serve_one, args=(conn,), name="sudo", daemon=True).start()
