"""1 GiB each way through either face while the client stays under 100 MiB of memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import EnvdProcess

SIZE_MIB = 1024
CLIENT = Path(__file__).with_name("stream_client.py")


@pytest.mark.slow
@pytest.mark.parametrize("face", ["sync", "async"])
def test_one_gib_both_ways_in_bounded_memory(face: str, envd_debug: EnvdProcess) -> None:
    path = f"/tmp/emberbox-gib-{uuid.uuid4().hex[:8]}.bin"
    try:
        completed = subprocess.run(
            [sys.executable, str(CLIENT), face, str(SIZE_MIB), path],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(__file__).parents[2],
        )
        assert completed.returncode == 0, completed.stderr
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        assert report["bytes"] == SIZE_MIB * 1024 * 1024
        assert report["received"] == report["sent"]
        assert os.path.getsize(path) == SIZE_MIB * 1024 * 1024
        assert report["peak_rss_mib"] < 100, report
    finally:
        if os.path.exists(path):
            os.unlink(path)
