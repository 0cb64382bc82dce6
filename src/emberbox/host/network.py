"""Per-sandbox networking: a netns, a veth pair with a /30 from a pool, and one nft table.

Isolation comes from the ``inet emberbox`` table: sandboxes can never reach each other or the
host (only replies to connections the host opened get back in), and egress is forwarded and
masqueraded only for addresses in the ``egress`` set, i.e. sandboxes whose policy allows it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from . import commands as _proc
from .errors import HostExhausted

NETNS_PREFIX = "ebx"
HOST_VETH_PREFIX = "ebh"
GUEST_VETH_PREFIX = "ebs"
NFT_TABLE = "emberbox"

# One table holds every rule; sandboxes only add/remove set elements, so a restart never
# has to rewrite rules of sandboxes that are still running.
NFT_RULESET = f"""
table inet {NFT_TABLE} {{
  set egress {{ type ipv4_addr; }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{HOST_VETH_PREFIX}*" oifname "{HOST_VETH_PREFIX}*" drop
    oifname "{HOST_VETH_PREFIX}*" ct state established,related accept
    oifname "{HOST_VETH_PREFIX}*" drop
    iifname "{HOST_VETH_PREFIX}*" ip saddr @egress accept
    iifname "{HOST_VETH_PREFIX}*" drop
  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname "{HOST_VETH_PREFIX}*" ct state established,related accept
    iifname "{HOST_VETH_PREFIX}*" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    oifname != "{HOST_VETH_PREFIX}*" ip saddr @egress masquerade
  }}
}}
"""


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
        self.directory.mkdir(parents=True, exist_ok=True)
        taken = {int(p.name) for p in self.directory.iterdir() if p.name.isdigit()}
        for index in range(self.size):
            if index in taken:
                continue
            try:
                fd = os.open(self.directory / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            os.write(fd, f"{self.instance}:{sandbox_id}".encode())
            os.close(fd)
            return Lease(index, sandbox_id, self.subnet, self.instance)
        raise PoolExhausted(f"no free address in {self.subnet} ({self.size} sandboxes)")

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


async def ensure_firewall() -> None:
    """Create the nft table once and enable forwarding; a no-op when it already exists."""
    listed = await _proc.run("nft", "list", "table", "inet", NFT_TABLE, check=False)
    if listed.code != 0:
        await _proc.run("nft", "-f", "-", stdin=NFT_RULESET.encode())
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


async def setup(lease: Lease, allow_internet: bool) -> None:
    """Create netns + veth pair and address both ends; undo everything if a step fails."""
    try:
        await _proc.run("ip", "netns", "add", lease.netns)
        await _proc.run(
            "ip", "link", "add", lease.host_veth, "type", "veth",
            "peer", "name", lease.guest_veth, "netns", lease.netns,
        )  # fmt: skip
        await _proc.run("ip", "addr", "add", f"{lease.host_ip}/30", "dev", lease.host_veth)
        await _proc.run("ip", "link", "set", lease.host_veth, "up")
        batch = (
            f"addr add {lease.guest_ip}/30 dev {lease.guest_veth}\n"
            f"link set {lease.guest_veth} up\n"
            "link set lo up\n"
            f"route add default via {lease.host_ip}\n"
        )
        await _proc.run("ip", "-n", lease.netns, "-batch", "-", stdin=batch.encode())
        if allow_internet:
            await _proc.run(
                "nft", "add", "element", "inet", NFT_TABLE, "egress", f"{{ {lease.guest_ip} }}"
            )
    except BaseException:
        await teardown(lease)
        raise


async def teardown(lease: Lease, owns_index: bool = True) -> None:
    """Remove the netns (which takes the veth pair with it), then, while the index is still
    ours, the egress entry and a host veth left behind; every step tolerates "already gone".

    ``owns_index`` False means the index may belong to another sandbox now: the objects
    named after it (veth, egress address) are then left alone.
    """
    await _proc.run("ip", "netns", "delete", lease.netns, check=False)
    if not owns_index:
        return
    await _proc.run(
        "nft", "delete", "element", "inet", NFT_TABLE, "egress", f"{{ {lease.guest_ip} }}",
        check=False,
    )  # fmt: skip
    await _proc.run("ip", "link", "delete", lease.host_veth, check=False)


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
