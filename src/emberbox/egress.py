"""What a sandbox's egress rules are: E2B's ``allowOut``/``denyOut`` parsed, checked and decided.

One owner for the rule language, shared by the API (bad input is a 400 before anything
changes), the node (which checks again: its messages may come from anywhere) and the host
firewall (``host/network.py``), which enforces the same order in nftables:

1. a destination in ``allow`` passes (allowed entries win over denied ones);
2. a sandbox with **domain** entries (``example.com``, ``*.example.com``) has its HTTP (port
   80) and TLS (port 443) connections that rules 3-5 would refuse, and all its DNS, steered to
   the node's egress gateway (``host/egress_gateway.py``): a connection passes when its HTTP
   ``Host`` or TLS server name matches an entry, and goes to the address the node resolves
   for that name (never an internal one unless ``allow`` names it); DNS answers only names
   that match, unless the sandbox could reach the node's resolvers anyway;
3. one in ``deny`` is refused (``allow_internet_access: false`` adds ``0.0.0.0/0`` here);
4. DNS to the node's own resolvers passes (the nameservers the sandbox's resolv.conf names);
5. one in the internal ranges (:data:`INTERNAL_RANGES`, plus the host's own networks) is
   refused: "internet access" means the public internet, never the cloud metadata service,
   the host's LAN or other private networks;
6. everything else passes.

Header rules (E2B's ``rules``, :func:`parse_header_rules`) allow nothing by themselves: a
sandbox that has them sends *all* its new port 80/443 connections to the gateway, which
intercepts those whose name has a rule (when rules 1-6 or a domain entry let them through)
and splices the rest by the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .vocabulary import whole_number

IPv4Network = ipaddress.IPv4Network

# The most entries one list (allowOut or denyOut) may hold; more is refused (400), because a
# rule set is applied in one kernel transaction on every create and update.
MAX_ENTRIES = 500

ALL_IPV4 = IPv4Network("0.0.0.0/0")

# Ranges a sandbox with internet access still cannot reach unless allowOut names them: the
# IANA special-purpose ranges that name internal or non-unicast networks. 198.18.0.0/15
# (RFC 2544, benchmark networks) stays reachable: operators stand up test networks there, and
# our tests' fake internet lives in it. The documentation ranges are refused: a host's LAN may
# use them (ours does).
INTERNAL_RANGES: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: cloud metadata services live here
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.168.0.0/16",  # RFC 1918
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)

_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z][a-z0-9-]{0,62}\.?$")


class InvalidRules(ValueError):
    """A rule list the caller got wrong (malformed entry, domain in denyOut, too many)."""


class UnsupportedRule(ValueError):
    """A well-formed entry this deployment cannot enforce (IPv6 in allowOut)."""


# The ports whose traffic the gateway can judge by name: HTTP by its Host header, TLS by the
# server name of its ClientHello. Other ports are judged by address only (E2B's rule too).
DOMAIN_PORTS = (80, 443)


# Header rules (E2B's ``network.rules``): how many domains, headers per domain, and bytes of
# names and values in all; more is refused (400).
MAX_RULE_DOMAINS = 64
MAX_RULE_HEADERS = 32
MAX_RULE_BYTES = 64 * 1024
# Headers a rule may not set: they frame the message or route it, and are the gateway's own.
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                             "upgrade", "te", "trailer", "keep-alive", "expect",
                             "proxy-connection", "http2-settings"})  # fmt: skip
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 field-name
# RFC 9110 field-value (what h11 sends): no control characters but tab inside, none and no
# space at either end.
_VALUE = re.compile(r"([^\x00-\x20\x7f]([^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?")


def valid_header_value(text: str) -> bool:
    """Whether ``text`` can be sent as an HTTP header's value as it is."""
    return _VALUE.fullmatch(text) is not None


@dataclass(frozen=True)
class HeaderRule:
    """E2B's per-domain ``transform``: headers set (added, or replacing one of the same name,
    any case) on every HTTP request to a name matching ``domain``, which the egress gateway
    then reads and re-encrypts. ``headers`` None: the node lost their values (it restarted;
    the control plane sends them again) and refuses such requests meanwhile."""

    domain: str
    headers: tuple[tuple[str, str], ...] | None = field(default=(), repr=False)

    def matches(self, name: str | None) -> bool:
        return name_allowed((self.domain,), name)


MAX_PROXY_CREDENTIAL = 255  # bytes of a SOCKS5 username or password (RFC 1929)
_PROXY_KEYS = frozenset({"address", "username", "password", "tls"})


