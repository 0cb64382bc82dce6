"""The node's egress gateway: judges a sandbox's HTTP and TLS connections by the name they
carry, and answers its DNS.

The host firewall (``network.py``) steers to it, by ``redirect`` in a per-sandbox NAT chain,
only what a sandbox with domain entries sends to ports 80/443 of an address its IP rules would
refuse, and all of that sandbox's DNS (TCP and UDP 53). Here:

* **TCP**: the first bytes of the connection give the name, read by real parsers: the TLS
  ClientHello's server name by OpenSSL itself (``ssl.MemoryBIO`` + ``sni_callback``; the
  handshake is then abandoned, never answered), the HTTP ``Host`` header by ``h11``. A name that
  matches an entry is resolved by the node and the connection spliced, bytes untouched (TLS
  stays end to end), to the original address if the name resolves to it, else to the first
  address it resolves to; a non-matching name or an internal answer is reset. The sandbox
  cannot reach an address by lying in its server name: the name is what gets resolved. On
  plain HTTP every later request of a keep-alive connection is judged too (h11 reads each as
  it passes); inside TLS only the server name is seen, so a server that answers several names
  on one address (a CDN) can be asked for another one there ("domain fronting").
* **DNS** (UDP, and TCP for large answers): names that match an entry are forwarded to the
  node's upstream resolvers; others get NXDOMAIN, so a denied name cannot carry data out,
  unless the sandbox's rules let it reach the internet anyway (anything short of denying
  0.0.0.0/0: then everything is forwarded).

* **Header rules** (``EgressRules.rewrites``): a connection whose name has a rule is
  intercepted: TLS toward the sandbox is completed with a certificate for the name from the
  node's egress CA (``certificates.py``; the sandbox trusts it), every HTTP/1 request read by
  ``h11`` gets the rule's headers, and goes over a TLS connection of the gateway's own,
  verified, to an address the node resolves for the name. A sandbox with rules has all its
  port 80/443 connections sent here; those without a ruled name are judged as above, or
  spliced to their own address when its IP rules allow it.

* **A proxy** (``EgressRules.proxy``, E2B's ``egressProxy``): such a sandbox has every new TCP
  connection (DNS aside) sent here. Each is judged as above (other ports than 80/443 by
  address alone: nothing is read from them) and what is allowed is dialed through the SOCKS5
  proxy, by name when a domain entry allowed it (the proxy resolves it) or else by address.
  The proxy's own address is resolved by the node at each dial and must not be internal. No
  proxy, a wrong password or a refusal: the connection is reset (fails closed, never direct).

A connection whose source is not a sandbox with domain entries, rules or a proxy is closed
unread.
Each sandbox may hold :data:`MAX_PER_SANDBOX` connections, spliced ones idle for
:data:`IDLE_S` are closed, and a killed sandbox's are closed with it (``forget``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import resource
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import h11
from dnslib import OPCODE, QTYPE, RCODE, DNSError, DNSRecord
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy as Socks5

from ..egress import (
    ALL_IPV4,
    DOMAIN_PORTS,
    INTERNAL_RANGES,
    EgressProxy,
    EgressRules,
    HeaderRule,
    IPv4Network,
    gateway_reaches,
    name_allowed,
    reaches,
    within,
)
from .certificates import EgressCa
from .egress_audit import (
    ALLOWED,
    DENIED,
    RULE_ALLOW_OUT,
    RULE_DENY_OUT,
    RULE_HEADERS,
    RULE_INTERNAL,
    RULE_INTERNET,
    RULE_NAME,
    RULE_PROXY,
    RULE_REQUEST,
    RULE_UNREACHABLE,
    EgressAudit,
    EgressEvent,
    Ticket,
)

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h: where a redirected connection was going
MAX_HELLO = 16 * 1024  # the most we read looking for a name
NAME_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
DNS_TIMEOUT_S = 2.0
DNS_PORT = 53  # of the upstream resolvers
MAX_CACHE_S = 60.0  # the longest a resolved name is reused, whatever its TTL says
MAX_CACHED = 4096
IDLE_S = 600.0  # a spliced connection with no bytes either way for this long is closed
MAX_PER_SANDBOX = 256  # connections (and DNS-over-TCP streams) one sandbox may hold open
MAX_OPEN = 8192  # ... and all sandboxes together
CHUNK = 256 * 1024  # what one read may hand over; also the streams' buffer limit
MAX_RESPONSE_HEAD = 64 * 1024  # the largest response head an intercepted server may send
MAX_LOGGED_PATH = 2048  # the most of a request's path the audit log keeps

Lookup = Callable[[str], EgressRules | None]


@dataclass(frozen=True)
class GatewayPorts:
    tcp: int
    dns: int  # UDP
    dns_tcp: int


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The address and port a redirected connection was sent to (a ``sockaddr_in``)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


class _ServerName:
    """Feeds a ClientHello to OpenSSL until it reports the server name it carries."""

    # One server context for every connection (making one costs ~0.3 ms); its callback finds
    # the connection's parser by the TLS object it is called for.
    _context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _parsers: dict[int, _ServerName] = {}

    def __init__(self) -> None:
        self.name: str | None = None
        self.done = False
        self._in = ssl.MemoryBIO()
        self._tls = self._context.wrap_bio(self._in, ssl.MemoryBIO(), server_side=True)

    @classmethod
    def _seen(cls, obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int:
        parser = cls._parsers.get(id(obj))
        if parser is not None:
            parser.name, parser.done = name, True
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # stop: we only wanted the name

    def feed(self, data: bytes) -> bool:
        """True once the answer is known (``name`` may then be None: no server name)."""
        self._in.write(data)
        self._parsers[id(self._tls)] = self
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return self.done
        except ssl.SSLError:
            self.done = True
        finally:
            del self._parsers[id(self._tls)]
        return True


_ServerName._context.sni_callback = _ServerName._seen


class _Answers:
    """The server's side of a plain-HTTP connection, read by h11 as it passes, answer after
    answer matched to the requests they answer (``asked``, in order): whether the server has
    switched protocols, by its 101 to a request that asked to ``Upgrade`` or its 2xx to a
    ``CONNECT``. Anything it cannot follow (a malformed answer, one nobody asked for) stops
    it for good, the connection then never switched."""

    def __init__(self) -> None:
        self.switched = False
        self._asks: collections.deque[h11.Request] = collections.deque()
        self._conn: h11.Connection | None = None  # the answer being read, its request sent
        self._early = b""  # the server's bytes not read yet: they wait for their request
        self._lost = False

    def asked(self, request: h11.Request) -> None:
        """A request on its way to the server: only its method and whether it asks to
        switch matter to the framing of its answer (its body is not the answer's)."""
        headers = [(b"host", b"x")]
        upgrade = [v for k, v in request.headers if k.lower() == b"upgrade"]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade[0])]
        self._asks.append(h11.Request(method=request.method, target=b"/", headers=headers))
        self._read()

    def answered(self, data: bytes) -> None:
        """The server's bytes as they pass (before the sandbox gets them)."""
        if self.switched or self._lost:
            return
        self._early += data
        self._read()

    def _unasked(self) -> bool:
        """Whether bytes wait that answer no request (none under way, none asked): held to
        ``MAX_HELLO``, past it the answers cannot be followed."""
        idle = self._conn is None or self._conn.our_state is h11.IDLE
        if idle and not self._asks and len(self._early) > MAX_HELLO:
            self._lost, self._early = True, b""
        return self._lost

    def _read(self) -> None:
        """Read what the server sent, each answer after the request it answers was sent
        (as h11 follows it); bytes with no request yet wait for one."""
        while not (self.switched or self._lost):
            if self._conn is None or self._conn.our_state is h11.IDLE:
                if not self._asks:
                    self._unasked()
                    return
                self._conn = self._conn or h11.Connection(
                    h11.CLIENT, max_incomplete_event_size=MAX_HELLO
                )
                self._conn.send(self._asks.popleft())
                self._conn.send(h11.EndOfMessage())
            if not self._early:
                return
            data, self._early = self._early, b""
            try:
                self._conn.receive_data(data)
                self._events()
            except (h11.RemoteProtocolError, h11.LocalProtocolError):
                self._lost = True

    def _events(self) -> None:
        assert self._conn is not None
        while True:
            event = self._conn.next_event()
            if self._conn.their_state is h11.SWITCHED_PROTOCOL:
                self.switched = True
                return
            ended = (h11.DONE, h11.MUST_CLOSE)  # (MUST_CLOSE: after an HTTP/1.0 answer,
            # even one that keeps the connection, as h11 reads it)
            if self._conn.our_state in ended and self._conn.their_state in ended:
                self._early = self._conn.trailing_data[0] + self._early  # (the next answers)
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()
                else:
                    self._conn = None  # (a fresh reader for the next answer)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self._lost = True
                return


