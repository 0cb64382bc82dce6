"""Per-sandbox networking: a netns, a veth pair with a /30 from a pool, and nftables rules.

Everything lives in the ``inet emberbox`` table. Its base chains are the same for every
sandbox: sandboxes never reach each other or the host (only replies to connections the host
opened get back in), and a packet a sandbox sends out is handed, by its host veth's name
(the ``sandboxes`` verdict map), to that sandbox's own chain and sets. Creating, changing
or removing one sandbox's rules touches only its own chain, sets and map element, never
another sandbox's. The rule order is ``egress.py``'s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..egress import DOMAIN_PORTS, INTERNAL_RANGES, EgressRules
from . import commands as _proc
from .egress_audit import RULE_DENY_OUT, RULE_INTERNAL, RULE_IPV6
from .errors import HostExhausted

log = logging.getLogger(__name__)

NETNS_PREFIX = "ebx"
HOST_VETH_PREFIX = "ebh"
GUEST_VETH_PREFIX = "ebs"
NFT_TABLE = "emberbox"
GATEWAY_MARK = 0x0E6B0000  # conntrack mark bits of connections redirected to our gateway
ALLOW_MARK = 0x1  # ... and the bit of connections an allowOut entry let through
_MARK = f"{GATEWAY_MARK:#x}"
# Refused new connections are logged (NFLOG, for the egress audit log: ``flow_monitor.py``)
# with this prefix and the rule that refused them, at most this often per sandbox and rule.
LOG_PREFIX = "ebx:"
_LOG_LIMIT = "limit rate 20/second burst 40 packets"
_T = f"inet {NFT_TABLE}"

# The base chains, (re)written whole at every node start in one transaction: idempotent, and
# it upgrades a table an older node made (whose sandboxes, found only in the ``egress`` set,
# get the default policy in ``default_egress``). Per-sandbox chains, sets and map elements are
# never touched here. ``egress`` holds every sandbox address that is masqueraded on its way out.
# ``prerouting`` hands a sandbox's new connections to its own NAT chain (``sandbox_nat``), which
# redirects to the egress gateway what a sandbox with domain entries must have judged by name,
# marking the connection (:data:`GATEWAY_MARK`); ``input`` lets exactly those in (not what the
# host's own redirect rules send). A packet whose source address does not belong on the link
# it came in on is dropped (reverse-path check): the gateway knows a sandbox by its address.
_BASE_OBJECTS = f"""
add table {_T}
add set {_T} egress {{ type ipv4_addr; }}
add set {_T} internal {{ type ipv4_addr; flags interval; }}
add set {_T} resolvers {{ type ipv4_addr; flags interval; }}
add map {_T} sandboxes {{ type ifname : verdict; }}
add map {_T} sandbox_nat {{ type ifname : verdict; }}
add chain {_T} refuse
add chain {_T} default_egress
add chain {_T} forward {{ type filter hook forward priority -10; policy accept; }}
add chain {_T} input {{ type filter hook input priority -10; policy accept; }}
add chain {_T} postrouting {{ type nat hook postrouting priority 100; policy accept; }}
add chain {_T} prerouting {{ type nat hook prerouting priority -100; policy accept; }}
flush chain {_T} refuse
flush chain {_T} default_egress
flush chain {_T} forward
flush chain {_T} input
flush chain {_T} postrouting
flush chain {_T} prerouting
add rule {_T} refuse meta l4proto tcp reject with tcp reset
add rule {_T} refuse reject with icmpx admin-prohibited
add rule {_T} default_egress ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 accept
add rule {_T} default_egress ip daddr @internal goto refuse
add rule {_T} default_egress accept
add rule {_T} forward iifname "{HOST_VETH_PREFIX}*" fib saddr . iif oif missing drop
add rule {_T} forward iifname "{HOST_VETH_PREFIX}*" oifname "{HOST_VETH_PREFIX}*" drop
add rule {_T} forward oifname "{HOST_VETH_PREFIX}*" ct state established,related accept
add rule {_T} forward oifname "{HOST_VETH_PREFIX}*" drop
add rule {_T} forward iifname "{HOST_VETH_PREFIX}*" iifname vmap @sandboxes
add rule {_T} forward iifname "{HOST_VETH_PREFIX}*" ip saddr @egress goto default_egress
add rule {_T} forward iifname "{HOST_VETH_PREFIX}*" drop
add rule {_T} input iifname "{HOST_VETH_PREFIX}*" fib saddr . iif oif missing drop
add rule {_T} input iifname "{HOST_VETH_PREFIX}*" ct state established,related accept
add rule {_T} input iifname "{HOST_VETH_PREFIX}*" ct mark and {_MARK} == {_MARK} accept
add rule {_T} input iifname "{HOST_VETH_PREFIX}*" drop
add rule {_T} prerouting iifname "{HOST_VETH_PREFIX}*" iifname vmap @sandbox_nat
add rule {_T} postrouting oifname != "{HOST_VETH_PREFIX}*" ip saddr @egress masquerade
flush set {_T} internal
flush set {_T} resolvers
"""


def _elements(nets: Iterable[ipaddress.IPv4Network | str]) -> str:
    return ", ".join(str(n) for n in nets)


def _fill(set_name: str, nets: Sequence[ipaddress.IPv4Network | str]) -> str:
    return f"add element {_T} {set_name} {{ {_elements(nets)} }}\n" if nets else ""


class PoolExhausted(HostExhausted):
    """Every /30 of the configured subnet is leased."""


@dataclass(frozen=True)
class Lease:
    """One /30 link: derived from its index alone, so state files only need the index.
    Names carry ``instance`` (see GVisorConfig) so data dirs sharing a host never collide."""

    index: int
    sandbox_id: str
    subnet: ipaddress.IPv4Network
    instance: str

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 4 * self.index + 1)

    @property
    def guest_ip(self) -> str:
        return str(self.subnet.network_address + 4 * self.index + 2)

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.instance}-{self.sandbox_id}"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def host_veth(self) -> str:
        return f"{HOST_VETH_PREFIX}{self.instance}{self.index}"

    @property
    def guest_veth(self) -> str:
        return f"{GUEST_VETH_PREFIX}{self.instance}{self.index}"


class AddressPool:
    """Leases /30 links by creating ``<dir>/<index>`` with O_EXCL: atomic across processes."""

    def __init__(self, directory: Path, subnet: ipaddress.IPv4Network, instance: str) -> None:
        self.directory = directory
        self.subnet = subnet
        self.instance = instance
        self.size = subnet.num_addresses // 4

    def claim(self, sandbox_id: str) -> Lease:
        """A lease file appears with its owner in it: written aside, then hard-linked to its
        index, which fails if the index is taken. (Created empty and then written, a claimer
        killed in between left a file naming no one, an address no one would ever free.)"""
        self.directory.mkdir(parents=True, exist_ok=True)
        taken = {int(p.name) for p in self.directory.iterdir() if p.name.isdigit()}
        owner = self.directory / f".claim-{self.instance}-{sandbox_id}-{os.getpid()}"
        owner.write_text(f"{self.instance}:{sandbox_id}")
        try:
            for index in range(self.size):
                if index in taken:
                    continue
                try:
                    os.link(owner, self.directory / str(index))
                except FileExistsError:
                    continue
                return Lease(index, sandbox_id, self.subnet, self.instance)
        finally:
            owner.unlink(missing_ok=True)
        raise PoolExhausted(f"no free address in {self.subnet} ({self.size} sandboxes)")

    def sweep_cut_claims(self) -> None:
        """Remove the owner files of this instance's claims whose process died mid-claim."""
        for owner in self.directory.glob(f".claim-{self.instance}-*"):
            pid = owner.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                owner.unlink(missing_ok=True)

    def owns(self, lease: Lease) -> bool:
        """Whether the lease file still names this sandbox (it may have been released and
        claimed again by another sandbox since ``lease`` was read)."""
        try:
            return (self.directory / str(lease.index)).read_text() == (
                f"{lease.instance}:{lease.sandbox_id}"
            )
        except FileNotFoundError:
            return False

    def release(self, lease: Lease) -> None:
        if lease.instance != self.instance:
            return  # never release another instance's address
        path = self.directory / str(lease.index)
        try:
            if path.read_text() == f"{lease.instance}:{lease.sandbox_id}":
                path.unlink()
        except FileNotFoundError:
            pass

    def leases(self) -> list[Lease]:
        """This instance's leases (other instances' files are left alone)."""
        if not self.directory.exists():
            return []
        out = []
        for p in self.directory.iterdir():
            if not p.name.isdigit():
                continue
            with contextlib.suppress(FileNotFoundError):
                owner, _, sandbox_id = p.read_text().partition(":")
                if owner == self.instance:
                    out.append(Lease(int(p.name), sandbox_id, self.subnet, self.instance))
        return out


