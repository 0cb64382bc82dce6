"""The one reader of the host's /proc/meminfo, on a file written by the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from emberbox.host import cgroups, meminfo
from emberbox.host.meminfo import host_free_mb

SAMPLE = """MemTotal:       24576000 kB
MemFree:        20000000 kB
MemAvailable:    2097152 kB
SwapTotal:             0 kB
"""


def test_fields_are_read_in_bytes_and_a_missing_one_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "meminfo"
    path.write_text(SAMPLE)
    monkeypatch.setattr(meminfo, "MEMINFO", path)
    assert meminfo.meminfo_bytes("MemTotal") == 24576000 * 1024
    assert meminfo.meminfo_bytes("Mem") is None  # a prefix of a field is not that field
    assert meminfo.meminfo_bytes("Hugepagesize") is None
    assert host_free_mb() == 2048 and cgroups.swap_total() == 0
    path.unlink()
    assert meminfo.meminfo_bytes("MemTotal") is None and host_free_mb() == 0
