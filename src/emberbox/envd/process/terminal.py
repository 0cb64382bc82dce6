"""How a PTY's process gets its terminal as its controlling one, without forking envd.

A terminal's process must lead a session of its own whose controlling terminal is the PTY
(``TIOCSCTTY``), or job control and Ctrl-C do not work. Done in the child between fork and
exec (a ``preexec_fn``), that forces ``Popen`` to fork envd's whole address space: ~120 ms
in gVisor, with the event loop and every other request stopped meanwhile. So the child execs
``setsid -c`` (util-linux, BusyBox and toybox all have it) in front of the command instead:
it leads a new session, takes its stdin (the PTY) as controlling terminal and execs the
command in the same process, so the pid the client gets is the command's. The child must
not lead a process group already (no ``start_new_session``): util-linux's ``setsid`` would
fork then, and the pid given out would be one that exits at once.

Only a command whose start cannot fail in ways the client would have been told about (a
missing or non-executable file, one with no ``#!`` or ELF header) goes that way: those start
the old way, so the start fails as it did, instead of a terminal that prints ``setsid``'s
error and exits. So do commands given as a relative path (``./run.sh``: a file in the
child's cwd), and every PTY where the image has no ``setsid`` that takes ``-c``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import struct
import subprocess
import termios

log = logging.getLogger("emberbox.envd.process")

# Where setsid is looked for: never the request's PATH (envd would try, as root, whatever
# a client's PATH named).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROBE_TIMEOUT_S = 10.0
_sets_ctty: dict[str, bool] = {}  # setsid path → whether it takes -c (definite answers only)


def set_controlling_tty() -> None:
    """The fallback's ``preexec_fn``: runs in the forked child before exec."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def wrapped(argv: list[str], path: str) -> list[str] | None:
    """``argv`` behind ``setsid -c``, or None: start it the old way. ``path`` is the child's
    PATH: ``setsid`` looks the command up in it as ``Popen`` would (argv[0] is passed as
    given). Blocking (stats, and the probe once): call it off the event loop."""
    setsid = probe()
    if setsid is None:
        return None
    name = argv[0]
    command = name if "/" in name else shutil.which(name, path=path)
    if command is None or not os.path.isabs(command) or not _runs_for_anyone(command):
        return None
    return [setsid, "-c", *argv]


def probe() -> str | None:
    """The system's ``setsid`` if it takes ``-c``; tried once (a definite answer is kept),
    with a PTY of its own as stdin: a failure would otherwise end each terminal at its start.
    envd warms this at its start, so a template's snapshot already holds the answer."""
    setsid = shutil.which("setsid", path=SYSTEM_PATH)
    if setsid is None:
        return None
    if setsid not in _sets_ctty:
        answer = _try(setsid)
        if answer is None:  # (a timeout, a failed spawn: asked again next time)
            return None
        _sets_ctty[setsid] = answer
    return setsid if _sets_ctty[setsid] else None


def _try(setsid: str) -> bool | None:
    true = shutil.which("true", path=SYSTEM_PATH)
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
        log.info("%s -c not tried: %s", setsid, exc)
        return None
    finally:
        os.close(slave)
        os.close(master)
    if done.returncode != 0:
        log.info("PTYs start by forking: %s -c exited %d: %s", setsid, done.returncode,
                 done.stderr.decode(errors="replace").strip()[:200])  # fmt: skip
    return done.returncode == 0


def _runs_for_anyone(command: str) -> bool:
    """A regular file every user may reach and execute (a script: read too), with a header
    exec takes: its start cannot fail for the user where a fork's would have told the
    client. Checked as root for everyone, so no finer."""
    try:
        real = os.path.realpath(command)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXOTH:
            return False
        folder = os.path.dirname(real)
        while True:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
            if folder == "/":
                break
            folder = os.path.dirname(folder)
        with open(real, "rb") as file:
            header = file.read(4)
    except OSError:
        return False
    if header.startswith(b"#!"):
        return bool(st.st_mode & stat.S_IROTH)
    return header == b"\x7fELF"
