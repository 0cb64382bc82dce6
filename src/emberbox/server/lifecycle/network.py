"""A sandbox's network policy as the control plane keeps it: egress rules (stored as given, as
JSON on the sandbox row) and their replacement on a live sandbox (``PUT .../network``).

The node enforces; the database remembers what was asked, for ``get_info`` and for forks,
which inherit their source's rules at the moment of the fork.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
from ...node.client import NodeError, NodeSandboxNotFound, NodeUnsupported
from ..auth.store import Principal
from ..db import sandboxes as q
from ..db.models import Sandbox
from ..secrets.service import SecretService
from .errors import Conflict, Invalid, NotFound, SandboxFailed, Unsupported
from .states import VISIBLE, State

if TYPE_CHECKING:
    from .service import SandboxService

log = logging.getLogger(__name__)


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


# A policy can change while the sandbox runs or sleeps (its firewall objects outlive a pause).
_CHANGEABLE = (State.RUNNING, State.PAUSED)


class NetworkService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def update(self, who: Principal, sandbox_id: str, egress: Egress) -> None:
        """Replace the sandbox's egress rules: on its node first (effective for the next
        packet), then in the database; one change at a time, so a secret's re-send never
        puts back rules an update just replaced."""
        async with self.sandboxes.network_lock:
            await self._update(who, sandbox_id, egress)

    async def _update(self, who: Principal, sandbox_id: str, egress: Egress) -> None:
        row = await self.sandboxes.get(who, sandbox_id)
        caps = self.sandboxes.facts.capabilities
        if egress.proxy is not None and not caps.egress_proxy:
            raise Unsupported(
                f"the {self.sandboxes.facts.runtime} runtime cannot tunnel through an egressProxy"
            )
        if not caps.egress_rules:
            raise Unsupported(
                f"the {self.sandboxes.facts.runtime} runtime cannot change egress rules"
            )
        if egress.rewrites and not caps.header_rules:
            raise Unsupported(f"the {self.sandboxes.facts.runtime} runtime cannot apply rules")
        if State(row.state) not in _CHANGEABLE:
            raise Conflict(f"sandbox '{sandbox_id}' is {row.state}; try again when it settled")
        request = await self._request(sandbox_id, who.team_id, egress)
        request.access_token = row.envd_access_token or ""
        column = egress.to_json(self.sandboxes.secret_service, who.team_id)  # before the node
        try:
            await self.sandboxes.node.update_network(request)
        except NodeSandboxNotFound as e:
            raise NotFound(f"sandbox '{sandbox_id}' not found") from e
        except NodeUnsupported as e:
            raise Unsupported(e.message) from e
        except NodeError as e:
            raise SandboxFailed(f"changing the sandbox's network failed: {e.message}") from e
        async with self.sandboxes.sessions.begin() as s:
            await q.update_fields(
                s,
                sandbox_id,
                VISIBLE,
                allow_internet=egress.allow_internet,
                egress=column,
            )

    async def egress_log(
        self, who: Principal, sandbox_id: str, after: int, limit: int
    ) -> pb.EgressLogResponse:
        """A page of the sandbox's egress audit log, kept by its node while it exists."""
        row = await self.sandboxes.get(who, sandbox_id)
        if State(row.state) not in _CHANGEABLE:
            raise Conflict(f"sandbox '{sandbox_id}' is {row.state}; try again when it settled")
        try:
            return await self.sandboxes.node.egress_log(sandbox_id, after, limit)
        except NodeSandboxNotFound as e:
            raise NotFound(f"sandbox '{sandbox_id}' not found") from e
        except NodeUnsupported as e:
            raise Unsupported(e.message) from e
        except NodeError as e:
            raise SandboxFailed(f"reading the sandbox's egress log failed: {e.message}") from e

    async def _request(
        self, sandbox_id: str, team_id: str, egress: Egress, *, lenient: bool = False
    ) -> pb.UpdateNetworkRequest:
        """The node's message for ``egress``, header rules resolved (see
        :func:`header_rules_message` for ``lenient``)."""
        secrets = self.sandboxes.secret_service
        return pb.UpdateNetworkRequest(
            sandbox_id=sandbox_id,
            allow_internet=egress.allow_internet,
            allow_out=egress.node_allow_out,
            deny_out=egress.deny_out,
            header_rules=await header_rules_message(
                secrets, team_id, egress.rewrites, lenient=lenient
            ),
            egress_proxy=egress.proxy_message(secrets, team_id),
        )

    async def send_header_rules_again(self, team_id: str = "", secret: str = "") -> int:
        """Send live sandboxes' header rules (and proxies) to the node again, resolved now:
        all of them after a restart (the node keeps values and passwords in memory only), or
        those of ``team_id`` that
        use ``secret`` when it changed or was deleted, so a rotation reaches running
        sandboxes. Returns how many sandboxes got them; one that fails is logged (it keeps
        its old values, or refuses what its rules cover)."""
        async with self.sandboxes.network_lock:
            return await self._send_again(team_id, secret)

    async def _send_again(self, team_id: str, secret: str) -> int:
        async with self.sandboxes.sessions() as s:
            rows = await q.with_egress(s, _CHANGEABLE)
        sent = 0
        for row in rows:
            egress = Egress.of(row)
            if not (egress.rewrites or egress.proxy) or (team_id and row.team_id != team_id):
                continue
            if secret and not _uses(egress.rewrites, secret):
                continue
            try:
                request = await self._request(row.id, row.team_id, egress, lenient=True)
                await self.sandboxes.node.update_network(request)
                sent += 1
            except Exception as e:
                log.warning("header rules of %s were not sent again: %s", row.id, e)
        return sent


def _uses(rewrites: tuple[HeaderRule, ...], secret: str) -> bool:
    return any(
        secret in SecretService.names_in(value)
        for rule in rewrites
        for _name, value in rule.headers or ()
    )