def host_resolvers(loopback: bool = False) -> list[str]:
    """The host's IPv4 nameservers a sandbox can reach (loopback ones it cannot, but the
    node's gateway, on the host, can: ``loopback`` keeps them, e.g. systemd-resolved's)."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(parts[1])
                if isinstance(ip, ipaddress.IPv4Address) and (loopback or not ip.is_loopback):
                    out.append(str(ip))
    return out


async def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host is directly attached to (its LAN), sandbox links aside."""
    out = await _proc.run("ip", "-j", "-4", "addr", "show", check=False)
    nets = []
    with contextlib.suppress(ValueError):
        for link in json.loads(out.stdout or "[]"):
            if str(link.get("ifname", "")).startswith((HOST_VETH_PREFIX, "lo")):
                continue
            for addr in link.get("addr_info", []):
                nets.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", False))
    return nets


async def ensure_firewall() -> list[ipaddress.IPv4Network]:
    """Write the base table (see ``_BASE_OBJECTS``) and the node-wide sets: the internal
    ranges plus the host's own networks, and the host's resolvers; enable forwarding.
    Returns the internal networks (the gateway refuses them too)."""
    internal = list(ipaddress.collapse_addresses([*INTERNAL_RANGES, *await host_networks()]))
    script = _BASE_OBJECTS + _fill("internal", internal) + _fill("resolvers", host_resolvers())
    await _proc.run("nft", "-f", "-", stdin=script.encode())
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    return internal


