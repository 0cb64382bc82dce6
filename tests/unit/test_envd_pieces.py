from __future__ import annotations

import os
import signal

import pytest

from emberbox._connect.errors import ConnectError
from emberbox.envd.process.exit_status import describe
from emberbox.envd.users import User, resolve_path
from emberbox.signed_urls import sign, verify

HOME = User("user", 1000, 1000, "/home/user", "/bin/bash")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a.txt", "/home/user/a.txt"),
        ("~", "/home/user"),
        ("~/x/../y", "/home/user/y"),
        ("/tmp//a/./b", "/tmp/a/b"),
        ("../../etc/passwd", "/etc/passwd"),
    ],
)
def test_resolve_path(raw: str, expected: str) -> None:
    assert resolve_path(raw, HOME) == expected


def test_resolve_path_refuses_nul() -> None:
    with pytest.raises(ConnectError):
        resolve_path("/tmp/a\x00b", HOME)


def test_exit_descriptions_match_go_wording() -> None:
    assert describe(0) == (0, True, "exit status 0")
    assert describe(3) == (3, True, "exit status 3")
    assert describe(-signal.SIGKILL) == (-1, False, "signal: killed")
    assert describe(-signal.SIGTERM) == (-1, False, "signal: terminated")


def test_signature_matches_the_official_sdk() -> None:
    from e2b.sandbox.signature import get_signature

    for user in (None, "user"):
        theirs = get_signature("/a b/c.txt", "read", user, "tok")["signature"]
        assert sign("/a b/c.txt", "read", user or "", "tok", None) == theirs
        assert verify(theirs, "/a b/c.txt", "read", user or "", "tok", None) is None
    assert verify(sign("/a", "read", "u", "tok", None), "/a", "read", "u", "tok", None) is None
    assert verify(sign("/a", "read", "u", "tok", None), "/a", "write", "u", "tok", None) == (
        "invalid signature"
    )


def test_exit_fd_emulation_signals_without_reaping() -> None:
    import select
    import subprocess

    from emberbox.envd.process.exit_fd import _emulated

    child = subprocess.Popen(["sh", "-c", "exit 3"])
    fd = _emulated(child.pid)
    try:
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert child.poll() == 3  # still ours to reap
    finally:
        os.close(fd)
