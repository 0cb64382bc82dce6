# Generated from ../_async/egress.py by scripts/unasync.py; edit that file instead.
"""A sandbox's egress audit log (``GET /sandboxes/{id}/egress``, Emberbox's extension): one
record per connection it opened to the outside and per DNS question the node answered."""

from __future__ import annotations

import builtins
from typing import Any

from .. import _errors
from .._config import ConnectionConfig
from ..models import EgressRecord
from .api import Api, _ts, http_client
from .paging import Paginator


def egress_record(item: dict[str, Any]) -> EgressRecord:
    opened = _ts(item["timestamp"])
    assert opened is not None
    return EgressRecord(
        seq=int(item["seq"]),
        timestamp=opened,
        ended_at=_ts(item.get("endedAt")),
        protocol=item["protocol"],
        name=item.get("name"),
        ip=item.get("ip"),
        port=int(item["port"]),
        method=item.get("method"),
        path=item.get("path"),
        bytes_out=item.get("bytesOut"),
        bytes_in=item.get("bytesIn"),
        verdict=item["verdict"],
        rule=item["rule"],
    )


class EgressPaginator(Paginator[EgressRecord]):
    """The sandbox's egress records, oldest first, a page per request (``has_next``,
    ``next_token``, ``next_items()``); iterating walks every remaining page. A ``next_token``
    kept from the last page later resumes with what came since."""

    what = "egress records"

    def __init__(
        self,
        config: ConnectionConfig,
        sandbox_id: str,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> None:
        super().__init__(config, limit, next_token)
        self.sandbox_id = sandbox_id

    def _page(self) -> tuple[builtins.list[EgressRecord], str | None]:
        params = {k: v for k, v in {"limit": str(self.limit) if self.limit else None,
                                    "nextToken": self._next_token}.items() if v}  # fmt: skip
        what = f"egress log of {self.sandbox_id}"
        with http_client() as http:
            response = Api(self._config, http).request(
                "GET", f"/sandboxes/{self.sandbox_id}/egress", params=params, what=what
            )
        if response.status_code != 200:
            raise _errors.from_http(response, what=what)
        items = [egress_record(item) for item in response.json()]
        return items, response.headers.get("x-next-token") or None