def log_group(instance: str) -> int:
    """The instance's NFLOG group (16 bits; groups below 1024 are left to others). Groups are
    exclusive to one listener: each instance has its own."""
    return 1024 + int(instance, 16) % 64000


def _refusal(chain: str, lease: Lease, match: str, rule: str) -> str:
    """Log the first packet of a new connection ``match`` refuses, then refuse it (two rules:
    the rate limit only ever skips the logging)."""
    logged = f'log prefix "{LOG_PREFIX}{rule}" group {log_group(lease.instance)}'
    return (
        f"add rule {_T} {chain} {match} ct state new {_LOG_LIMIT} {logged}\n"
        f"add rule {_T} {chain} {match} goto refuse\n"
    )


def _names(lease: Lease) -> tuple[str, str, str]:
    """The sandbox's chain and its allow and deny sets, named after its host veth."""
    chain = lease.host_veth
    return chain, f"{chain}_allow", f"{chain}_deny"


def _gateway_chains(instance: str) -> tuple[str, str]:
    """The instance's chains that redirect to its egress gateway (TCP, DNS)."""
    return f"egw{instance}_tcp", f"egw{instance}_dns"


async def point_gateway(instance: str, tcp_port: int, dns_port: int, dns_tcp_port: int) -> None:
    """(Re)write the instance's redirect chains for the gateway's current ports: sandboxes'
    NAT chains jump here, so a restarted node only rewrites these two."""
    tcp, dns = _gateway_chains(instance)
    mark = f"ct mark set ct mark or {_MARK}"
    script = (
        f"add chain {_T} {tcp}\nflush chain {_T} {tcp}\n"
        f"add rule {_T} {tcp} meta l4proto tcp {mark} redirect to :{tcp_port}\n"
        f"add chain {_T} {dns}\nflush chain {_T} {dns}\n"
        f"add rule {_T} {dns} meta l4proto udp {mark} redirect to :{dns_port}\n"
        f"add rule {_T} {dns} meta l4proto tcp {mark} redirect to :{dns_tcp_port}\n"
    )
    await _proc.run("nft", "-f", "-", stdin=script.encode())


