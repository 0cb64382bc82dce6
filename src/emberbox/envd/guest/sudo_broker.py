"""Root side of ``sudo`` in gVisor sandboxes.

gVisor always sets PR_SET_NO_NEW_PRIVS (runsc: "noNewPrivileges ignored"), so setuid binaries
never gain root and the real sudo cannot work. The sandbox convention is passwordless sudo
for ``user``, so we provide it the other way round: a root broker on a Unix socket runs the
command for callers in group ``sudo`` (checked with SO_PEERCRED) on the caller's own stdin,
stdout and stderr (passed with SCM_RIGHTS), and answers with the exit code.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import struct
import subprocess

from .sudo import SOCKET_PATH

MAX_HEADER = 1 << 20


def _allowed(uid: int) -> bool:
    if uid == 0:
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrnam("sudo").gr_mem
    except KeyError:
        return False


def _recv_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(MAX_HEADER, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return json.loads(data.decode()), list(fds)


def _spawn(request: dict[str, object], fds: list[int]) -> subprocess.Popen[bytes]:
    pw = pwd.getpwnam(str(request.get("user") or "root"))
    env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}  # type: ignore[call-overload]
    env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    env["SUDO_USER"] = str(request["caller"])
    argv = [str(a) for a in list(request["argv"])]  # type: ignore[call-overload]
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
    )


def _serve_one(conn: socket.socket) -> None:
    with conn:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        request, fds = _recv_request(conn)
        try:
            if not _allowed(uid) or len(fds) != 3:
                conn.sendall(struct.pack("!i", 1) + b"not in the sudoers group\n")
                return
            request["caller"] = pwd.getpwuid(uid).pw_name
            try:
                proc = _spawn(request, fds)
            except (OSError, KeyError) as exc:
                conn.sendall(struct.pack("!i", 1) + f"sudo: {exc}\n".encode())
                return
        finally:
            for fd in fds:
                os.close(fd)
        code = proc.wait()
        code = 128 - code if code < 0 else code
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!i", code))


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
        loop.run_in_executor(None, _serve_one, conn)
