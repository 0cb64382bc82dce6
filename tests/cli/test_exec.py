"""``emberbox sandbox exec`` streams output and returns the command's exit code."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import EnvdProcess


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emberbox.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMBERBOX_DEBUG": "true"},
    )


def test_exec_streams_and_returns_exit_code(envd_debug: EnvdProcess) -> None:
    done = _cli("sandbox", "exec", "debug_sandbox_id", "--", "echo out; echo err >&2; exit 4")
    assert done.returncode == 4
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"
    ok = _cli("sandbox", "exec", "debug_sandbox_id", "--user", "root", "--", "id", "-u")
    assert (ok.returncode, ok.stdout) == (0, "0\n")


def test_errors_are_one_line_and_non_zero(envd_debug: EnvdProcess) -> None:
    bad = _cli("sandbox", "exec", "debug_sandbox_id", "--cwd", "/nope", "--", "true")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: InvalidArgumentException")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_exec_runs_the_exact_argv(envd_debug: EnvdProcess) -> None:
    """Several arguments are one argv, not words to re-split: ``sh -c 'exit 7'`` exits 7."""
    seven = _cli("sandbox", "exec", "debug_sandbox_id", "--", "sh", "-c", "exit 7")
    assert seven.returncode == 7, seven.stderr
    both = _cli("sandbox", "exec", "debug_sandbox_id", "--", "sh", "-c", "echo a; echo b")
    assert (both.returncode, both.stdout) == (0, "a\nb\n")
    odd = 'it\'s  "quoted" $HOME `x` \\ *'
    printed = _cli("sandbox", "exec", "debug_sandbox_id", "--", "printf", "%s|", odd, "two words")
    assert (printed.returncode, printed.stdout) == (0, f"{odd}|two words|")