async def unpoint_gateway(instance: str) -> None:
    """The node stopped: with no sandbox of the instance left, its chains go (every test
    server had left two behind, for good); while a sandbox still jumps to them, what would
    go to the gateway is dropped, never sent to whatever binds its old ports next."""
    tcp, dns = _gateway_chains(instance)
    removed = await _proc.run(
        "nft", "-f", "-", stdin=f"delete chain {_T} {tcp}\ndelete chain {_T} {dns}\n".encode(),
        check=False,
    )  # fmt: skip
    if removed.code == 0:  # (one transaction: a chain still in use keeps both)
        return
    script = "".join(
        f"add chain {_T} {c}\nflush chain {_T} {c}\nadd rule {_T} {c} drop\n" for c in (tcp, dns)
    )
    await _proc.run("nft", "-f", "-", stdin=script.encode())


def _rules_script(lease: Lease, rules: EgressRules, node_dns: bool = False) -> str:
    """Replace the sandbox's set elements and NAT rules: one transaction, so no packet sees
    half a change. The NAT chain is empty unless the rules name domains or have header rules
    (then every new port 80/443 connection goes to the gateway first), a proxy (then every
    new TCP connection but DNS does: it tunnels what the rules allow), or ``node_dns`` (its
    resolv.conf names the node: its DNS keeps going to the gateway)."""
    chain, allow, deny = _names(lease)
    nat = f"{chain}_nat"
    script = (
        f"flush set {_T} {allow}\nflush set {_T} {deny}\n"
        + _fill(allow, rules.allow)
        + _fill(deny, rules.deny)
        + f"add chain {_T} {nat}\nflush chain {_T} {nat}\n"
    )
    tcp, dns = _gateway_chains(lease.instance)
    if rules.proxy is not None:  # every TCP connection is the gateway's to tunnel
        if rules.domains or rules.rewrites or node_dns:
            script += (  # DNS to an allowed resolver is tunneled; the rest the node answers
                f"add rule {_T} {nat} ip daddr @{allow} tcp dport 53 goto {tcp}\n"
                f"add rule {_T} {nat} tcp dport 53 goto {dns}\n"
            )
        script += (
            f"add rule {_T} {nat} ip daddr @resolvers tcp dport 53 return\n"
            f"add rule {_T} {nat} meta l4proto tcp goto {tcp}\n"
        )
    if rules.rewrites:  # header rules: the gateway sees every HTTP(S) connection first
        ports = ", ".join(str(p) for p in DOMAIN_PORTS)
        script += f"add rule {_T} {nat} tcp dport {{ {ports} }} goto {tcp}\n"
    if rules.domains or rules.rewrites or node_dns:
        script += (
            f"add rule {_T} {nat} ip daddr @{allow} return\n"
            f"add rule {_T} {nat} meta l4proto {{ tcp, udp }} th dport 53 goto {dns}\n"
        )
    if rules.domains:
        ports = ", ".join(str(p) for p in DOMAIN_PORTS)
        script += (
            f"add rule {_T} {nat} tcp dport {{ {ports} }} ip daddr @{deny} goto {tcp}\n"
            f"add rule {_T} {nat} tcp dport {{ {ports} }} ip daddr @internal goto {tcp}\n"
        )
    return script


