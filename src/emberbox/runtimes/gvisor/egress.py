"""A node's egress: the firewall, the gateway that judges the traffic of sandboxes whose rules
name domains or headers, the CA it intercepts with, and the audit log of every connection.

One owner for what the gateway knows of each sandbox (its rules by address): the runtime
tells it what a create, an update or a teardown changed, and a node that starts reads back
what the previous process left in the sandboxes' records. A policy's saved form lives here
too, since it is these rules that a record keeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ...egress import EgressProxy, EgressRules, HeaderRule, reaches, rules_for
from ...host import network
from ...host.certificates import EgressCa
from ...host.egress_audit import EgressAudit, EgressJournal
from ...host.egress_gateway import EgressGateway
from ...host.flow_monitor import FlowMonitor
from ..base import NetworkPolicy
from .config import GVisorConfig

log = logging.getLogger("emberbox.gvisor")


class NodeEgress:
    """Started once, by the first create or clean-up (``ready``), and closed with the node.

    ``saved`` yields the (address, saved policy) of every sandbox a previous node process
    made that still holds its lease: their rules are loaded before the gateway starts, so
    their traffic is never judged without them.
    """

    def __init__(
        self,
        config: GVisorConfig,
        pool: network.AddressPool,
        saved: Callable[[], Iterable[tuple[str, dict[str, Any]]]],
    ) -> None:
        self.config = config
        self.pool = pool
        self._saved = saved
        self._ready = False
        self._lock = asyncio.Lock()
        self._rules: dict[str, EgressRules] = {}  # of the sandboxes the gateway judges
        self._owners: dict[str, str] = {}  # sandbox id by address, from the leases
        self._owners_read = -1.0  # when the leases were last read for it
        self.ca = EgressCa(config.root / "egress-ca")
        # The egress audit log: the gateway's records and the kernel's (``flows``).
        self.journal = EgressJournal(config.root / "egress-log")
        audit = EgressAudit(self.journal, self.owner)
        self.gateway = EgressGateway(self._rules.get, config.egress_dns, ca=self.ca,
                                     trust=config.egress_ca, audit=audit,
                                     sandboxes=[config.network])  # fmt: skip
        self.flows = FlowMonitor(config.root / "egress-audit", config.instance,
                                 config.network, audit)  # fmt: skip

    async def ready(self) -> None:
        """The node's firewall, the gateway and the flow log, once."""
        async with self._lock:
            if self._ready:
                return
            self.gateway.internal = tuple(await network.ensure_firewall())
            if not self.gateway.upstream:  # it runs on the host: loopback ones work too
                self.gateway.upstream = tuple(network.host_resolvers(loopback=True))
            for address, policy in self._saved():
                self._rules[address] = rules_of(policy_from_saved(policy))
            ports = await self.gateway.start()
            await network.point_gateway(self.config.instance, ports.tcp, ports.dns, ports.dns_tcp)
            if self.config.egress_audit:
                try:
                    await self.flows.start()
                except OSError:  # the log then holds the gateway's records only
                    log.exception("the egress log's ulogd did not start")
            self._ready = True

    async def close(self) -> None:
        await self.flows.close()
        if self.gateway.ports is not None:
            await self.gateway.close()
            await network.unpoint_gateway(self.config.instance)

    def remember(self, address: str, rules: EgressRules, node_dns: bool) -> None:
        """The rules of the sandbox at ``address`` after a create or an update."""
        if judged(rules, node_dns):
            self._rules[address] = rules
        else:
            self._rules.pop(address, None)

    def forget(self, address: str) -> None:
        """The sandbox at ``address`` is gone: nothing of it may judge its successor."""
        self._rules.pop(address, None)
        self._owners.pop(address, None)
        self.gateway.forget(address)

    def owner(self, address: str) -> str | None:
        """The sandbox at ``address`` (the audit log's lookup): the lease files say."""
        found = self._owners.get(address)
        if found is None and time.monotonic() - self._owners_read > 0.5:
            self._owners = {lease.guest_ip: lease.sandbox_id for lease in self.pool.leases()}
            self._owners_read = time.monotonic()
            found = self._owners.get(address)
        return found


def rules_of(policy: NetworkPolicy) -> EgressRules:
    return rules_for(policy.allow_out, policy.deny_out, policy.allow_internet, policy.rewrites,
                     policy.proxy)  # fmt: skip


def judged(rules: EgressRules, node_dns: bool) -> bool:
    """Whether the gateway sees the sandbox's traffic (and needs its rules)."""
    return bool(rules.domains or rules.rewrites or rules.proxy or node_dns)


def saved_policy(policy: NetworkPolicy) -> dict[str, Any]:
    """What the sandbox's record keeps of its policy: header rules without their values and
    the proxy without its password, which never touch the disk (the control plane sends them
    again after a node restart)."""
    saved: dict[str, Any] = {
        "allow_internet": policy.allow_internet,
        "allow_out": list(policy.allow_out),
        "deny_out": list(policy.deny_out),
        "rewrite_domains": [r.domain for r in policy.rewrites],
    }
    if policy.proxy is not None:
        saved["proxy"] = dataclasses.asdict(dataclasses.replace(policy.proxy, password=None))
    return saved


def policy_from_saved(saved: dict[str, Any]) -> NetworkPolicy:
    proxy = saved.get("proxy")
    return NetworkPolicy(
        saved["allow_internet"],
        tuple(saved["allow_out"]),
        tuple(saved["deny_out"]),
        tuple(HeaderRule(d, headers=None) for d in saved.get("rewrite_domains", ())),
        EgressProxy(**proxy) if proxy else None,
    )


def resolv_conf(rules: EgressRules, host_ip: str) -> str:
    """The host's resolvers the sandbox may reach; none at all (lookups fail at once instead
    of timing out) when its rules refuse them. A sandbox with domain entries asks its host end
    of the link, where its DNS is answered by the node's gateway (any address would do: all
    its DNS is redirected there)."""
    if rules.domains:
        return f"nameserver {host_ip}\n"
    servers = network.host_resolvers()
    usable = [s for s in servers if reaches(rules, s, resolvers=servers, dns=True)]
    if not usable:
        return "# no nameserver this sandbox may reach\n"
    return "".join(f"nameserver {s}\n" for s in usable)