class _RequestHosts:
    """Every request of a plain-HTTP connection, read by h11 as it passes, so each one's
    ``Host`` is judged (a keep-alive connection may ask for another name later). Once the
    server has switched protocols (a WebSocket: its 101 to an ``Upgrade``; a tunnel: its 2xx
    to a ``CONNECT``; :class:`_Answers` reads its answers) the bytes are no longer HTTP and
    are left alone: a request merely asking, which the server declined, switched judging off
    for good."""

    def __init__(self) -> None:
        self.name: str | None = None  # the first request's host
        self.first: list[str | None] = []  # every request in the first bytes (pipelined too)
        self.request: tuple[bytes, bytes] | None = None  # the first one's method and target
        self.answers = _Answers()
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HELLO)

    @property
    def upgraded(self) -> bool:
        return self.answers.switched

    def answered(self, data: bytes) -> None:
        """The server's bytes as they pass (before the sandbox gets them)."""
        self.answers.answered(data)

    def feed(self, data: bytes) -> bool:
        """For the first request: True once its host is known (``name``; None: not HTTP)."""
        hosts = self.hosts(data)
        if hosts is None:
            return True
        if hosts:
            self.name, self.first = hosts[0], hosts
            return True
        return False

    def hosts(self, data: bytes) -> list[str | None] | None:
        """The host of each request that starts in ``data`` (None for one without a Host);
        None when the bytes are not HTTP/1."""
        if self.upgraded:
            return []
        self._conn.receive_data(data)
        found: list[str | None] = []
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return found
            if event is h11.PAUSED:  # one request is complete: the next starts afresh
                rest, _closed = self._conn.trailing_data
                self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HELLO)
                if not rest:  # (bytes sent before a switch was answered are judged as HTTP)
                    return found
                self._conn.receive_data(rest)
                continue
            if isinstance(event, h11.Request):
                found.append(_host(event))
                self.request = self.request or (event.method, event.target)
                self.answers.asked(event)


