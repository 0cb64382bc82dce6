"""A sandbox's egress policy as the control plane keeps it: stored as given (JSON on the
sandbox row, secrets' placeholders unresolved), and as its node gets it (placeholders replaced
by the team's secrets' current values). Creates, forks and ``PUT .../network`` all use it;
``network.py`` changes it on a live sandbox.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..._proto.node import node_pb2 as pb
from ...egress import (
    EgressProxy,
    HeaderRule,
    InvalidRules,
    header_rules_from,
    names_a_domain,
    parse_dns_servers,
    parse_egress_proxy,
    parse_header_rules,
    proxy_dict,
    rules_dict,
)
from ..db.models import Sandbox
from ..secrets.service import SecretService
from .errors import Invalid, Unsupported


@dataclass(frozen=True)
class Egress:
    allow_internet: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    rewrites: tuple[HeaderRule, ...] = ()  # values as given: placeholders unresolved
    # The proxy; from a row its password is "" and ``sealed_password`` holds it.
    proxy: EgressProxy | None = None
    sealed_password: str = ""
    dns_servers: tuple[str, ...] = ()  # E2B's dnsServers (reachable when allowOut names a domain)

    @classmethod
    def of(cls, row: Sandbox) -> Egress:
        rules = json.loads(row.egress) if row.egress else {}
        proxy = dict(rules.get("egressProxy") or {})
        sealed = proxy.pop("sealedPassword", "")
        return cls(
            bool(row.allow_internet),
            tuple(rules.get("allowOut", ())),
            tuple(rules.get("denyOut", ())),
            parse_header_rules(rules.get("rules")),
            parse_egress_proxy(proxy) if proxy else None,
            sealed,
            parse_dns_servers(rules.get("dnsServers")),
        )

    @property
    def node_allow_out(self) -> tuple[str, ...]:
        """``allowOut`` as the node enforces it: with the dnsServers when it names a domain."""
        if self.dns_servers and names_a_domain(self.allow_out):
            return (*self.allow_out, *(f"{ip}/32" for ip in self.dns_servers))
        return self.allow_out

    def to_json(self, secrets: SecretService | None, team_id: str) -> str | None:
        """The row's ``egress`` column (None: no rules). Header rules are kept as given,
        placeholders and all (secret values live only in the secret store); the proxy's
        password only sealed (``SecretService.seal_for_team``)."""
        if not (self.allow_out or self.deny_out or self.rewrites or self.proxy
                or self.dns_servers):  # fmt: skip
            return None
        saved: dict[str, object] = {"allowOut": list(self.allow_out),
                                    "denyOut": list(self.deny_out)}  # fmt: skip
        if self.rewrites:
            saved["rules"] = rules_dict(self.rewrites)
        if self.dns_servers:
            saved["dnsServers"] = list(self.dns_servers)
        if self.proxy is not None:
            sealed = self.sealed_password
            if self.proxy.password:
                if secrets is None:
                    raise Unsupported("this deployment keeps no secrets for proxy passwords")
                sealed = secrets.seal_for_team(team_id, self.proxy.password)
            saved["egressProxy"] = proxy_dict(self.proxy) | (
                {"sealedPassword": sealed} if sealed else {}
            )
        return json.dumps(saved)

    def proxy_message(self, secrets: SecretService | None, team_id: str) -> pb.EgressProxy | None:
        """The proxy as the node gets it: the password in clear (unsealed)."""
        if self.proxy is None:
            return None
        password = self.proxy.password or ""
        if not password and self.sealed_password:
            if secrets is None:
                raise Unsupported("this deployment keeps no secrets for proxy passwords")
            password = secrets.open_for_team(team_id, self.sealed_password)
        return pb.EgressProxy(host=self.proxy.host, port=self.proxy.port,
                              username=self.proxy.username, password=password)  # fmt: skip

    def with_password(self, secrets: SecretService | None, team_id: str) -> Egress:
        """The same policy, the proxy's password opened (a fork re-seals it for itself)."""
        message = self.proxy_message(secrets, team_id)
        if message is None or self.proxy is None:
            return self
        proxy = dataclasses.replace(self.proxy, password=message.password)
        return dataclasses.replace(self, proxy=proxy, sealed_password="")


async def header_rules_message(
    secrets: SecretService | None,
    team_id: str,
    rewrites: tuple[HeaderRule, ...],
    *,
    lenient: bool = False,
) -> list[pb.HeaderRule]:
    """The rules as the node gets them: every ``${e2b.secrets.<name>}`` replaced by the
    team's secret's current value. A secret the team lacks is Invalid, or with ``lenient``
    (a secret deleted under a running sandbox) makes its rule ``unresolved``: the node then
    refuses the requests that rule covers rather than send them without it."""
    if not rewrites:
        return []
    if secrets is None:
        raise Unsupported("this deployment keeps no secrets for header rules")
    out = []
    for rule in rewrites:
        pairs = rule.headers or ()
        try:
            values = await secrets.resolve(team_id, [v for _n, v in pairs])
        except Invalid:
            if not lenient:
                raise
            out.append(pb.HeaderRule(domain=rule.domain, unresolved=True))
            continue
        headers = [pb.Header(name=n, value=v) for (n, _v), v in zip(pairs, values, strict=True)]
        out.append(pb.HeaderRule(domain=rule.domain, headers=headers))
    try:  # the node checks the resolved rules too (sizes grow with the values): check first
        header_rules_from((r.domain, [(h.name, h.value) for h in r.headers]) for r in out)
    except InvalidRules as e:
        if not lenient:
            raise Invalid(f"with the secrets' values, {e}") from None
        return [pb.HeaderRule(domain=r.domain, unresolved=True) for r in out]
    return out