async def setup(lease: Lease, rules: EgressRules, node_dns: bool = False) -> None:
    """Create netns + veth pair, address both ends and give the sandbox its own chain and
    sets; undo everything if a step fails."""
    chain, allow, deny = _names(lease)
    script = (
        f"add set {_T} {allow} {{ type ipv4_addr; flags interval; }}\n"
        f"add set {_T} {deny} {{ type ipv4_addr; flags interval; }}\n"
        f"add chain {_T} {chain}\n"
        f"flush chain {_T} {chain}\n"
        + _refusal(chain, lease, "meta nfproto ipv6", RULE_IPV6)
        + f"add rule {_T} {chain} ip daddr @{allow} ct mark set ct mark or {ALLOW_MARK} "
        "accept\n"
        + _refusal(chain, lease, f"ip daddr @{deny}", RULE_DENY_OUT)
        + f"add rule {_T} {chain} ip daddr @resolvers meta l4proto {{ tcp, udp }} "
        "th dport 53 accept\n"
        + _refusal(chain, lease, "ip daddr @internal", RULE_INTERNAL)
        + f"add rule {_T} {chain} accept\n"
        + _rules_script(lease, rules, node_dns)
        + f'add element {_T} sandboxes {{ "{lease.host_veth}" : goto {chain} }}\n'
        + f'add element {_T} sandbox_nat {{ "{lease.host_veth}" : goto {chain}_nat }}\n'
        f"add element {_T} egress {{ {lease.guest_ip} }}\n"
    )
    try:
        # The rules name the host veth as a string: they need not wait for the link.
        await _proc.concurrently(_links(lease), _proc.run("nft", "-f", "-", stdin=script.encode()))
    except BaseException:
        await teardown(lease)
        raise


async def _links(lease: Lease) -> None:
    """The netns and its veth pair, addressed and up: one ``ip`` per namespace."""
    host = (
        f"netns add {lease.netns}\n"
        f"link add {lease.host_veth} type veth peer name {lease.guest_veth} netns {lease.netns}\n"
        f"addr add {lease.host_ip}/30 dev {lease.host_veth}\n"
        f"link set {lease.host_veth} up\n"
    )
    await _proc.run("ip", "-batch", "-", stdin=host.encode())
    guest = (
        f"addr add {lease.guest_ip}/30 dev {lease.guest_veth}\n"
        f"link set {lease.guest_veth} up\n"
        "link set lo up\n"
        f"route add default via {lease.host_ip}\n"
    )
    await _proc.run("ip", "-n", lease.netns, "-batch", "-", stdin=guest.encode())


async def apply_rules(lease: Lease, rules: EgressRules, node_dns: bool = False) -> None:
    """Replace a live sandbox's egress rules. Every packet it sends is checked against the
    current sets, so established connections to a now-refused address are reset too."""
    await _proc.run("nft", "-f", "-", stdin=_rules_script(lease, rules, node_dns).encode())


async def readdress(lease: Lease) -> None:
    """Give the guest end of the veth its address and route back before a restore.

    gVisor moves the address into its own network stack when it starts, so the netns keeps
    none; a restore reads the interface's address from the netns again and would come up
    unreachable without it. Never call this while a sandbox runs in the netns: the kernel
    would then answer (reset) connections meant for the sandbox.
    """
    batch = (
        f"addr replace {lease.guest_ip}/30 dev {lease.guest_veth}\n"
        f"route replace default via {lease.host_ip}\n"
    )
    await _proc.run("ip", "-n", lease.netns, "-batch", "-", stdin=batch.encode())


async def teardown(lease: Lease, owns_index: bool = True) -> None:
    """Remove the netns (which takes the veth pair with it), then, while the index is still
    ours, the sandbox's firewall objects and a host veth left behind; every step tolerates
    "already gone".

    ``owns_index`` False means the index may belong to another sandbox now: the objects
    named after it (veth, chain, sets, egress address) are then left alone.
    """
    await _proc.run("ip", "netns", "delete", lease.netns, check=False)
    if not owns_index:
        return
    await _remove_rules(lease)
    await _proc.run("ip", "link", "delete", lease.host_veth, check=False)
    await forget_flows(lease.guest_ip)