def _host(request: h11.Request) -> str | None:
    for key, value in request.headers:
        if key == b"host":
            host = value.decode("latin-1").strip()
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return None


async def _read_name(
    reader: asyncio.StreamReader, port: int
) -> tuple[bytes, str | None, _RequestHosts | None]:
    """The bytes read so far and the name they carry (TLS on 443, HTTP otherwise), and for
    HTTP the parser that goes on judging the connection's later requests."""
    parser: _ServerName | _RequestHosts = _ServerName() if port == 443 else _RequestHosts()
    seen = b""
    while len(seen) < MAX_HELLO:
        data = await reader.read(MAX_HELLO - len(seen))
        if not data:
            break
        seen += data
        if parser.feed(data):
            break
    return seen, parser.name, parser if isinstance(parser, _RequestHosts) else None


class _Activity:
    """When bytes last moved either way on a connection (for the idle timeout), how many,
    and its first request (for the audit log)."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.sent = 0  # sandbox to destination
        self.received = 0
        self.method = self.path = ""
        self.last: tuple[str, str] = ("", "")  # the latest request's method and path

    def saw(self, method: bytes, target: bytes) -> None:
        self.last = (method.decode("latin-1"),
                     target[:MAX_LOGGED_PATH].decode("latin-1"))  # fmt: skip
        if not self.method:
            self.method, self.path = self.last


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    activity: _Activity,
    allowed: Callable[[bytes], bool] | None = None,
    outbound: bool = False,
    seen: Callable[[bytes], None] | None = None,
) -> None:
    """Copy until EOF; ``allowed`` sees each chunk first and may stop the copy (False);
    ``seen`` sees each chunk before it is passed on."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await src.read(CHUNK):
            activity.at = time.monotonic()
            if allowed is not None and not allowed(data):
                raise _Refused
            if seen is not None:
                seen(data)
            if outbound:
                activity.sent += len(data)
            else:
                activity.received += len(data)
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


class _Refused(Exception):
    """A later request on a spliced connection named a host the sandbox may not reach."""


async def _udp_exchange(packet: bytes, server: str, timeout: float) -> bytes:
    """Send one DNS datagram to ``server`` and return its answer: the first datagram that
    carries the query's id and question (any other is not the answer: a spoofer off the
    path must guess the id as well as the port)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    asked = _question(packet)

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            if not answer.done() and data[:2] == packet[:2] and _question(data) == asked:
                answer.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not answer.done():
                answer.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(server, DNS_PORT))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(answer, timeout)
    finally:
        transport.close()


def _question(message: bytes) -> object:
    """A DNS message's first question (None: none, or not DNS)."""
    try:
        questions = DNSRecord.parse(message).questions
    except Exception:  # (dnslib raises its own errors for malformed messages)
        return None
    return questions[0] if questions else None


def _answers(answer: DNSRecord, name: str) -> bool:
    """Whether ``answer`` is a response to the A question for ``name`` (and nothing else)."""
    questions = answer.questions
    return bool(
        answer.header.qr
        and len(questions) == 1
        and questions[0].qtype == QTYPE.A
        and str(questions[0].qname).rstrip(".").lower() == name.rstrip(".").lower()
    )


async def _tcp_exchange(packet: bytes, server: str, timeout: float) -> bytes:
    """Send one DNS message to ``server`` over TCP and return its answer."""

    async def ask() -> bytes:
        reader, writer = await asyncio.open_connection(server, DNS_PORT)
        try:
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)


Exchange = Callable[[bytes, str, float], Awaitable[bytes]]


# What the gateway never connects to for a sandbox, whatever its rules say (allowOut cannot
# open them): the firewall keeps sandboxes from the host and from each other, and the gateway
# dials from the host, past it. Besides these: the node's sandbox subnet (``sandboxes``), and
# any address of the host's own (:func:`host_address`).
NEVER_RANGES: tuple[IPv4Network, ...] = (
    IPv4Network("0.0.0.0/8"),  # "this host"
    IPv4Network("127.0.0.0/8"),  # loopback
)


