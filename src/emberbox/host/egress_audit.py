"""The egress audit log: one record per connection a sandbox opens to the outside, kept on
the node in a file per sandbox.

Two sources write here: the kernel (``flow_monitor.py``: connections the firewall forwards or
refuses, seen through conntrack and NFLOG) and the egress gateway (connections it judges by
name, and DNS questions it answers). A record is written when the connection opens and
completed (bytes each way, end time) when it ends, so an open connection is visible at once.
The file is append-only JSON lines: a record line, then at most one line completing it; a
reader merges them. A file over :data:`MAX_FILE_BYTES` keeps its newest half.

Nothing a header rule injects is ever passed here: records name the destination, never a
request's headers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..vocabulary import check_sandbox_id
from .files import write_atomic

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 << 20  # per sandbox; then the oldest half of its records goes
MAX_PAGE = 1000

# What decided a connection (``EgressEvent.rule``).
RULE_INTERNET = "internet"  # no entry named it: the default for a public address
RULE_ALLOW_OUT = "allowOut"  # an allowOut entry (CIDR, address or domain) opened it
RULE_DENY_OUT = "denyOut"  # a denyOut entry refused it
RULE_INTERNAL = "internal"  # a private, link-local or host address no entry opened
RULE_IPV6 = "ipv6"  # sandboxes get no IPv6 egress
RULE_NAME = "name"  # its name matched no allowOut domain (or resolved to nothing usable)
RULE_HEADERS = "rules"  # a header rule's domain: intercepted, headers set
RULE_REQUEST = "request"  # an intercepted request the gateway refused to carry
RULE_PROXY = "proxy"  # allowed, but the egressProxy failed or refused it (fails closed)
RULE_UNREACHABLE = "unreachable"  # allowed, but the destination did not answer

ALLOWED, DENIED = "allowed", "denied"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\xNN``): names and paths come from the
    sandbox, and a terminal showing the log must not act on them."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class EgressEvent:
    """One egress connection (or DNS question). ``seq`` numbers a sandbox's records in the
    order they opened (0 until written); ``bytes_*`` and ``ended`` are None while open or
    when unknown (a refused connection carries no bytes)."""

    at: float  # unix time it opened
    protocol: str  # tcp, udp, icmp, http, https, tls, dns
    ip: str  # destination address ("" when none was reached, e.g. DNS refused)
    port: int
    verdict: str  # ALLOWED or DENIED
    rule: str  # one of the RULE_* values
    name: str = ""  # the destination name: TLS server name, HTTP Host, DNS question
    method: str = ""  # HTTP method and path of the connection's first request, where visible
    path: str = ""
    bytes_out: int | None = None  # sandbox to destination
    bytes_in: int | None = None
    ended: float | None = None
    seq: int = 0


@dataclass
class _File:
    next_seq: int
    size: int


@dataclass
class EgressJournal:
    """The per-sandbox files under ``directory``; one writer (the node process)."""

    directory: Path
    _files: dict[str, _File] = field(default_factory=dict)

    def _path(self, sandbox_id: str) -> Path:
        return self.directory / f"{check_sandbox_id(sandbox_id)}.jsonl"

    def _file(self, sandbox_id: str) -> _File:
        found = self._files.get(sandbox_id)
        if found is None:
            path = self._path(sandbox_id)
            records = self._merged(path)
            size = path.stat().st_size if records else 0
            found = _File(max((r.seq for r in records), default=0) + 1, size)
            self._files[sandbox_id] = found
        return found

    def _append(self, sandbox_id: str, line: dict[str, Any]) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        state = self._file(sandbox_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self._path(sandbox_id), "ab") as f:
            f.write(data)
        state.size += len(data)
        if state.size > MAX_FILE_BYTES:
            self._compact(sandbox_id)

    def opened(self, sandbox_id: str, event: EgressEvent) -> int:
        """Write a record; returns its ``seq`` (for :meth:`closed`)."""
        state = self._file(sandbox_id)
        seq, state.next_seq = state.next_seq, state.next_seq + 1
        clean = replace(event, seq=seq, name=printable(event.name),
                        method=printable(event.method), path=printable(event.path))  # fmt: skip
        self._append(sandbox_id, asdict(clean))
        return seq

    def closed(
        self,
        sandbox_id: str,
        seq: int,
        bytes_out: int | None,
        bytes_in: int | None,
        method: str = "",
        path: str = "",
    ) -> None:
        """Complete record ``seq`` (a record gone with a compaction or a kill is skipped);
        ``method`` and ``path`` when only now known (a request inside TLS)."""
        if not self._path(sandbox_id).exists():
            return
        line: dict[str, Any] = {"seq": seq, "bytes_out": bytes_out, "bytes_in": bytes_in,
                                "ended": time.time()}  # fmt: skip
        if method:
            line |= {"method": printable(method), "path": printable(path)}
        self._append(sandbox_id, {"done": True, **line})

    def read(
        self, sandbox_id: str, after: int = 0, limit: int = 100
    ) -> tuple[list[EgressEvent], int | None]:
        """Records with ``seq`` > ``after``, oldest first, at most ``limit``; and the ``after``
        of the next page (None: this was the last)."""
        records = [r for r in self._merged(self._path(sandbox_id)) if r.seq > after]
        page = records[: max(1, min(limit, MAX_PAGE))]
        return page, (page[-1].seq if len(records) > len(page) else None)

    def sandboxes(self) -> list[str]:
        """The sandboxes that have a log file."""
        if not self.directory.exists():
            return []
        return [p.stem for p in self.directory.glob("*.jsonl")]

    def remove(self, sandbox_id: str) -> None:
        self._files.pop(sandbox_id, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(sandbox_id).unlink()

    def _compact(self, sandbox_id: str) -> None:
        path = self._path(sandbox_id)
        records = self._merged(path)
        kept = records[len(records) // 2 :]
        lines = (json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in kept)
        write_atomic(path, "".join(lines))
        self._files[sandbox_id].size = path.stat().st_size

    @staticmethod
    def _merged(path: Path) -> list[EgressEvent]:
        """The file's records with their completions applied; a torn last line (a node killed
        mid-write) is skipped."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        records: dict[int, EgressEvent] = {}
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
                if line.pop("done", False):
                    seq = line.pop("seq")
                    if seq in records:
                        records[seq] = replace(records[seq], **line)
                else:
                    event = EgressEvent(**line)
                    records[event.seq] = event
            except (ValueError, TypeError, KeyError):
                log.warning("egress log %s: skipped a malformed line", path.name)
        return sorted(records.values(), key=lambda r: r.seq)


