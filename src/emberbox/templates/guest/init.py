"""PID 1 of every sandbox: starts envd and the template's start command, forwards
loopback-only ports to the external address, serves ``sudo`` (see sudo_broker.py), reaps
every orphan and kills the biggest process when memory runs out (see oom.py). One process for
all of that keeps idle memory down. The sandbox stops when envd exits, since nothing can reach
it then.

Configured by environment (set by the runtime from the template): ``EMBERBOX_DEFAULT_USER``,
``EMBERBOX_DEFAULT_WORKDIR``, ``EMBERBOX_START_CMD``.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from ...vocabulary import (  # a leaf module: cheap to import before envd starts
    DEFAULT_USER,
    DEFAULT_WORKDIR,
    ENVD_PORT,
)

# envd is what the host waits for, so it is spawned before this module imports anything
# else: asyncio and the helpers load while envd is already starting.

ENVD = ("/opt/emberbox/venv/bin/python", "-m", "emberbox.envd")


def _start_envd(user: str, workdir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*ENVD, "--port", str(ENVD_PORT), "--default-user", user, "--default-workdir", workdir],
        stdin=subprocess.DEVNULL,
    )


def _start_cmd(cmd: str, user: str, workdir: str) -> subprocess.Popen[bytes]:
    """The template's start command, as its user, logging to /var/log/emberbox-start.log."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        pw = pwd.getpwnam("root")
    env = {**os.environ, "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    log = open("/var/log/emberbox-start.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            ["/bin/bash", "-l", "-c", cmd],
            cwd=workdir if os.path.isdir(workdir) else pw.pw_dir,
            env=env,
            user=pw.pw_uid,
            group=pw.pw_gid,
            extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()


def _spawn_all(envd_pid: int | None) -> int:
    """Start envd (unless /opt/emberbox/init already did) and the start command."""
    user = os.environ.get("EMBERBOX_DEFAULT_USER", DEFAULT_USER)
    workdir = os.environ.get("EMBERBOX_DEFAULT_WORKDIR", DEFAULT_WORKDIR)
    if envd_pid is None:
        envd_pid = _start_envd(user, workdir).pid
    start = os.environ.get("EMBERBOX_START_CMD")
    if start:
        _start_cmd(start, user, workdir)
    return envd_pid


async def supervise(envd_pid: int) -> int:
    import asyncio
    import signal
    import threading

    from .oom import OomGuard
    from .portfwd import forward_forever
    from .reaper import Reaper
    from .sudo_broker import serve

    reaper = Reaper()
    guard = OomGuard(protected=lambda: (envd_pid,))
    threading.Thread(target=guard.run_forever, name="oom-guard", daemon=True).start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, reaper.reap)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, os.kill, envd_pid, signal.SIGTERM)
    helpers = [
        asyncio.create_task(forward_forever(skip=frozenset({ENVD_PORT}))),
        asyncio.create_task(serve(reaper)),
    ]
    reaper.reap()  # anything that exited before the handler was installed
    code = await asyncio.to_thread(reaper.wait, envd_pid)
    for task in helpers:
        task.cancel()
    return code


def _wait_for_listener(port: int, timeout: float = 15.0) -> None:
    """Sleep (cheaply, in-process) until something listens on ``port``, so that envd boots
    without a second interpreter importing modules next to it."""
    import time

    needle = f":{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/net/tcp") as f:
                if needle in f.read():
                    return
        except OSError:
            return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    """``--envd-pid N``: envd was started by the shell init that exec'd us (the fast path:
    envd starts without waiting for a second Python interpreter to load first)."""
    envd_pid = int(argv[argv.index("--envd-pid") + 1]) if "--envd-pid" in argv else None
    envd_pid = _spawn_all(envd_pid)
    _wait_for_listener(ENVD_PORT)
    import asyncio

    return asyncio.run(supervise(envd_pid))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