def host_address(address: str) -> bool:
    """Whether ``address`` is one of the host's own, as the kernel routes it now: a datagram
    socket connected to a local address takes that address as its source (no packet is sent;
    bind() would not tell with ``ip_nonlocal_bind`` on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError:  # no route: not the host's
            return False
        return bool(probe.getsockname()[0] == address)


class EgressGateway:
    """One per node runtime. ``lookup`` maps a sandbox address to its rules (None: not ours);
    ``upstream`` are the resolvers the node asks; ``internal`` the ranges no name may open;
    ``sandboxes`` the node's sandbox subnet, which nothing opens (:data:`NEVER_RANGES`)."""

    def __init__(
        self,
        lookup: Lookup,
        upstream: Sequence[str],
        internal: Sequence[IPv4Network] = INTERNAL_RANGES,
        ca: EgressCa | None = None,
        trust: str = "",
        audit: EgressAudit | None = None,
        sandboxes: Sequence[IPv4Network] = (),
    ) -> None:
        self.lookup = lookup
        self.audit = audit  # where each connection and DNS question is recorded
        self.upstream = tuple(upstream)
        self.internal = tuple(internal)
        self.never = (*NEVER_RANGES, *sandboxes)
        self.ca = ca  # signs the names it intercepts (header rules); None: it intercepts none
        self.trust = trust  # extra CAs (PEM file) for the servers it re-encrypts to
        self._upstream_tls: ssl.SSLContext | None = None
        self._tcp: asyncio.Server | None = None
        self._dns: asyncio.DatagramTransport | None = None
        self._dns_tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._open: dict[str, set[asyncio.StreamWriter]] = {}  # connections by sandbox address
        self.ports: GatewayPorts | None = None

    async def start(self) -> GatewayPorts:
        """Listen on ephemeral ports of every address (only redirected sandbox traffic is let
        in by the firewall; anything else is closed unread here)."""
        if self.ports is not None:
            return self.ports
        _raise_open_files_limit()
        if not self.upstream:
            log.error("egress gateway: no resolver to ask; names in allowOut will not resolve")
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._connection, "0.0.0.0", 0, limit=CHUNK)
        gateway = self

        class Dns(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
                assert gateway._dns is not None
                gateway._spawn(gateway._dns_query(gateway._dns, data, addr))

        transport, _ = await loop.create_datagram_endpoint(Dns, local_addr=("0.0.0.0", 0))
        self._dns = transport
        self._dns_tcp = await asyncio.start_server(self._dns_stream, "0.0.0.0", 0)
        self.ports = GatewayPorts(
            tcp=self._tcp.sockets[0].getsockname()[1],
            dns=transport.get_extra_info("sockname")[1],
            dns_tcp=self._dns_tcp.sockets[0].getsockname()[1],
        )
        return self.ports

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        if self._dns is not None:
            self._dns.close()
        if self._dns_tcp is not None:
            self._dns_tcp.close()
        for peer in list(self._open):
            self.forget(peer)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ports = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- names ---------------------------------------------------------------------------

    async def resolve(self, name: str) -> list[str]:
        """The IPv4 addresses the upstream resolvers give for ``name`` (CNAMEs followed by
        them), kept for their TTL (at most :data:`MAX_CACHE_S`); empty when none answers."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            query = DNSRecord.question(name, "A").pack()
        except Exception:  # dnslib refuses names it cannot encode (empty labels, ...)
            return []
        for server in self.upstream:
            try:
                answer = DNSRecord.parse(await _udp_exchange(query, server, DNS_TIMEOUT_S))
                if answer.header.tc:  # cut to fit a datagram: the whole answer over TCP
                    answer = DNSRecord.parse(await _tcp_exchange(query, server, DNS_TIMEOUT_S))
            except (TimeoutError, OSError, ValueError, EOFError, DNSError) as exc:
                # (EOFError: a TCP answer cut short; DNSError: one dnslib cannot read)
                log.debug("resolver %s did not answer for %s: %s", server, name, exc)
                continue
            if not _answers(answer, name):
                log.info("resolver %s answered another question than %s", server, name)
                continue
            records = [rr for rr in answer.rr if rr.rtype == QTYPE.A]
            addresses = [str(rr.rdata) for rr in records]
            ttl = min((rr.ttl for rr in records), default=0)
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[name] = (now + min(ttl, MAX_CACHE_S), addresses)
            return addresses
        return []

    async def _dns_query(
        self, transport: asyncio.DatagramTransport, packet: bytes, addr: tuple[str | object, int]
    ) -> None:
        answer = await self._dns_answer(str(addr[0]), packet, _udp_exchange)
        if answer is not None:
            transport.sendto(answer, addr)

    async def _dns_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """DNS over TCP (RFC 1035 4.2.2: each message after its 2-byte length), for answers
        too large for a datagram; one connection may carry several queries."""
        peer = writer.get_extra_info("peername")[0]
        if not self._admit(peer, writer):
            return
        try:
            while self.lookup(peer) is not None:
                head = await asyncio.wait_for(reader.readexactly(2), NAME_TIMEOUT_S)
                size = int.from_bytes(head, "big")
                packet = await asyncio.wait_for(reader.readexactly(size), NAME_TIMEOUT_S)
                answer = await self._dns_answer(peer, packet, _tcp_exchange)
                if answer is None:
                    break
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError, ConnectionError):
            pass
        finally:
            self._release(peer, writer)
            writer.close()

    async def _dns_answer(self, peer: str, packet: bytes, exchange: Exchange) -> bytes | None:
        """The answer for a sandbox's query: forwarded upstream, NXDOMAIN for a name it may
        not resolve, SERVFAIL when no upstream answers; None (drop) for a non-sandbox or a
        malformed query."""
        rules = self.lookup(peer)
        if rules is None:
            return None
        try:
            request = DNSRecord.parse(packet)
            name = str(request.q.qname).rstrip(".")
        except Exception:  # dnslib raises its own errors for malformed packets; drop them
            return None
        if len(request.questions) != 1 or request.header.opcode != OPCODE.QUERY:
            reply = request.reply()  # only the first question would be judged: refuse
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        listed = name_allowed(rules.domains, name)
        if not (listed or self._resolvers_open(rules)):
            log.info("egress dns refused: %s asked for %s", peer, name)
            self._record(peer, "dns", "", 53, DENIED, RULE_NAME, name)
            reply = request.reply()
            reply.header.rcode = RCODE.NXDOMAIN
            return bytes(reply.pack())
        self._record(peer, "dns", "", 53, ALLOWED, RULE_ALLOW_OUT if listed else RULE_INTERNET,
                     name)  # fmt: skip
        for server in self.upstream:
            try:
                return await exchange(packet, server, DNS_TIMEOUT_S)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                continue
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())

    @staticmethod
    def _resolvers_open(rules: EgressRules) -> bool:
        """Whether the sandbox may reach the internet anyway (its rules stop short of denying
        0.0.0.0/0): then it could ask any public resolver, and answering only some names
        would protect nothing. Deny-all sandboxes get only their allowed names."""
        return ALL_IPV4 not in rules.deny

    # -- connections ---------------------------------------------------------------------

    def _admit(self, peer: str, writer: asyncio.StreamWriter) -> bool:
        """Count a connection against its sandbox's and the node's caps; reset it over them."""
        mine = self._open.setdefault(peer, set())
        if len(mine) >= MAX_PER_SANDBOX or sum(map(len, self._open.values())) >= MAX_OPEN:
            log.warning("egress gateway: %s has too many connections open", peer)
            _reset(writer)
            return False
        mine.add(writer)
        return True

    def _release(self, peer: str, writer: asyncio.StreamWriter) -> None:
        mine = self._open.get(peer)
        if mine is not None:
            mine.discard(writer)
            if not mine:
                del self._open[peer]

    def forget(self, peer: str) -> None:
        """Close every connection of the sandbox at ``peer`` (it is being killed)."""
        for writer in list(self._open.pop(peer, ())):
            _reset(writer)

    def _record(
        self,
        peer: str,
        protocol: str,
        ip: str,
        port: int,
        verdict: str,
        rule: str,
        name: str | None,
        flow: _Activity | None = None,
    ) -> None:
        """A record complete when written: a refusal, a DNS question."""
        if self.audit is not None:
            method, path = flow.last if flow is not None else ("", "")
            self.audit.once(peer, EgressEvent(time.time(), protocol, ip, port, verdict, rule,
                                              name or "", method, path))  # fmt: skip

    def _refusal_rule(self, rules: EgressRules, name: str | None, address: str) -> str:
        """Why a connection neither its name nor its address opens was refused."""
        if name and rules.domains:
            return RULE_NAME
        return RULE_INTERNAL if within(address, self.internal) else RULE_DENY_OUT

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        peer = writer.get_extra_info("peername")[0]
        rules = self.lookup(peer)
        judged = rules is not None and (rules.domains or rules.rewrites or rules.proxy)
        if rules is None or not judged or not self._admit(peer, writer):
            writer.close()
            return
        flow, ticket, opened = _Activity(), None, time.time()
        try:
            address, port = original_destination(writer.get_extra_info("socket"))
            if port not in DOMAIN_PORTS and rules.proxy is None:
                _reset(writer)  # sent here for a proxy the rules no longer have: never direct
                return
            # Only a proxied sandbox sends other ports here: nothing to read (a server that
            # speaks first would wait forever), they are judged by address.
            seen, name, requests, protocol = b"", None, None, "tcp"
            if port in DOMAIN_PORTS:
                read = await asyncio.wait_for(_read_name(reader, port), NAME_TIMEOUT_S)
                seen, name, requests = read
                protocol = "http" if port == 80 else "tls"
            name = name.lower().rstrip(".") if name else name
            if requests is not None and requests.request is not None:
                flow.saw(*requests.request)
            pipelined = requests.first[1:] if requests is not None else []
            by_name = all(name_allowed(rules.domains, n) for n in [name, *pipelined])
            # Only a sandbox with header rules has connections its IP rules allow sent here.
            by_address = reaches(rules, address, internal=self.internal) and self.may_dial(address)
            rule = rules.rewrite_for(name) if self.ca is not None else None
            # A proxy resolves an allowed name itself (remote DNS, as E2B's does).
            remote = rules.proxy is not None and by_name
            if rule is not None and name is not None and (by_name or by_address):
                target = name if remote else await self._target(rules, name, address, by_name)
                if target is None or rule.headers is None:
                    log.info("egress refused: %s -> %s:%d (name %r: %s)", peer, address, port,
                             name, "no usable address" if target is None else
                             "its header rules were lost with a node restart")  # fmt: skip
                    why = RULE_NAME if target is None else RULE_HEADERS
                    self._record(peer, protocol, address, port, DENIED, why, name, flow)
                    _reset(writer)
                    return
                log.info("egress rewritten: %s -> %s (%s:%d)", peer, name, target, port)
                protocol = "http" if port == 80 else "https"
                ip = address if remote else target
                ticket = self._opened(peer, opened, protocol, ip, port, RULE_HEADERS, name)
                try:
                    await self._intercept(reader, writer, seen, name, target, port, peer, flow,
                                          rules)  # fmt: skip
                except _Refused:
                    self._record(peer, protocol, ip, port, DENIED, RULE_REQUEST, name, flow)
                    raise
                return
            if remote:
                target = name
            elif by_name:
                target = await self._target(rules, name, address)
            else:
                target, requests = (address if by_address else None), None
            if target is None:
                log.info("egress refused: %s -> %s:%d (name %r)", peer, address, port, name)
                why = self._refusal_rule(rules, name, address) if not by_name else RULE_NAME
                self._record(peer, protocol, address, port, DENIED, why, name, flow)
                _reset(writer)
                return
            log.info("egress allowed: %s -> %s (%s:%d)", peer, name, target, port)
            ip = address if remote else target
            listed = by_name or within(ip, rules.allow)
            why = RULE_ALLOW_OUT if listed else RULE_INTERNET
            try:
                up_reader, up_writer = await self._dial(rules, target, port)
            except (TimeoutError, OSError) as exc:
                failed = RULE_PROXY if rules.proxy is not None else RULE_UNREACHABLE
                self._record(peer, protocol, ip, port, DENIED, failed, name, flow)
                raise OSError(f"dial failed: {type(exc).__name__}") from None
            ticket = self._opened(peer, opened, protocol, ip, port, why, name, flow)
            upstream = up_writer
            up_writer.write(seen)
            flow.sent += len(seen)
            await self._splice(reader, writer, up_reader, up_writer, requests, rules, flow)
        except (TimeoutError, OSError, ValueError, _Refused, h11.ProtocolError) as exc:
            # The type only: an error's text may quote a request's headers (a credential).
            log.debug("egress connection of %s ended: %s", peer, type(exc).__name__)
            _reset(writer)
        finally:
            self._release(peer, writer)
            for w in (upstream, writer):
                if w is not None:
                    w.close()
            if self.audit is not None and ticket is not None:
                self.audit.closed(ticket, flow.sent, flow.received, flow.method, flow.path)

    def _opened(
        self,
        peer: str,
        at: float,
        protocol: str,
        ip: str,
        port: int,
        rule: str,
        name: str | None,
        flow: _Activity | None = None,
    ) -> Ticket | None:
        if self.audit is None:
            return None
        method, path = (flow.method, flow.path) if flow is not None else ("", "")
        return self.audit.opened(peer, EgressEvent(at, protocol, ip, port, ALLOWED, rule,
                                                   name or "", method, path))  # fmt: skip

    async def _intercept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: bytes,
        name: str,
        target: str,
        port: int,
        peer: str,
        flow: _Activity,
        rules: EgressRules,
    ) -> None:
        """Terminate the sandbox's TLS with a certificate for ``name`` from the node's CA
        (plain HTTP on port 80 needs none), open a verified TLS connection of our own to
        ``name`` at ``target``, and relay requests with the rule's headers set (the rules of
        the sandbox at ``peer`` as they are at each request)."""
        assert self.ca is not None
        sandbox: _Stream
        if port == 80:
            sandbox, first = _Plain(reader, writer), seen
            flow.sent += len(seen)
        else:
            leaf = await asyncio.to_thread(self.ca.server_context, name)
            tls = _TlsServer(leaf, reader, writer)
            await asyncio.wait_for(tls.handshake(seen), NAME_TIMEOUT_S)
            sandbox, first = tls, b""
        up_reader, up_writer = await self._dial(rules, target, port, name if port != 80 else None)
        try:
            await _relay_rewritten(_Counted(sandbox, flow), _Plain(up_reader, up_writer), first,
                                   name, lambda: self.lookup(peer), flow)  # fmt: skip
            await sandbox.close()
        finally:
            up_writer.close()

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        requests: _RequestHosts | None,
        rules: EgressRules,
        flow: _Activity,
    ) -> None:
        """Copy both ways until both end, or nothing moved for :data:`IDLE_S`, or a later
        HTTP request names a host the sandbox may not reach (then :class:`_Refused`)."""

        def judged(data: bytes) -> bool:
            assert requests is not None
            hosts = requests.hosts(data)
            return hosts is not None and all(name_allowed(rules.domains, h) for h in hosts)

        both = asyncio.gather(
            _pipe(reader, up_writer, flow, judged if requests is not None else None, True),
            # (before the sandbox gets the server's answer: its bytes after a 101 follow it)
            _pipe(up_reader, writer, flow, seen=requests.answered if requests else None),
        )
        try:
            while not both.done():
                idle = time.monotonic() - flow.at
                if idle >= IDLE_S:
                    raise TimeoutError(f"idle for {idle:.0f} s")
                await asyncio.wait({both}, timeout=IDLE_S - idle)
            await both
        finally:
            both.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await both

    async def _dial(
        self, rules: EgressRules, host: str, port: int, tls_name: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``host`` (an address, or a name only a proxy resolves): direct,
        or through the sandbox's proxy; TLS verified for ``tls_name`` when given."""
        context = self._client_context() if tls_name else None
        if rules.proxy is None:
            if not self.may_dial(host):  # (checked before: never reached, whatever changes)
                raise OSError(f"{host} is the host's or a sandbox's")
            opening = asyncio.open_connection(
                host, port, ssl=context, server_hostname=tls_name, limit=CHUNK
            )
        else:
            sock = await self._through_proxy(rules.proxy, host, port)
            opening = asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=tls_name, limit=CHUNK
            )
            try:
                return await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
            except BaseException:
                sock.close()
                raise
        return await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)

    def may_dial(self, address: str) -> bool:
        """Whether the gateway may connect to ``address`` for a sandbox at all: never to the
        host itself nor to a sandbox (:data:`NEVER_RANGES`), whatever allowOut says."""
        try:
            ip = IPv4Address(address)
        except ValueError:  # (a name: only a proxy is given one, and it resolves it)
            return False
        return not within(ip, self.never) and not host_address(str(ip))

    async def _through_proxy(self, proxy: EgressProxy, host: str, port: int) -> socket.socket:
        """A socket already tunneled to ``host:port`` by the SOCKS5 ``proxy``: its address
        resolved by the node now (and used for this dial only), never an internal one, so a
        proxy setting cannot aim the node at its own network. Fails closed (OSError)."""
        if proxy.password is None:
            raise OSError("the proxy's password was lost with a node restart")
        try:
            candidates = [str(IPv4Address(proxy.host))]
        except ValueError:
            candidates = await self.resolve(proxy.host)
        usable = [a for a in candidates if not within(a, self.internal)]
        if not usable:
            raise OSError(f"egress proxy {proxy.host} has no public address")
        socks = Socks5(ProxyType.SOCKS5, usable[0], proxy.port, proxy.username or None,
                       proxy.password or None, rdns=True)  # fmt: skip
        try:
            return await socks.connect(dest_host=host, dest_port=port, timeout=CONNECT_TIMEOUT_S)
        except (ProxyError, ProxyConnectionError, ProxyTimeoutError, ValueError) as exc:
            # A name SOCKS5 cannot carry (a label over 63 bytes) is a ValueError here.
            raise OSError(f"egress proxy {proxy.address}: {type(exc).__name__}") from None

    def _client_context(self) -> ssl.SSLContext:
        """How the gateway verifies the servers it re-encrypts to: the system's roots and
        ``trust``. Made once: loading the roots costs tens of milliseconds."""
        if self._upstream_tls is None:
            context = ssl.create_default_context(cafile=self.trust or None)
            if self.trust:  # the system's roots as well as the operator's
                context.load_default_certs()
            context.set_alpn_protocols(["http/1.1"])
            self._upstream_tls = context
        return self._upstream_tls

    async def _target(
        self, rules: EgressRules, name: str | None, address: str, by_name: bool = True
    ) -> str | None:
        """Where a connection for ``name`` goes: an address the node resolves for it (the
        sandbox's own choice when it is one of them), which the name's allowOut entry may
        open (``by_name``) or else the IP rules must allow; None when there is none."""
        assert name is not None
        opens = gateway_reaches if by_name else reaches
        usable = [
            a
            for a in await self.resolve(name)
            if opens(rules, a, internal=self.internal) and self.may_dial(a)
        ]
        if not usable:
            return None
        return address if address in usable else usable[0]