@dataclass(frozen=True)
class EgressProxy:
    """E2B's ``egressProxy``: a SOCKS5 proxy the node tunnels the sandbox's allowed TCP
    through (its own connection to ``host``, which the node resolves at each dial and refuses
    when internal). ``password`` None: the node lost it (it restarted; the control plane
    sends it again), so its dials fail meanwhile."""

    host: str
    port: int
    username: str = ""
    password: str | None = field(default="", repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def within(address: str | ipaddress.IPv4Address, nets: Iterable[IPv4Network]) -> bool:
    """Whether an IPv4 address lies in any of ``nets``."""
    ip = ipaddress.IPv4Address(address)
    return any(ip in net for net in nets)


def parse_egress_proxy(raw: object) -> EgressProxy | None:
    """``egressProxy`` as the API got it, checked: None when absent; 400 for a malformed
    address or credentials or an internal address; 501 for TLS to the proxy or IPv6."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("address"), str):
        raise InvalidRules('egressProxy must be an object with an "address" ("host:port")')
    unknown = sorted(set(raw) - _PROXY_KEYS)
    if unknown:
        raise InvalidRules(f"egressProxy: unknown field(s) {', '.join(unknown)}")
    tls = raw.get("tls")
    if tls is not None and not (isinstance(tls, dict) and tls.get("enabled") is False
                                and set(tls) == {"enabled"}):  # fmt: skip
        raise UnsupportedRule("egressProxy.tls: TLS to the proxy is not supported")
    host, sep, port_text = raw["address"].strip().rpartition(":")
    host = host.lower().rstrip(".")
    port = (whole_number(port_text, 5) if sep else None) or 0
    if not 1 <= port <= 65535 or not host:
        raise InvalidRules(f"egressProxy.address: {raw['address']!r} is not host:port")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _DOMAIN.match(host) or host.startswith("*."):
            raise InvalidRules(f"egressProxy.address: {host!r} is not a host name") from None
    else:
        if not isinstance(ip, ipaddress.IPv4Address):
            raise UnsupportedRule("egressProxy.address: IPv6 proxies are not supported")
        if within(ip, INTERNAL_RANGES):
            raise InvalidRules(f"egressProxy.address: {ip} is an internal address")
    credentials = []
    for key in ("username", "password"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, str) or not 0 < len(value.encode()) <= MAX_PROXY_CREDENTIAL
        ):
            raise InvalidRules(f"egressProxy.{key}: 1 to {MAX_PROXY_CREDENTIAL} bytes of text")
        credentials.append(value or "")
    if credentials[1] and not credentials[0]:
        raise InvalidRules("egressProxy.password needs a username")
    return EgressProxy(host, port, credentials[0], credentials[1])


MAX_DNS_SERVERS = 10


def parse_dns_servers(raw: object) -> tuple[str, ...]:
    """E2B's ``dnsServers``: IPv4 addresses (at most 10) a sandbox whose ``allowOut`` names a
    domain may reach, every port (its own resolvers, beside the node's)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_DNS_SERVERS:
        raise InvalidRules(f"dnsServers must be a list of at most {MAX_DNS_SERVERS} addresses")
    out: list[str] = []
    for entry in raw:
        try:
            ip = ipaddress.ip_address(entry.strip() if isinstance(entry, str) else "")
        except ValueError:
            raise InvalidRules(f"dnsServers: {entry!r} is not an IP address") from None
        if not isinstance(ip, ipaddress.IPv4Address):
            raise UnsupportedRule(f"dnsServers: {ip} is IPv6 (sandboxes have IPv4 egress only)")
        if within(ip, INTERNAL_RANGES):  # it opens every port, not just DNS
            raise InvalidRules(f"dnsServers: {ip} is an internal address (allowOut opens those)")
        if str(ip) not in out:
            out.append(str(ip))
    return tuple(out)


def names_a_domain(allow_out: Sequence[str]) -> bool:
    return any(isinstance(_entry(e, "allowOut"), _Domain) for e in allow_out)


def proxy_dict(proxy: EgressProxy) -> dict[str, object]:
    """The proxy in E2B's shape, never its password (shown and stored so; the row keeps the
    password sealed beside it)."""
    out: dict[str, object] = {"address": proxy.address}
    if proxy.username:
        out["username"] = proxy.username
    return out


@dataclass(frozen=True)
class EgressRules:
    """Collapsed IPv4 networks; ``deny`` already holds ``0.0.0.0/0`` when internet is off.
    ``domains`` are allowOut's names, lower-case (``*.`` kept for wildcards); ``rewrites``
    the header rules (they allow nothing by themselves)."""

    allow: tuple[IPv4Network, ...] = ()
    deny: tuple[IPv4Network, ...] = ()
    domains: tuple[str, ...] = ()
    rewrites: tuple[HeaderRule, ...] = ()
    proxy: EgressProxy | None = None  # where its allowed TCP is tunneled (SOCKS5)

    def rewrite_for(self, name: str | None) -> HeaderRule | None:
        """The rule for ``name``: one naming it exactly, else the longest wildcard."""
        matching = [r for r in self.rewrites if r.matches(name)]
        matching.sort(key=lambda r: (r.domain.startswith("*."), -len(r.domain)))
        return matching[0] if matching else None


class _Domain(str):
    """An entry that is a domain name (normalised), as opposed to an address."""


def _entry(raw: object, field: str) -> IPv4Network | _Domain | None:
    """One entry as a network or a domain; None for an IPv6 one (no IPv6 egress)."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRules(f"{field}: every entry must be a non-empty string, got {raw!r}")
    text = raw.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        if _DOMAIN.match(text.lower()) and not text.replace(".", "").isdigit():
            if field == "denyOut":
                raise InvalidRules(
                    f"denyOut: '{text}' is a domain; denyOut takes CIDR blocks and IP "
                    "addresses only"
                ) from None
            return _Domain(text.lower().rstrip("."))
        raise InvalidRules(
            f"{field}: '{text}' is not a CIDR block, an IP address or a domain"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_IPV4_MAPPED):
        # ``::ffff:1.2.3.4`` is IPv4's 1.2.3.4: kept as IPv6, it was shown back and not enforced
        return IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net if isinstance(net, IPv4Network) else None


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_list(entries: Sequence[object] | None, field: str) -> tuple[str, ...]:
    """Check one list and return it normalised (CIDR strings, in order, without duplicates).

    IPv6 entries are kept in ``denyOut`` (trivially honoured: sandboxes have no IPv6 route)
    and refused in ``allowOut``, which could not be honoured.
    """
    if entries is None:
        return ()
    if not isinstance(entries, list | tuple):
        raise InvalidRules(f"{field} must be a list of strings")
    if len(entries) > MAX_ENTRIES:
        raise InvalidRules(f"{field} has {len(entries)} entries; at most {MAX_ENTRIES} allowed")
    out: list[str] = []
    for raw in entries:
        net = _entry(raw, field)
        if isinstance(net, _Domain):
            text = str(net)
        elif net is None:
            if field == "allowOut":
                raise UnsupportedRule(
                    f"allowOut: IPv6 entries ('{raw}') are not supported: sandboxes have "
                    "IPv4 egress only"
                )
            text = str(ipaddress.ip_network(str(raw).strip(), strict=False))
        else:
            text = str(net)
        if text not in out:
            out.append(text)
    return tuple(out)


def _collapse(nets: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(ipaddress.collapse_addresses(nets))


def parse_header_rules(raw: object) -> tuple[HeaderRule, ...]:
    """E2B's ``rules`` (``{domain: [{"transform": {"headers": {name: value}}}, ...]}``)
    checked, one :class:`HeaderRule` per domain (a later rule's header wins over an earlier
    one's). Values are kept as given: ``${e2b.secrets.<name>}`` placeholders are the control
    plane's to resolve. An address or CIDR key, or a transform other than ``headers``, is
    :class:`UnsupportedRule`; anything malformed or too large :class:`InvalidRules`."""
    if raw in (None, {}):
        return ()
    if not isinstance(raw, dict):
        raise InvalidRules("rules must map domains to lists of rules")
    if len(raw) > MAX_RULE_DOMAINS:
        raise InvalidRules(f"rules name {len(raw)} domains; at most {MAX_RULE_DOMAINS} allowed")
    out: list[HeaderRule] = []
    size = 0
    for key, entries in raw.items():
        entry = _entry(key, "rules") if isinstance(key, str) else None
        if not isinstance(entry, _Domain):
            raise UnsupportedRule(
                f"rules: '{key}' is not a domain; header rules apply to domains only"
            )
        if not isinstance(entries, list):
            raise InvalidRules(f"rules['{key}'] must be a list of rules")
        headers: dict[str, tuple[str, str]] = {}
        for rule in entries:
            for name, value in _rule_headers(str(key), rule):
                headers[name.lower()] = (name, value)
                size += len(name.encode()) + len(value.encode())
        if len(headers) > MAX_RULE_HEADERS:
            raise InvalidRules(f"rules['{key}'] sets {len(headers)} headers; at most "
                               f"{MAX_RULE_HEADERS} allowed")  # fmt: skip
        if headers:  # a rule that sets nothing intercepts nothing
            out.append(HeaderRule(str(entry), tuple(headers.values())))
    if size > MAX_RULE_BYTES:
        raise InvalidRules(f"rules hold {size} bytes of headers; at most {MAX_RULE_BYTES}")
    return tuple(out)


def rules_dict(rewrites: Iterable[HeaderRule]) -> dict[str, list[dict[str, object]]]:
    """Header rules in E2B's ``rules`` shape (one rule per domain), as stored and shown."""
    return {r.domain: [{"transform": {"headers": dict(r.headers or ())}}] for r in rewrites}


def header_rules_from(
    rules: Iterable[tuple[str, Iterable[tuple[str, str]]]],
) -> tuple[HeaderRule, ...]:
    """(domain, headers) pairs, as node messages carry them, checked like E2B's ``rules``."""
    return parse_header_rules(rules_dict(HeaderRule(d, tuple(h)) for d, h in rules))


def _rule_headers(domain: str, rule: object) -> list[tuple[str, str]]:
    if not isinstance(rule, dict):
        raise InvalidRules(f"rules['{domain}']: every rule is an object")
    unknown = sorted(set(rule) - {"transform"})
    if unknown:
        raise UnsupportedRule(f"rules['{domain}']: {', '.join(unknown)} not supported")
    transform = rule.get("transform") or {}
    if not isinstance(transform, dict):
        raise InvalidRules(f"rules['{domain}'].transform must be an object")
    unknown = sorted(set(transform) - {"headers"})
    if unknown:
        raise UnsupportedRule(
            f"rules['{domain}'].transform: {', '.join(unknown)} not supported (only headers)"
        )
    headers = transform.get("headers") or {}
    if not isinstance(headers, dict):
        raise InvalidRules(f"rules['{domain}'].transform.headers must map names to values")
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise InvalidRules(f"rules['{domain}']: '{name}' is not a header name")
        if name.lower() in FRAMING_HEADERS or name.lower().startswith("proxy-"):
            raise InvalidRules(f"rules['{domain}']: the {name} header cannot be set")
        if not isinstance(value, str) or not valid_header_value(value):
            raise InvalidRules(
                f"rules['{domain}']: the {name} header's value must be a string without "
                "control characters (but tab) or spaces at either end"
            )
    return list(headers.items())


def rules_for(
    allow_out: Sequence[str],
    deny_out: Sequence[str],
    allow_internet: bool = True,
    rewrites: Sequence[HeaderRule] = (),
    proxy: EgressProxy | None = None,
) -> EgressRules:
    """The enforcing view of a policy: IPv4 networks (overlaps merged) and domain names."""
    allow: list[IPv4Network] = []
    domains: list[str] = []
    for entry in (_entry(e, "allowOut") for e in allow_out):
        if isinstance(entry, _Domain):
            if entry not in domains:
                domains.append(str(entry))
        elif entry is not None:
            allow.append(entry)
    deny = [n for n in (_entry(e, "denyOut") for e in deny_out) if isinstance(n, IPv4Network)]
    if not allow_internet:
        deny.append(ALL_IPV4)
    return EgressRules(_collapse(allow), _collapse(deny), tuple(domains), tuple(rewrites), proxy)


def name_allowed(domains: Sequence[str], name: str | None) -> bool:
    """Whether ``name`` (a Host header or TLS server name) matches an entry: ``example.com``
    matches only itself, ``*.example.com`` any name below it (not ``example.com`` itself)."""
    if not name:
        return False
    name = name.lower().rstrip(".")
    for entry in domains:
        if entry.startswith("*."):
            if name.endswith(entry[1:]) and len(name) > len(entry) - 1:
                return True
        elif name == entry:
            return True
    return False


def reaches(
    rules: EgressRules,
    address: str,
    *,
    internal: Sequence[IPv4Network] = INTERNAL_RANGES,
    resolvers: Sequence[str] = (),
    dns: bool = False,
) -> bool:
    """Whether a packet to ``address`` passes, in the firewall's order (module docstring)."""
    if within(address, rules.allow):
        return True
    if within(address, rules.deny):
        return False
    if dns and address in resolvers:
        return True
    return not within(address, internal)


def gateway_reaches(
    rules: EgressRules, address: str, *, internal: Sequence[IPv4Network] = INTERNAL_RANGES
) -> bool:
    """Whether the gateway may connect to ``address``, resolved for a name that matched a
    domain entry: the match wins over ``deny`` (allowed entries win), but it never opens an
    internal address that ``allow`` does not name, since a public name may resolve anywhere."""
    return within(address, rules.allow) or not within(address, internal)
