"""How a PTY's process gets its terminal as its controlling one, without forking envd.

A terminal's process must lead a session of its own whose controlling terminal is the PTY
(``TIOCSCTTY``), or job control and Ctrl-C do not work. Done in the child between fork and
exec (a ``preexec_fn``), that forces ``Popen`` to fork envd's whole address space: ~40 ms in
gVisor, with the event loop and every other request stopped meanwhile. So the child execs
``setsid -c`` (util-linux, BusyBox and toybox all have it) in front of the command instead:
it leads a new session, takes its stdin (the PTY) as controlling terminal and execs the
command in the same process, so the pid the client gets is the command's. Without such a
``setsid`` in the sandbox's image, or for a command not found (its error is the start's
own, not a failed ``setsid``), the child forks the old way.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import struct
import subprocess
import termios

log = logging.getLogger("emberbox.envd.process")

PROBE_TIMEOUT_S = 10.0


def set_controlling_tty() -> None:
    """The fallback's ``preexec_fn``: runs in the forked child before exec."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def wrapped(argv: list[str], path: str) -> list[str] | None:
    """``argv`` behind ``setsid -c`` (``path``: where both are looked for), or None: fork.
    A relative path (``./run.sh``) names a file in the child's cwd, not envd's: forked."""
    if "/" in argv[0] and not os.path.isabs(argv[0]):
        return None
    setsid = shutil.which("setsid", path=path)
    command = shutil.which(argv[0], path=path)
    if setsid is None or command is None or not _sets_ctty(setsid):
        return None
    return [setsid, "-c", command, *argv[1:]]


@functools.cache
def _sets_ctty(setsid: str) -> bool:
    """Whether this ``setsid`` takes ``-c``: tried once, with a PTY of its own as stdin (a
    failure would otherwise end each terminal at its start)."""
    true = shutil.which("true", path=os.path.dirname(setsid) + os.pathsep + "/bin:/usr/bin")
    if true is None:
        return False
    master, slave = os.openpty()
    try:
        done = subprocess.run(
            [setsid, "-c", true],
            stdin=slave,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("PTYs start by forking: %s -c failed: %s", setsid, exc)
        return False
    finally:
        os.close(slave)
        os.close(master)
    if done.returncode != 0:
        log.info("PTYs start by forking: %s -c exited %d: %s", setsid, done.returncode,
                 done.stderr.decode(errors="replace").strip()[:200])  # fmt: skip
    return done.returncode == 0
