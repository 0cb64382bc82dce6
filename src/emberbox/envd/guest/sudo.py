"""``sudo`` for gVisor sandboxes: hands the command and our stdio to the root broker.

Supports the options scripts use: ``-u USER``, ``-E``, ``-H``, ``-n``, ``-i``, ``-s``, ``--``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time

# The broker's socket (guest/sudo_broker.py); kept here so this shim, run for every ``sudo``,
# imports nothing beyond the standard library's basics.
SOCKET_PATH = "/run/emberbox/sudo.sock"
# Signals the shim passes on to the command (which leads a process group of its own), as real
# sudo relays them: a terminal's Ctrl-C and Ctrl-\\, envd's and kill's, a hang-up.
FORWARDED = frozenset(
    {signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
)

USAGE = "usage: sudo [-u user] [-E] [-H] [-n] [-i | -s] [--] command [args...]"


def parse(argv: list[str]) -> tuple[str, bool, str | None, list[str]]:
    user, keep_env, shell = "root", False, None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt == "--":
            i += 1
            break
        if opt == "-u" and i + 1 < len(argv):
            user, i = argv[i + 1], i + 2
            continue
        if opt.startswith("-u") and len(opt) > 2:
            user = opt[2:]
        elif opt in ("-E", "--preserve-env"):
            keep_env = True
        elif opt in ("-H", "-n", "--non-interactive", "-S"):
            pass
        elif opt in ("-i", "--login"):
            shell = "login"
        elif opt in ("-s", "--shell"):
            shell = "shell"
        elif opt in ("-v", "-l", "-k", "-K"):
            raise SystemExit(0)
        else:
            raise SystemExit(f"sudo: unsupported option {opt}\n{USAGE}")
        i += 1
    command = argv[i:]
    if shell == "login":
        command = ["/bin/bash", "-l", *(["-c", " ".join(command)] if command else [])]
    elif shell == "shell":
        command = ["/bin/bash", *(["-c", " ".join(command)] if command else [])]
    if not command:
        raise SystemExit(USAGE)
    return user, keep_env, shell, command


def main(argv: list[str] | None = None) -> int:
    user, keep_env, shell, command = parse(sys.argv[1:] if argv is None else argv)
    base_env = {k: v for k, v in os.environ.items() if k in ("TERM", "PATH", "LANG", "DISPLAY")}
    env = dict(os.environ) if keep_env else base_env
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    request: dict[str, object] = {
        "argv": command,
        "user": user,
        "env": env,
        "cwd": None if shell else os.getcwd(),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        # Forwarding starts before the request goes: a signal between the command's start
        # and a handler put in place after it killed this shim, unforwarded.
        pending: list[int] = []  # signals that came before the request went
        sent = False

        def forward(signum: int, _frame: object) -> None:
            if not sent:
                pending.append(signum)
                return
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!i", signum))

        # One this shim was started ignoring (``nohup sudo ...``) is the command's to ignore
        # too, as real sudo's command inherits it: not forwarded, and the broker is told.
        ignored = [int(s) for s in FORWARDED if signal.getsignal(s) is signal.SIG_IGN]
        request["ignored"] = ignored
        for signum in FORWARDED:
            if int(signum) not in ignored:
                signal.signal(signum, forward)
        for attempt in range(50):  # the broker starts a moment after envd at boot
            try:
                conn.connect(SOCKET_PATH)
                break
            except OSError as exc:
                if attempt == 49:
                    print(f"sudo: broker unavailable ({exc})", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        conn.sendmsg(
            [json.dumps(request).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", 0, 1, 2))],
        )
        sent = True
        for early in pending:
            forward(early, None)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    if len(reply) < 4:
        print("sudo: broker closed the connection", file=sys.stderr)
        return 1
    message = reply[4:]
    if message:
        sys.stderr.write(message.decode(errors="replace"))
    return int(struct.unpack("!i", reply[:4])[0])


if __name__ == "__main__":
    sys.exit(main())
