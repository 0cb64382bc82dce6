"""The kernel's side of the egress audit log: what the firewall forwards and refuses.

``ulogd`` (netfilter's own logging daemon, Debian ``ulogd2`` + ``ulogd2-json``) reads the two
kernel feeds and hands them here as JSON lines over a unix socket:

* **conntrack events** (NFCT): a sandbox's new connection (``NEW``, allowed: it passed the
  firewall) and its end (``DESTROY``, with the bytes each way; conntrack accounting is turned
  on). The kernel forgets a closed TCP connection only after TIME_WAIT (two minutes), so its
  bytes arrive then. Connections the firewall redirected to the egress gateway (their ct mark
  has :data:`~.network.GATEWAY_MARK`) are the gateway's to record.
* **NFLOG**: the first packet of a refused connection, logged by the sandbox's chain with a
  prefix naming the rule that refused it (``network.py``), rate-limited per sandbox.

A node runs one ulogd (NFLOG groups are exclusive, so each instance has its own,
:func:`~.network.log_group`); a leftover of a killed node is killed first. Events that arrive while
the node restarts are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import time
from collections import OrderedDict
from ipaddress import IPv4Network, ip_address
from pathlib import Path
from typing import Any

from .egress_audit import (
    ALLOWED,
    DENIED,
    RULE_ALLOW_OUT,
    RULE_INTERNET,
    EgressAudit,
    EgressEvent,
    Ticket,
)
from .network import ALLOW_MARK, GATEWAY_MARK, LOG_PREFIX, log_group

log = logging.getLogger(__name__)

_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
_NEW, _DESTROY = 1, 4
MAX_OPEN_FLOWS = 65536  # conntrack ids remembered until their DESTROY
REPEAT_S = 3.0  # a refused packet like one logged this recently is a retransmission


def _plugin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/ulogd")) + sorted(glob.glob("/usr/lib/ulogd"))
    return found[0] if found else None


_PLUGINS = ("inppkt_NFLOG", "inpflow_NFCT", "raw2packet_BASE", "filter_IP2STR", "output_JSON")


def _config(plugins: str, group: int, subnet: str, socket_path: Path, log_file: Path) -> str:
    plugin = "\n".join(f'plugin="{plugins}/ulogd_{name}.so"' for name in _PLUGINS)
    return f"""[global]
