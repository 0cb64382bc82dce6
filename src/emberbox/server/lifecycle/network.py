"""A sandbox's network policy replaced on a live sandbox (``PUT .../network``), and header
rules sent again when a secret changes or the node restarts (the policy itself: ``egress.py``).

The node enforces; the database remembers what was asked, for ``get_info`` and for forks,
which inherit their source's rules at the moment of the fork.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..._proto.node import node_pb2 as pb
from ...egress import (
    HeaderRule,
)
from ...node.client import NodeError, NodeSandboxNotFound, NodeUnsupported
from ..auth.store import Principal
from ..db import sandboxes as q
from ..secrets.service import SecretService
from .egress import Egress, header_rules_message
from .errors import Conflict, NotFound, SandboxFailed, Unsupported
from .states import VISIBLE, State

if TYPE_CHECKING:
    from .service import SandboxService

log = logging.getLogger(__name__)


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