async def forget_flows(address: str) -> None:
    """Delete the host's conntrack entries to and from a sandbox address that is gone.

    A connection still open when its sandbox dies keeps its entry for days (the gateway's
    reset cannot be routed to a veth that no longer exists, so conntrack never sees the end):
    entries pile up towards the host's table limit, and the next sandbox given the address
    could send a SYN matching one, which conntrack hands to the old entry's NAT target, a
    gateway port from an earlier node process, which refuses it. Missing ``conntrack``
    (Debian ``conntrack``) is logged, not fatal: the sandbox is gone either way.
    """
    for direction in ("--orig-src", "--orig-dst"):
        try:
            # Exit 1 means "no entry matched".
            await _proc.run("conntrack", "-D", direction, address, check=False)
        except FileNotFoundError:
            log.error("conntrack is not installed: a killed sandbox's connection tracking "
                      "entries stay until they time out")  # fmt: skip
            return


async def _remove_rules(lease: Lease) -> None:
    chain, allow, deny = _names(lease)
    steps = [
        f'delete element {_T} sandboxes {{ "{lease.host_veth}" }}',
        f'delete element {_T} sandbox_nat {{ "{lease.host_veth}" }}',
        f"delete element {_T} egress {{ {lease.guest_ip} }}",
        f"flush chain {_T} {chain}\ndelete chain {_T} {chain}",
        f"flush chain {_T} {chain}_nat\ndelete chain {_T} {chain}_nat",
        f"delete set {_T} {allow}",
        f"delete set {_T} {deny}",
    ]
    everything = "\n".join(steps) + "\n"
    if (await _proc.run("nft", "-f", "-", stdin=everything.encode(), check=False)).code == 0:
        return
    for step in steps:  # some were gone already: remove the rest one by one
        await _proc.run("nft", "-f", "-", stdin=(step + "\n").encode(), check=False)


async def remove_stray_rules(
    instance: str, subnet: ipaddress.IPv4Network, leased: set[str]
) -> list[str]:
    """Remove this instance's per-sandbox firewall objects whose host veth is not ``leased``
    (left by a node killed mid-teardown); only the instance's one node process calls this."""
    prefix = HOST_VETH_PREFIX + instance
    veths = {o.split(":", 1)[1].removesuffix("_allow").removesuffix("_deny").removesuffix("_nat")
             for o in await list_rule_objects(instance)}  # fmt: skip
    stray = sorted(v for v in veths - leased if v[len(prefix) :].isdigit())
    for veth in stray:
        await _remove_rules(Lease(int(veth[len(prefix) :]), "", subnet, instance))
    return stray


async def list_rule_objects(instance: str) -> list[str]:
    """This instance's per-sandbox chains, sets and map elements (for leak checks)."""
    out = await _proc.run("nft", "-j", "list", "table", "inet", NFT_TABLE, check=False)
    prefix = HOST_VETH_PREFIX + instance
    found: list[str] = []
    with contextlib.suppress(ValueError):
        for item in json.loads(out.stdout or "{}").get("nftables", []):
            for kind in ("chain", "set"):
                name = str(item.get(kind, {}).get("name", ""))
                if name.startswith(prefix):
                    found.append(f"{kind}:{name}")
            elems = item.get("map", {}).get("elem", []) if "map" in item else []
            found += [f"map:{e[0]}" for e in elems if str(e[0]).startswith(prefix)]
    return found


async def link_exists(name: str) -> bool:
    return (await _proc.run("ip", "link", "show", name, check=False)).code == 0


async def delete_link(name: str) -> None:
    await _proc.run("ip", "link", "delete", name, check=False)


def netns_prefix(instance: str) -> str:
    return f"{NETNS_PREFIX}{instance}-"


async def list_netns(instance: str) -> list[str]:
    """Names of this instance's namespaces on the host (``ebx<instance>-<sandbox id>``)."""
    out = await _proc.run("ip", "netns", "list", check=False)
    names = (line.split()[0] for line in out.stdout.splitlines() if line.strip())
    return [n for n in names if n.startswith(netns_prefix(instance))]


async def list_host_veths(instance: str) -> list[str]:
    out = await _proc.run("ip", "-o", "link", "show", "type", "veth", check=False)
    names = []
    for line in out.stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(HOST_VETH_PREFIX + instance):
            names.append(name)
    return names
