"""runsc's view of /proc/sys (runsc.py, "Quirks"): no ``net``, so its "root netns?" probe
(``/proc/sys/net/core/rmem_default``) says no; ``kernel``, ``vm`` and ``fs`` are the host's;
and nothing of it is left in the host's mount table afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

from emberbox.host import rootfs
from emberbox.runtimes.gvisor.runsc import with_hidden_net_sysctls

from .gvisor_support import require_host

PROBE = (
    "test ! -e /proc/sys/net/core/rmem_default && echo net-hidden; ls /proc/sys; "
    "cat /proc/sys/kernel/ostype /proc/sys/vm/overcommit_memory /proc/sys/fs/nr_open"
)


def test_runsc_runs_with_the_net_sysctls_hidden(tmp_path: Path) -> None:
    require_host()
    staging = tmp_path / "data dir" / "psys"  # a space: the mount table escapes it
    argv = with_hidden_net_sysctls(staging, ["sh", "-c", PROBE])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    host = [Path(f"/proc/sys/{p}").read_text().strip()
            for p in ("kernel/ostype", "vm/overcommit_memory", "fs/nr_open")]  # fmt: skip
    assert out == ["net-hidden", "fs", "kernel", "vm", *host]
    assert Path("/proc/sys/net/core/rmem_default").exists(), "the host's view is unchanged"
    assert not rootfs.mounted(staging) and not rootfs.mounted(Path("/proc/sys/kernel"))
    table = staging.with_name("psys.fstab")
    written = table.stat().st_mtime_ns
    assert subprocess.run(with_hidden_net_sysctls(staging, ["true"])).returncode == 0
    assert table.stat().st_mtime_ns == written, "the same table is reused, not rewritten"
