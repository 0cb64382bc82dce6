"""The egress audit log's pieces without a sandbox: the journal's files (records, completions,
paging, compaction, a torn line) and the flow monitor's reading of ulogd's JSON (the real
runs are in tests/api/test_egress_log.py)."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from emberbox.host import egress_audit
from emberbox.host.egress_audit import (
    ALLOWED,
    DENIED,
    EgressAudit,
    EgressEvent,
    EgressJournal,
)
from emberbox.host.flow_monitor import FlowMonitor
from emberbox.host.network import ALLOW_MARK, GATEWAY_MARK, log_group

SID = "isbxaudit0000000001"


def _event(port: int = 443, **kw: object) -> EgressEvent:
    fields: dict[str, object] = {"at": 1.0, "protocol": "tcp", "ip": "198.18.0.1",
                                 "port": port, "verdict": ALLOWED, "rule": "internet"}  # fmt: skip
    return EgressEvent(**(fields | kw))  # type: ignore[arg-type]


def test_records_are_completed_paged_and_survive_a_restart(tmp_path: Path) -> None:
    journal = EgressJournal(tmp_path)
    seqs = [journal.opened(SID, _event(port)) for port in (1, 2, 3)]
    assert seqs == [1, 2, 3]
    journal.closed(SID, 2, 10, 20, "GET", "/x")
    page, after = journal.read(SID, limit=2)
    assert [r.port for r in page] == [1, 2] and after == 2
    assert (page[1].bytes_out, page[1].bytes_in, page[1].method, page[1].path) == (
        10, 20, "GET", "/x")  # fmt: skip
    assert page[1].ended is not None and page[0].ended is None
    rest, after = journal.read(SID, after=2, limit=2)
    assert [r.port for r in rest] == [3] and after is None
    # A new node process goes on numbering where the file ends.
    assert EgressJournal(tmp_path).opened(SID, _event(4)) == 4


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    journal = EgressJournal(tmp_path)
    journal.opened(SID, _event(1))
    with open(tmp_path / f"{SID}.jsonl", "a") as f:
        f.write('{"at": 2.0, "proto')
    assert [r.port for r in EgressJournal(tmp_path).read(SID)[0]] == [1]


def test_a_full_file_keeps_its_newest_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress_audit, "MAX_FILE_BYTES", 4000)
    journal = EgressJournal(tmp_path)
    for port in range(1, 101):
        journal.opened(SID, _event(port))
    assert (tmp_path / f"{SID}.jsonl").stat().st_size <= 4000 + 300
    kept = journal.read(SID, limit=1000)[0]
    assert kept[-1].port == 100 and 1 < len(kept) < 100
    # Numbers stay consecutive: the first one says how many older records the cap dropped.
    assert [r.seq for r in kept] == list(range(kept[0].seq, 101))
    journal.remove(SID)
    assert journal.read(SID)[0] == [] and not (tmp_path / f"{SID}.jsonl").exists()


def test_records_of_unknown_addresses_are_dropped(tmp_path: Path) -> None:
    audit = EgressAudit(EgressJournal(tmp_path), {"10.11.0.2": SID}.get)
    assert audit.opened("10.11.0.6", _event()) is None
    ticket = audit.opened("10.11.0.2", _event())
    assert ticket is not None and ticket.sandbox_id == SID
    audit.closed(ticket, 1, 2)
    assert audit.journal.read(SID)[0][0].bytes_in == 2


def _monitor(tmp_path: Path) -> FlowMonitor:
    audit = EgressAudit(EgressJournal(tmp_path / "log"), {"10.11.0.2": SID}.get)
    return FlowMonitor(tmp_path / "run", "abcd", IPv4Network("10.11.0.0/16"), audit)


def _flow(event: int, flow_id: int, **kw: object) -> dict[str, object]:
    """A conntrack event as ulogd's JSON output writes it (field names from its NFCT plugin)."""
    return {"ct.event": event, "ct.id": flow_id, "ct.mark": 0, "orig.ip.protocol": 6,
            "orig.l4.dport": 8080, "src_ip": "10.11.0.2", "dest_ip": "198.18.0.1",
            "flow.start.sec": 1796141560, "flow.start.usec": 500000, **kw}  # fmt: skip


def test_conntrack_events_become_records(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path)
    monitor.take(_flow(1, 7))
    monitor.take(_flow(1, 8, **{"ct.mark": ALLOW_MARK}))
    monitor.take(_flow(1, 9, **{"ct.mark": GATEWAY_MARK}))  # the gateway's to record
    monitor.take(_flow(1, 10, src_ip="10.11.0.1", dest_ip="10.11.0.2"))  # host to sandbox
    monitor.take(_flow(4, 7, **{"orig.raw.pktlen": 120, "reply.raw.pktlen": 900}))
    monitor.take(_flow(4, 99))  # a flow from before the monitor started
    records = monitor.audit.journal.read(SID)[0]
    assert [(r.rule, r.bytes_out, r.bytes_in) for r in records] == [
        ("internet", 120, 900), ("allowOut", None, None)]  # fmt: skip
    assert records[0].at == 1796141560.5 and records[0].protocol == "tcp"


def test_refused_packets_become_records_once(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path)
    packet = {"oob.prefix": "ebx:denyOut", "ip.protocol": 6, "src_ip": "10.11.0.2",
              "dest_ip": "198.18.0.9", "src_port": 40000, "dest_port": 22}  # fmt: skip
    monitor.take(packet)
    monitor.take(packet)  # its retransmission
    monitor.take(packet | {"src_port": 40001})  # another attempt
    monitor.take(packet | {"oob.prefix": "someone else's"})
    records = monitor.audit.journal.read(SID)[0]
    assert [(r.verdict, r.rule, r.port, r.ip) for r in records] == [
        (DENIED, "denyOut", 22, "198.18.0.9")] * 2  # fmt: skip


def test_each_instance_has_its_own_log_group() -> None:
    groups = {log_group(f"{n:04x}") for n in range(0, 65536, 7)}
    assert all(1024 <= g < 65536 for g in groups)
    assert log_group("abcd") != log_group("abce")


def test_names_and_paths_are_stored_printable(tmp_path: Path) -> None:
    """They come from the sandbox; a terminal showing the log must not act on them."""
    journal = EgressJournal(tmp_path)
    seq = journal.opened(SID, _event(name="x\x1b]0;pwn\x07.example", path="/a\r\nb"))
    journal.closed(SID, seq, 1, 1, "GET\x00", "/\x9b")
    (record,) = journal.read(SID)[0]
    assert record.name == "x\\x1b]0;pwn\\x07.example"
    assert (record.method, record.path) == ("GET\\x00", "/\\x9b")