@dataclass(frozen=True)
class Ticket:
    """An open record: whom it belongs to and where (for :meth:`EgressAudit.closed`)."""

    sandbox_id: str
    seq: int


class EgressAudit:
    """What the gateway and the flow monitor call: they know a sandbox by its address,
    ``owner`` maps that to the sandbox id (None: not a sandbox of this node)."""

    def __init__(self, journal: EgressJournal, owner: Callable[[str], str | None]) -> None:
        self.journal = journal
        self.owner = owner

    def opened(self, address: str, event: EgressEvent) -> Ticket | None:
        sandbox_id = self.owner(address)
        if sandbox_id is None:
            return None
        try:
            return Ticket(sandbox_id, self.journal.opened(sandbox_id, event))
        except OSError:  # a full disk must not break the sandbox's connection
            log.exception("egress log of %s: write failed", sandbox_id)
            return None

    def closed(
        self,
        ticket: Ticket | None,
        bytes_out: int | None,
        bytes_in: int | None,
        method: str = "",
        path: str = "",
    ) -> None:
        if ticket is None:
            return
        try:
            self.journal.closed(ticket.sandbox_id, ticket.seq, bytes_out, bytes_in, method, path)
        except OSError:
            log.exception("egress log of %s: write failed", ticket.sandbox_id)

    def once(self, address: str, event: EgressEvent) -> None:
        """A record that is complete when written (a refused connection, a DNS question)."""
        self.opened(address, replace(event, ended=event.ended or event.at))