class _Stream:
    """Bytes to and from one side of an intercepted connection (``recv`` b"": closed)."""

    async def recv(self) -> bytes:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """End the stream cleanly (TLS: its close_notify, so a response delimited by the
        connection's end is not read as truncated)."""


class _Counted(_Stream):
    """The sandbox's side of an intercepted connection, counted for the audit log (the
    bytes of the HTTP it sends and receives: inside TLS, before the rule's headers)."""

    def __init__(self, inner: _Stream, flow: _Activity) -> None:
        self.inner, self.flow = inner, flow

    async def recv(self) -> bytes:
        data = await self.inner.recv()
        self.flow.sent += len(data)
        self.flow.at = time.monotonic()
        return data

    async def send(self, data: bytes) -> None:
        self.flow.received += len(data)
        await self.inner.send(data)

    async def close(self) -> None:
        await self.inner.close()


class _Plain(_Stream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def recv(self) -> bytes:
        return await self.reader.read(CHUNK)

    async def send(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()


class _TlsServer(_Stream):
    """TLS toward the sandbox, over a ClientHello already read: OpenSSL does the protocol
    (an ``SSLObject`` on memory BIOs); this only carries its bytes to and from the socket."""

    def __init__(
        self, context: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self.reader, self.writer = reader, writer

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _fill(self) -> None:
        data = await self.reader.read(CHUNK)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def handshake(self, first: bytes) -> None:
        self._in.write(first)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self._tls.read(CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def close(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        with contextlib.suppress(OSError, ConnectionError):
            await self._flush()


async def _next(conn: h11.Connection, stream: _Stream) -> Any:
    """The next h11 event of ``conn``, reading from ``stream`` as it needs (idle: closed)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await asyncio.wait_for(stream.recv(), IDLE_S))


# Methods refused on an intercepted connection: CONNECT would tunnel the credential-bearing
# request elsewhere, TRACE/TRACK make servers echo it (header and all) back to the sandbox.
_REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE", b"TRACK"})
_HOST = re.compile(rb"([A-Za-z0-9.-]+?)\.?(:[0-9]{1,5})?")


def _checked(request: h11.Request, name: str) -> None:
    """A request the gateway may send the rule's headers with: origin-form target (an
    absolute-form URL names its own host, which a server uses instead of Host), a Host that
    is exactly the intercepted name with an optional port, no CONNECT/TRACE, and one framing
    (Content-Length beside Transfer-Encoding could desync the server: smuggling)."""
    if request.method in _REFUSED_METHODS:
        raise _Refused(f"{request.method.decode()} on an intercepted connection")
    if not (request.target.startswith(b"/") or (request.target == b"*"
                                                 and request.method == b"OPTIONS")):  # fmt: skip
        raise _Refused("a request target that is not a path")
    hosts = [v for k, v in request.headers if k == b"host"]
    found = _HOST.fullmatch(hosts[0]) if len(hosts) == 1 else None
    if found is None or found.group(1).decode().lower() != name:
        raise _Refused(f"a request for another host than {name}")
    framing = {k for k, _v in request.headers} & {b"content-length", b"transfer-encoding"}
    if len(framing) == 2:
        raise _Refused("both Content-Length and Transfer-Encoding")


def _rewritten(request: h11.Request, rule: HeaderRule) -> h11.Request:
    """The request with the rule's headers, and without ``Expect`` (the gateway answers the
    client's ``100-continue`` itself, so a body is never held back waiting for it)."""
    assert rule.headers is not None
    replaced = {n.lower().encode() for n, _v in rule.headers} | {b"expect"}
    headers = [(k, v) for k, v in request.headers if k.lower() not in replaced]
    headers += [(n.encode(), v.encode()) for n, v in rule.headers]
    return h11.Request(method=request.method, target=request.target, headers=headers,
                       http_version=request.http_version)  # fmt: skip


async def _relay_rewritten(
    sandbox: _Stream,
    upstream: _Stream,
    first: bytes,
    name: str,
    rules: Callable[[], EgressRules | None],
    flow: _Activity | None = None,
) -> None:
    """Relay HTTP/1 exchanges one at a time (h11 on both sides), each request checked
    (:func:`_checked`) and given the headers of the rule for ``name`` *as it is now*
    (``rules`` is asked per request: a rotated secret or a removed rule applies to open
    connections too; a rule gone or without values ends the connection). Bodies stream
    through; after a ``101`` the bytes are copied."""
    inbound = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HELLO)
    outbound = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    if first:  # (h11 takes b"" for the end of the stream)
        inbound.receive_data(first)
    while True:
        request = await _next(inbound, sandbox)
        if isinstance(request, h11.ConnectionClosed):
            return
        if not isinstance(request, h11.Request):
            raise _Refused("not a request")
        if flow is not None:
            flow.saw(request.method, request.target)
        _checked(request, name)
        current = rules()
        rule = current.rewrite_for(name) if current is not None else None
        if rule is None or rule.headers is None:
            raise _Refused(f"the rule for {name} is gone or has no values")
        await upstream.send(outbound.send(_rewritten(request, rule)))
        if inbound.they_are_waiting_for_100_continue:
            continue_ = h11.InformationalResponse(status_code=100, headers=[])
            await sandbox.send(inbound.send(continue_) or b"")
        while not isinstance(event := await _next(inbound, sandbox), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                raise _Refused("the request ended early")
            await upstream.send(outbound.send(event))
        await upstream.send(outbound.send(event))
        while True:
            event = await _next(outbound, upstream)
            if isinstance(event, h11.ConnectionClosed):
                raise _Refused("the server closed before it answered")
            interim = isinstance(event, h11.InformationalResponse)
            if interim and event.status_code != 101 and request.http_version == b"1.0":
                continue  # an HTTP/1.0 client does not expect 1xx answers
            await sandbox.send(inbound.send(event) or b"")
            if interim and event.status_code == 101:
                await upstream.send(inbound.trailing_data[0])
                await sandbox.send(outbound.trailing_data[0])
                await _copy_both(sandbox, upstream)
                return
            if isinstance(event, h11.EndOfMessage):
                break
        if h11.MUST_CLOSE in (inbound.our_state, outbound.their_state, inbound.their_state):
            return
        inbound.start_next_cycle()
        outbound.start_next_cycle()


async def _copy_both(a: _Stream, b: _Stream) -> None:
    async def copy(src: _Stream, dst: _Stream) -> None:
        while data := await asyncio.wait_for(src.recv(), IDLE_S):
            await dst.send(data)

    await asyncio.gather(copy(a, b), copy(b, a))


def _raise_open_files_limit() -> None:
    """Every spliced connection holds two descriptors: use all the process may have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, so the sandbox's client fails at once."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
