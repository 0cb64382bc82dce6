"""write_atomic: a process killed while it writes leaves the file as it was."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emberbox.host.files import write_atomic

# Dies by SIGKILL at the last step of the write: the rename (an audit event of os.replace).
_KILLED_WRITER = """
import os, signal, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from emberbox.host.files import write_atomic

def die(event, args):
    if event == "os.rename":
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(die)
write_atomic(Path(sys.argv[1]), "{" * 100_000)
"""


def test_a_writer_killed_before_it_finished_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=False)
    assert child.returncode == -signal.SIGKILL
    assert path.read_text() == '{"old": true}'
    write_atomic(path, '{"new": true}')  # the leftover beside it is no obstacle
    assert path.read_text() == '{"new": true}'


def test_private_files_are_for_the_owner_alone(tmp_path: Path) -> None:
    write_atomic(tmp_path / "key", b"secret", private=True)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "key").read_bytes() == b"secret"


def test_writers_of_one_file_at_once_each_rename_a_whole_file(tmp_path: Path) -> None:
    """Two nodes sharing a template store save its manifests: no writer fails, no file is
    a mix of two writes, nothing is left beside it."""
    path = tmp_path / "base.json"
    payloads = [bytes([ord("a") + n]) * 2_000_000 for n in range(4)]

    def write(n: int) -> None:
        for _ in range(10):
            write_atomic(path, payloads[n])

    with ThreadPoolExecutor(len(payloads)) as pool:
        list(pool.map(write, range(len(payloads))))
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["base.json"]
    assert path.stat().st_mode & 0o777 == 0o644
