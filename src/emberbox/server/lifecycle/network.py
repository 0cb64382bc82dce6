"""A sandbox's network policy as the control plane keeps it: egress rules (stored as given, as
JSON on the sandbox row) and their replacement on a live sandbox (``PUT .../network``).

The node enforces; the database remembers what was asked, for ``get_info`` and for forks,
which inherit their source's rules at the moment of the fork.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._proto.node import node_pb2 as pb
from ...node.client import NodeError, NodeSandboxNotFound, NodeUnsupported
from ..auth.store import Principal
from ..db import sandboxes as q
from ..db.models import Sandbox
from .errors import Conflict, NotFound, SandboxFailed, Unsupported
from .states import VISIBLE, State

if TYPE_CHECKING:
    from .service import SandboxService


def egress_json(allow_out: tuple[str, ...], deny_out: tuple[str, ...]) -> str | None:
    """The row's ``egress`` column: None when there are no rules."""
    if not allow_out and not deny_out:
        return None
    return json.dumps({"allowOut": list(allow_out), "denyOut": list(deny_out)})


@dataclass(frozen=True)
class Egress:
    allow_internet: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: Sandbox) -> Egress:
        rules = json.loads(row.egress) if row.egress else {}
        return cls(
            bool(row.allow_internet),
            tuple(rules.get("allowOut", ())),
            tuple(rules.get("denyOut", ())),
        )


# A policy can change while the sandbox runs or sleeps (its firewall objects outlive a pause).
_CHANGEABLE = (State.RUNNING, State.PAUSED)


class NetworkService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def update(self, who: Principal, sandbox_id: str, egress: Egress) -> None:
        """Replace the sandbox's egress rules: on its node first (effective for the next
        packet), then in the database."""
        row = await self.sandboxes.get(who, sandbox_id)
        caps = self.sandboxes.facts.capabilities
        if not caps.egress_rules:
            raise Unsupported(
                f"the {self.sandboxes.facts.runtime} runtime cannot change egress rules"
            )
        if State(row.state) not in _CHANGEABLE:
            raise Conflict(f"sandbox '{sandbox_id}' is {row.state}; try again when it settled")
        request = pb.UpdateNetworkRequest(
            sandbox_id=sandbox_id,
            allow_internet=egress.allow_internet,
            allow_out=egress.allow_out,
            deny_out=egress.deny_out,
        )
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
                egress=egress_json(egress.allow_out, egress.deny_out),
            )
