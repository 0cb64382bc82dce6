"""Exit descriptions in the words envd's Go runtime uses (``exit status 1``, ``signal: killed``)."""

from __future__ import annotations

import signal

_SIGNAL_WORDS = {
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
    signal.SIGINT: "interrupt",
    signal.SIGHUP: "hangup",
    signal.SIGQUIT: "quit",
    signal.SIGABRT: "aborted",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGPIPE: "broken pipe",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGUSR1: "user defined signal 1",
    signal.SIGUSR2: "user defined signal 2",
    signal.SIGALRM: "alarm clock",
}


def describe(returncode: int) -> tuple[int, bool, str]:
    """Map a Popen returncode to (exit_code, exited, status)."""
    if returncode >= 0:
        return returncode, True, f"exit status {returncode}"
    try:
        sig = signal.Signals(-returncode)
        word = _SIGNAL_WORDS.get(sig, sig.name.lower())
    except ValueError:
        word = f"signal {-returncode}"
    return -1, False, f"signal: {word}"
