"""The rule language (egress.py): parsing, limits and the decision order the firewall follows."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from emberbox.egress import (
    MAX_ENTRIES,
    EgressProxy,
    InvalidRules,
    UnsupportedRule,
    gateway_reaches,
    name_allowed,
    parse_dns_servers,
    parse_egress_proxy,
    parse_header_rules,
    parse_list,
    proxy_dict,
    reaches,
    rules_for,
    valid_header_value,
)


def test_entries_are_normalised_and_deduplicated() -> None:
    assert parse_list(["1.2.3.4", "10.0.0.1/8", " 1.2.3.4/32 "], "allowOut") == (
        "1.2.3.4/32",
        "10.0.0.0/8",
    )
    assert parse_list(None, "denyOut") == ()
    assert parse_list(["::/0", "0.0.0.0/0"], "denyOut") == ("::/0", "0.0.0.0/0")


@pytest.mark.parametrize(
    ("field", "entry", "error"),
    [
        ("allowOut", "10.0.0.0/33", InvalidRules),
        ("allowOut", "1.2.3", InvalidRules),
        ("allowOut", "*", InvalidRules),
        ("allowOut", "", InvalidRules),
        ("allowOut", 5, InvalidRules),
        ("denyOut", "example.com", InvalidRules),
        ("denyOut", "*.example.com", InvalidRules),
        ("allowOut", "2001:db8::/32", UnsupportedRule),
    ],
)
def test_bad_and_unsupported_entries(field: str, entry: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_list([entry], field)


def test_oversized_lists_are_refused() -> None:
    entries = [f"198.18.{i // 250}.{i % 250}" for i in range(MAX_ENTRIES + 1)]
    with pytest.raises(InvalidRules, match="at most"):
        parse_list(entries, "allowOut")
    assert len(parse_list(entries[:MAX_ENTRIES], "allowOut")) == MAX_ENTRIES


def test_the_decision_order() -> None:
    default = rules_for((), ())
    assert reaches(default, "198.18.0.10")  # public (benchmark range)
    assert not reaches(default, "169.254.169.254")
    assert not reaches(default, "10.1.2.3")
    assert not reaches(default, "192.168.1.1")
    assert reaches(default, "10.255.255.53", resolvers=["10.255.255.53"], dns=True)
    assert not reaches(default, "10.255.255.53", resolvers=["10.255.255.53"])  # not DNS

    allow_wins = rules_for(("10.1.0.0/16",), ("10.0.0.0/8",))
    assert reaches(allow_wins, "10.1.2.3") and not reaches(allow_wins, "10.2.0.1")

    closed = rules_for(("198.18.0.10",), (), allow_internet=False)
    assert reaches(closed, "198.18.0.10") and not reaches(closed, "198.18.0.11")
    assert not reaches(closed, "10.255.255.53", resolvers=["10.255.255.53"], dns=True)


def test_overlaps_are_merged_for_the_kernel() -> None:
    rules = rules_for(("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"), ("0.0.0.0/0", "::/0"))
    assert [str(n) for n in rules.allow] == ["10.0.0.0/8"]
    assert [str(n) for n in rules.deny] == ["0.0.0.0/0"]


def test_domains_are_kept_lower_case_and_apart_from_addresses() -> None:
    assert parse_list(["Example.COM.", "*.Example.com", "1.2.3.4"], "allowOut") == (
        "example.com",
        "*.example.com",
        "1.2.3.4/32",
    )
    rules = rules_for(("example.com", "*.api.test", "10.1.0.0/16", "example.com"), ())
    assert rules.domains == ("example.com", "*.api.test")
    assert [str(n) for n in rules.allow] == ["10.1.0.0/16"]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("example.com", True),
        ("EXAMPLE.com.", True),
        ("www.example.com", False),  # an exact entry is exact
        ("a.api.test", True),
        ("a.b.api.test", True),
        ("api.test", False),  # a wildcard is for names below only
        ("evilapi.test", False),
        ("example.com.evil.test", False),
        ("", False),
        (None, False),
    ],
)
def test_names_match_exactly_or_below_a_wildcard(name: str | None, allowed: bool) -> None:
    assert name_allowed(("example.com", "*.api.test"), name) is allowed


def test_a_matched_name_still_never_opens_an_internal_address() -> None:
    closed = rules_for(("example.com",), ("0.0.0.0/0",))
    assert gateway_reaches(closed, "198.18.0.10")  # the name wins over deny
    assert not gateway_reaches(closed, "169.254.169.254")
    assert not gateway_reaches(closed, "10.1.2.3")
    opened = rules_for(("example.com", "10.1.0.0/16"), ("0.0.0.0/0",))
    assert gateway_reaches(opened, "10.1.2.3")  # unless allowOut names it


def test_header_rules_merge_per_domain_and_prefer_exact_names() -> None:
    rules = parse_header_rules(
        {
            "*.example.com": [{"transform": {"headers": {"X-Wild": "1"}}}],
            "API.example.com.": [
                {"transform": {"headers": {"Authorization": "a", "X-One": "1"}}},
                {"transform": {"headers": {"authorization": "b"}}},  # a later rule wins
                {},
            ],
        }
    )
    by_domain = {r.domain: r.headers for r in rules}
    assert by_domain["api.example.com"] == (("authorization", "b"), ("X-One", "1"))
    egress = rules_for(["api.example.com"], [], rewrites=rules)
    assert egress.rewrite_for("api.example.com") == rules[1]
    assert egress.rewrite_for("other.example.com") == rules[0]
    assert egress.rewrite_for("example.com") is None
    assert egress.rewrite_for(None) is None
    assert "authorization" not in repr(rules)  # values stay out of logs and tracebacks


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ([], InvalidRules),
        ({"a.test": {}}, InvalidRules),
        ({"a.test": [{"transform": {"headers": {"Content-Length": "1"}}}]}, InvalidRules),
        ({"a.test": [{"transform": {"headers": {"Proxy-Authorization": "1"}}}]}, InvalidRules),
        ({"a.test": [{"transform": {"headers": {"X": "a\r\nB: c"}}}]}, InvalidRules),
        ({"a.test": [{"transform": {"headers": {"X": 1}}}]}, InvalidRules),
        ({f"d{i}.test": [] for i in range(65)}, InvalidRules),
        ({"a.test": [{"transform": {"headers": {"X": "v" * 70000}}}]}, InvalidRules),
        ({"1.2.3.4": []}, UnsupportedRule),
        ({"a.test": [{"match": "x"}]}, UnsupportedRule),
    ],
)
def test_bad_header_rules(raw: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_header_rules(raw)


def test_the_longest_wildcard_wins_and_values_are_what_http_can_carry() -> None:
    rules = parse_header_rules(
        {
            "*.example.com": [{"transform": {"headers": {"X-A": "1"}}}],
            "*.api.example.com": [{"transform": {"headers": {"X-B": "2"}}}],
            "nothing.example.com": [{}],  # sets nothing: intercepts nothing
        }
    )
    assert [r.domain for r in rules] == ["*.example.com", "*.api.example.com"]
    egress = rules_for([], [], rewrites=rules)
    assert egress.rewrite_for("x.api.example.com") == rules[1]
    assert egress.rewrite_for("x.example.com") == rules[0]
    assert egress.rewrite_for("nothing.example.com") == rules[0]
    for good in ("", "a", "Bearer x", "a\tb", "é"):
        assert valid_header_value(good), good
    for bad in (" a", "a ", "a\nb", "a\x01b", "a\x7fb"):
        assert not valid_header_value(bad), bad


def test_egress_proxy_settings_are_checked() -> None:
    proxy = parse_egress_proxy({"address": "Proxy.Example.com.:1080", "username": "u",
                                "password": "p", "tls": {"enabled": False}})  # fmt: skip
    assert proxy == EgressProxy("proxy.example.com", 1080, "u", "p")
    assert proxy_dict(proxy) == {"address": "proxy.example.com:1080", "username": "u"}
    assert parse_egress_proxy(None) is None
    assert parse_egress_proxy({"address": "198.18.0.1:1"}) == EgressProxy("198.18.0.1", 1)
    for bad in ({"address": "proxy.example.com"}, {"address": ":1080"}, {"address": "a.b:99999"},
                {"address": "169.254.169.254:80"}, {"address": "*.x.com:1"}, {"address": 5},
                {"address": "a.b:1", "password": "p"}, {"address": "a.b:1", "username": ""},
                {"address": "a.b:1", "extra": 1}, "a.b:1"):  # fmt: skip
        with pytest.raises(InvalidRules):
            parse_egress_proxy(bad)
    for unsupported in ({"address": "a.b:1", "tls": {"enabled": True}}, {"address": "[::1]:1"}):
        with pytest.raises(UnsupportedRule):
            parse_egress_proxy(unsupported)


def test_dns_servers_are_checked() -> None:
    assert parse_dns_servers(None) == ()
    assert parse_dns_servers([" 8.8.8.8", "8.8.8.8", "1.1.1.1"]) == ("8.8.8.8", "1.1.1.1")
    for bad in ("8.8.8.8", ["8.8.8.0/24"], ["x"], [1], ["1.1.1.1"] * 11):
        with pytest.raises(InvalidRules):
            parse_dns_servers(bad)
    with pytest.raises(UnsupportedRule):
        parse_dns_servers(["2001:db8::1"])


def test_the_gateway_never_dials_the_host_nor_a_sandbox() -> None:
    """Whatever allowOut says: the gateway dials from the host, past the firewall that keeps
    sandboxes from the host and from each other. The host's own addresses are told by the
    kernel's routing (a datagram socket's source; no packet is sent)."""
    from emberbox.host.egress_gateway import EgressGateway, host_address

    gateway = EgressGateway(lambda _: None, (), sandboxes=[IPv4Network("10.11.0.0/16")])
    for never in ("127.0.0.1", "127.1.2.3", "0.0.0.0", "10.11.0.6", "10.11.255.254", "x.test"):
        assert not gateway.may_dial(never), never
    assert gateway.may_dial("198.18.0.10")  # (the tests' fake internet's range)
    assert host_address("127.0.0.1") and not host_address("198.18.0.10")


def _get(host: str, *extra: str) -> bytes:
    return "\r\n".join(["GET / HTTP/1.1", f"Host: {host}", *extra, "", ""]).encode()


def test_a_request_asking_to_switch_protocols_stops_judging_only_if_the_server_switched() -> None:
    """An ``Upgrade`` header the server ignored switched judging off: every later request on
    the connection reached any virtual host of the allowed address."""
    from emberbox.host.egress_gateway import _RequestHosts

    upgrade = ("Upgrade: websocket", "Connection: Upgrade")
    declined = _RequestHosts()
    assert declined.hosts(_get("allowed.test", *upgrade)) == ["allowed.test"]
    declined.answered(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert declined.hosts(_get("evil.test")) == ["evil.test"]  # judged, and refused by name

    switched = _RequestHosts()
    assert switched.hosts(_get("allowed.test", *upgrade)) == ["allowed.test"]
    switched.answered(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert switched.hosts(b"\x81\x05hello") == []  # WebSocket frames: left alone

    # A WebSocket on a pooled keep-alive connection (aiohttp, Go, Node's ws with an agent):
    # its 101 answers the second request, matched to it, not the first answer's status.
    later = _RequestHosts()
    assert later.hosts(_get("allowed.test")) == ["allowed.test"]
    later.answered(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHTTP/1.1 101")
    assert later.hosts(_get("evil.test")) == ["evil.test"]  # (a body saying 101 is no switch)
    later.answered(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert later.hosts(_get("allowed.test", *upgrade)) == ["allowed.test"]
    later.answered(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert later.hosts(b"\x81\x05hello" * 5000) == []

    # Big reads: an answer of 300 KB in one read, then a 101 with 20 KB of frames in one.
    big = _RequestHosts()
    assert big.hosts(_get("allowed.test")) == ["allowed.test"]
    body = b"x" * 300_000
    big.answered(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert big.hosts(_get("allowed.test", *upgrade)) == ["allowed.test"]
    big.answered(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + b"\x81\x7e" * 10_000)
    assert big.upgraded

    # An HTTP/1.0 answer that keeps the connection, then an upgrade on it.
    old = _RequestHosts()
    assert old.hosts(_get("allowed.test")) == ["allowed.test"]
    old.answered(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    assert old.hosts(_get("allowed.test", *upgrade)) == ["allowed.test"]
    old.answered(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert old.upgraded

    # Pipelined: the answers come in order, each read as the answer to its own request.
    piped = _RequestHosts()
    both = _get("allowed.test") + _get("allowed.test", *upgrade)
    assert piped.hosts(both) == ["allowed.test", "allowed.test"]
    piped.answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not piped.upgraded
    piped.answered(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # (it declined)
    assert piped.hosts(_get("evil.test")) == ["evil.test"]

    tunnel = _RequestHosts()
    assert tunnel.hosts(b"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test\r\n\r\n") == [
        "allowed.test"
    ]
    tunnel.answered(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert tunnel.hosts(b"\x16\x03\x01 anything") == []


def test_an_ipv4_mapped_entry_is_the_ipv4_address_it_names() -> None:
    """``::ffff:1.2.3.4`` is 1.2.3.4 (RFC 4291 §2.5.5.2): kept as IPv6, a denyOut entry was
    accepted, shown back, and not enforced."""
    assert parse_list(["::ffff:198.18.0.10", "::ffff:10.0.0.0/104"], "denyOut") == (
        "198.18.0.10/32",
        "10.0.0.0/8",
    )
    assert parse_list(["::ffff:198.18.0.10"], "allowOut") == ("198.18.0.10/32",)
    rules = rules_for([], ["::ffff:198.18.0.10"])
    assert not reaches(rules, "198.18.0.10") and reaches(rules, "198.18.0.11")
    assert parse_list(["2001:db8::/32"], "denyOut") == ("2001:db8::/32",)  # (IPv6 stays)


async def test_the_gateway_takes_only_the_answer_to_its_own_question(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loopback resolver that first sends a forged answer (another id, then another name)
    and then the real one: the gateway's lookup must get the real one, for its TTL."""
    import asyncio

    from dnslib import QTYPE, RR, A, DNSRecord

    from emberbox.host import egress_gateway
    from emberbox.host.egress_gateway import EgressGateway

    class Resolver(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            question = DNSRecord.parse(data)

            def reply(qname: str, address: str, id_: int) -> bytes:
                answer = DNSRecord.question(qname, "A")
                answer.header.id, answer.header.qr = id_, 1
                answer.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=60))
                return bytes(answer.pack())

            name = str(question.q.qname)
            for forged in (
                reply(name, "198.18.66.66", (question.header.id + 1) % 65536),
                reply("other.test.", "198.18.66.67", question.header.id),
                reply(name, "198.18.0.10", question.header.id),
            ):
                self.transport.sendto(forged, addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Resolver, local_addr=("127.0.0.1", 0))
    monkeypatch.setattr(egress_gateway, "DNS_PORT", transport.get_extra_info("sockname")[1])
    try:
        gateway = EgressGateway(lambda _: None, ("127.0.0.1",))
        assert await gateway.resolve("allowed.test") == ["198.18.0.10"]
    finally:
        transport.close()


async def test_a_truncated_answer_whose_tcp_retry_fails_is_no_answer_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TC set, and the answer over TCP cut short (EOFError) or unreadable (dnslib's own
    error): the lookup goes on to the next resolver, or finds nothing; it raised through
    the connection's handler, which recorded nothing."""
    import asyncio

    from dnslib import DNSError, DNSRecord

    from emberbox.host import egress_gateway
    from emberbox.host.egress_gateway import EgressGateway

    class Truncating(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            answer = DNSRecord.parse(data).reply()
            answer.header.tc = 1
            self.transport.sendto(answer.pack(), addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Truncating, local_addr=("127.0.0.1", 0))
    monkeypatch.setattr(egress_gateway, "DNS_PORT", transport.get_extra_info("sockname")[1])
    try:
        for failure in (asyncio.IncompleteReadError(b"", 2), DNSError("unreadable")):

            async def cut(
                packet: bytes, server: str, timeout: float, failure: Exception = failure
            ) -> bytes:
                raise failure

            monkeypatch.setattr(egress_gateway, "_tcp_exchange", cut)
            gateway = EgressGateway(lambda _: None, ("127.0.0.1", "127.0.0.1"))
            assert await gateway.resolve("allowed.test") == []
    finally:
        transport.close()
