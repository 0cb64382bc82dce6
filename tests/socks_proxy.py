"""A SOCKS5 proxy in a fake internet's namespace (``pproxy``), for egressProxy tests: it
requires a username and password on every connection, resolves names from the fake
internet's own table (remote DNS), and logs each tunnel it opens (``tunnels()``)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.fake_internet import FakeInternet

SOCKS_PORT = 1080

# pproxy installs uvloop's loop policy when uvloop is importable and then asks for a loop
# none was set for; without uvloop it runs on plain asyncio.
_RUN = """
import sys
sys.modules["uvloop"] = None
from pproxy.server import main
sys.argv = ["pproxy", *sys.argv[1:]]
main()
"""


@dataclass(frozen=True)
class SocksProxy:
    address: str  # host:port
    username: str
    password: str
    log: Path

    def tunnels(self) -> list[str]:
        """Each tunnel's destination as the client named it (``name:port`` or ``ip:port``)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.split(" -> ", 1)[1] for line in lines if line.startswith("socks5 ")]


@contextlib.contextmanager
def socks_proxy(inet: FakeInternet, username: str, password: str) -> Iterator[SocksProxy]:
    """On the fake internet's second public address; names resolve to what its DNS says
    (``ip netns exec`` puts ``/etc/netns/<ns>/hosts`` in place of ``/etc/hosts``)."""
    address = inet.public[1]
    etc = Path("/etc/netns") / inet.netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in inet.names.items())
    )
    workdir = Path(tempfile.mkdtemp(prefix="socks-"))
    log = workdir / "pproxy.log"
    listen = f"socks5://{address}:{SOCKS_PORT}#{username}:{password}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", inet.netns, sys.executable, "-u", "-c", _RUN, "-l", listen,
             "--auth", "0", "-v"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "Serving on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the SOCKS5 proxy did not start"
            time.sleep(0.05)
        yield SocksProxy(f"{address}:{SOCKS_PORT}", username, password, log)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(etc, ignore_errors=True)