logfile="{log_file}"
loglevel=5
{plugin}
stack=log1:NFLOG,base1:BASE,ip2str1:IP2STR,json1:JSON
stack=ct1:NFCT,ip2str2:IP2STR,json2:JSON
[log1]
group={group}
netlink_qthreshold=1
[ct1]
hash_enable=0
event_mask=0x00000005
accept_src_filter={subnet}
[json1]
sync=1
mode="unix"
file="{socket_path}"
[json2]
sync=1
mode="unix"
file="{socket_path}"
"""


def _time(item: dict[str, Any], key: str) -> float:
    if f"{key}.sec" not in item:
        return time.time()
    return int(item[f"{key}.sec"]) + int(item.get(f"{key}.usec", 0)) / 1e6


class FlowMonitor:
    """Runs the node's ulogd and turns its lines into audit records."""

    def __init__(
        self, directory: Path, instance: str, subnet: IPv4Network, audit: EgressAudit
    ) -> None:
        self.directory = directory
        self.group = log_group(instance)
        self.subnet = subnet  # the sandboxes' links: ulogd passes only flows from there
        self.audit = audit
        self.socket_path = Path(f"/run/emberbox/audit-{instance}.sock")
        self._process: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._readers: set[asyncio.Task[None]] = set()  # one per ulogd connection
        self._watch: asyncio.Task[None] | None = None
        self._open: OrderedDict[int, Ticket] = OrderedDict()  # by conntrack id
        self._refused: dict[tuple[Any, ...], float] = {}

    async def start(self) -> bool:
        """Start ulogd (False, logged, when it is not installed: the gateway's records are
        then the only ones)."""
        await self.close()  # a second start (the firewall set up again) replaces the first
        binary, plugins = shutil.which("ulogd"), _plugin_dir()
        if binary is None or plugins is None:
            log.error("ulogd is not installed: the egress log records only what the gateway "
                      "sees (install ulogd2 and ulogd2-json)")  # fmt: skip
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._kill_leftover()
        with contextlib.suppress(OSError):  # counters for the bytes of DESTROY events
            Path("/proc/sys/net/netfilter/nf_conntrack_acct").write_text("1\n")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._lines, str(self.socket_path))
        conf = self.directory / "ulogd.conf"
        conf.write_text(_config(plugins, self.group, str(self.subnet), self.socket_path,
                                self.directory / "ulogd.log"))  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), "-p", str(self.directory / "ulogd.pid"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self._watch = asyncio.ensure_future(self._watch_exit(self._process))
        return True

    async def _watch_exit(self, process: asyncio.subprocess.Process) -> None:
        """A ulogd that ends on its own (it could not bind its NFLOG group, say) is logged:
        the kernel's records stop until the node restarts."""
        code = await process.wait()
        try:
            tail = (self.directory / "ulogd.log").read_text()[-500:]
        except OSError:
            tail = ""
        log.error("ulogd exited (%s): the egress log now holds the gateway's records only. %s",
                  code, tail)  # fmt: skip

    def _kill_leftover(self) -> None:
        """A ulogd a killed node left holds our NFLOG group: end it."""
        pidfile = self.directory / "ulogd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ulogd":
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._readers):
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        try:
            while line := await reader.readline():
                try:
                    self.take(json.loads(line))
                except (ValueError, TypeError, KeyError):
                    log.debug("egress log: an unreadable line from ulogd")
        except (OSError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            # Ends quietly: Python 3.11's streams report a connection task that ends cancelled
            # (by close(), or asyncio.run's shutdown) as "Exception in callback" with a trace.
            return
        finally:
            writer.close()

    def take(self, item: dict[str, Any]) -> None:
        """One ulogd record: a conntrack event or a refused packet."""
        if "ct.event" in item:
            self._flow(item)
        elif str(item.get("oob.prefix", "")).startswith(LOG_PREFIX):
            self._refusal(item)

    def _flow(self, item: dict[str, Any]) -> None:
        flow_id = int(item["ct.id"])
        if int(item["ct.event"]) & _DESTROY:
            ticket = self._open.pop(flow_id, None)
            if ticket is not None:
                self.audit.closed(ticket, int(item.get("orig.raw.pktlen", 0)),
                                  int(item.get("reply.raw.pktlen", 0)))  # fmt: skip
            return
        if ip_address(str(item["dest_ip"])) in self.subnet:
            return  # the host's connection to a sandbox (its source is the host's link end)
        mark = int(item.get("ct.mark", 0))
        if mark & GATEWAY_MARK == GATEWAY_MARK or not int(item["ct.event"]) & _NEW:
            return
        protocol = int(item["orig.ip.protocol"])
        event = EgressEvent(
            at=_time(item, "flow.start"),
            protocol=_PROTOCOLS.get(protocol, str(protocol)),
            ip=str(item["dest_ip"]),
            port=int(item.get("orig.l4.dport", 0)),
            verdict=ALLOWED,
            rule=RULE_ALLOW_OUT if mark & ALLOW_MARK else RULE_INTERNET,
        )
        ticket = self.audit.opened(str(item["src_ip"]), event)
        if ticket is not None:
            self._open[flow_id] = ticket
            while len(self._open) > MAX_OPEN_FLOWS:
                self._open.popitem(last=False)

    def _refusal(self, item: dict[str, Any]) -> None:
        protocol = int(item.get("ip.protocol", 0))
        key = (item.get("src_ip"), item.get("dest_ip"), protocol, item.get("src_port"),
               item.get("dest_port"))  # fmt: skip
        now = time.monotonic()
        if now - self._refused.get(key, -REPEAT_S) < REPEAT_S:
            return
        if len(self._refused) > 4096:
            self._refused = {k: t for k, t in self._refused.items() if now - t < REPEAT_S}
        self._refused[key] = now
        event = EgressEvent(
            at=_time(item, "oob.time"),
            protocol=_PROTOCOLS.get(protocol, str(protocol)),
            ip=str(item.get("dest_ip", "")),
            port=int(item.get("dest_port", 0)),
            verdict=DENIED,
            rule=str(item["oob.prefix"]).removeprefix(LOG_PREFIX),
        )
        self.audit.once(str(item.get("src_ip", "")), event)
