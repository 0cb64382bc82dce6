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
import struct
import subprocess
import termios
import threading
import time

log = logging.getLogger("emberbox.envd.process")

# Where setsid is looked for: never the request's PATH (envd would try, as root, whatever
# a client's PATH named).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROBE_TIMEOUT_S = 10.0
RETRY_S = 60.0  # after a try that got no answer (a timeout), PTYs fork this long
_sets_ctty: dict[str, bool] = {}  # setsid path → whether it takes -c (definite answers only)
_probing = threading.Lock()
_retry_at = 0.0


def set_controlling_tty() -> None:
    """The fallback's ``preexec_fn``: runs in the forked child before exec."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def wrapped(argv: list[str], path: str) -> list[str] | None:
    """``argv`` behind ``setsid -c``, or None: start it the old way (also until
    :func:`probe` has answered). ``path`` is the child's PATH: ``setsid`` looks the command
    up in it as ``Popen`` would (argv[0] is passed as given). Blocking (stats): call it off
    the event loop, in a thread holding the user's ids (``creds.as_user``): the file checks
    are the user's."""
    setsid = known()
    if setsid is None:
        return None
    name = argv[0]
    command = name if "/" in name else shutil.which(name, path=path)
    if command is None or not os.path.isabs(command) or not _startable(command):
        return None
    return [setsid, "-c", *argv]


def known() -> str | None:
    """The system's ``setsid`` if :func:`probe` found that it takes ``-c``."""
    setsid = shutil.which("setsid", path=SYSTEM_PATH)
    return setsid if setsid is not None and _sets_ctty.get(setsid) else None


def probe() -> str | None:
    """The system's ``setsid`` if it takes ``-c``; tried with a PTY of its own as stdin (a
    failure would otherwise end each terminal at its start). One try at a time: while one
    runs, or for ``RETRY_S`` after one got no answer, PTYs start the old way. A definite
    answer is kept. envd asks as it starts (as root, in a thread), so a template's snapshot
    holds the answer, and again at a PTY start while none is known."""
    global _retry_at
    setsid = shutil.which("setsid", path=SYSTEM_PATH)
    if setsid is None:
        return None
    known = _sets_ctty.get(setsid)
    if known is None:
        if time.monotonic() < _retry_at or not _probing.acquire(blocking=False):
            return None
        try:
            known = _sets_ctty.get(setsid)
            if known is None:
                known = _try(setsid)
                if known is None:
                    _retry_at = time.monotonic() + RETRY_S
                    return None
                _sets_ctty[setsid] = known
        finally:
            _probing.release()
    return setsid if known else None


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


def _startable(command: str, depth: int = 0) -> bool:
    """The calling thread's (effective) user may exec ``command``: a regular file it may
    reach and execute (noexec mounts included), with an ELF header, or a ``#!`` line naming
    an interpreter that is so too (the script then also readable). Its start then cannot fail
    where a fork's would have told the client."""
    try:
        if not os.path.isfile(command) or not os.access(command, os.X_OK, effective_ids=True):
            return False
        with open(command, "rb") as file:
            header = file.readline(256)
    except OSError:
        return False
    if header.startswith(b"\x7fELF"):
        return True
    if not header.startswith(b"#!") or depth >= 2:
        return False
    # As the kernel reads it: up to the newline, blanks and tabs apart (a \r is the name's).
    line = header[2:].split(b"\n", 1)[0].lstrip(b" \t")
    interpreter = line.replace(b"\t", b" ").split(b" ", 1)[0].decode(errors="replace")
    return os.path.isabs(interpreter) and _startable(interpreter, depth + 1)
