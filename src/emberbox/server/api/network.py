"""The ``network`` options of a create and ``PUT /sandboxes/{id}/network``: what we honour
(``allowOut`` CIDRs, IPs and domains, ``denyOut`` CIDRs and IPs, ``rules``, ``egressProxy``,
``dnsServers``, ``allowPublicTraffic``, ``maskRequestHost``) and the refusal of the rest.

Bad input is a 400 and changes nothing; a well-formed option we cannot enforce (IPv6 entries,
TLS to a proxy, ``httpsPorts``, ...) is a 501 naming it, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.status import HTTP_204_NO_CONTENT

from ..._proto.node import node_pb2 as pb
from ...egress import (
    EgressProxy,
    HeaderRule,
    InvalidRules,
    UnsupportedRule,
    parse_dns_servers,
    parse_egress_proxy,
    parse_header_rules,
    parse_list,
)
from ...vocabulary import MASK_PORT_VARIABLE, whole_number
from ..lifecycle.egress import Egress
from ..lifecycle.network import NetworkService
from .deps import Caller
from .errors import ApiError
from .models import EgressRecord, Error, NetworkUpdate
from .route import ApiRoute

router = APIRouter(tags=["sandboxes"], route_class=ApiRoute)

# Options honoured in a create's ``network`` and in an update; any other option set to
# something but "nothing" is refused.
_CREATE_KEYS = frozenset(
    {
        "allowOut",
        "denyOut",
        "allowPublicTraffic",
        "maskRequestHost",
        "rules",
        "egressProxy",
        "dnsServers",
    }
)
# What maskRequestHost may become once ``${PORT}`` is replaced: a host name or IPv4 address
# with an optional port (it is sent as a Host header, so nothing else may slip in).
_MASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:[0-9]{1,5})?")
MAX_MASK = 255  # characters of the mask as given (the column holds 300)
_UPDATE_KEYS = frozenset(
    {"allowOut", "denyOut", "allow_internet_access", "rules", "egressProxy", "dnsServers"}
)


@dataclass(frozen=True)
class CreateNetwork:
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    allow_public_traffic: bool = True
    mask_request_host: str | None = None
    header_rules: tuple[HeaderRule, ...] = ()
    proxy: EgressProxy | None = None
    dns_servers: tuple[str, ...] = ()


def _mask(raw: object) -> str | None:
    """maskRequestHost checked: None when unset, else a Host header template."""
    if raw in (None, ""):
        return None
    if (
        not isinstance(raw, str)
        or len(raw) > MAX_MASK
        or not _MASK.fullmatch(raw.replace(MASK_PORT_VARIABLE, "1"))
    ):
        raise ApiError(
            400,
            f"maskRequestHost: {raw!r} is not a host name with an optional port "
            f"(it may use {MASK_PORT_VARIABLE} for the port)",
        )
    return raw


def _refuse_unsupported(network: dict[str, Any], honoured: frozenset[str]) -> None:
    unsupported = sorted(
        name
        for name, value in network.items()
        if name not in honoured
        and value not in (None, [], {}, "")
        and not (name == "allowPublicTraffic" and value is True)
    )
    if unsupported:
        raise ApiError(
            501, f"network options not supported: {', '.join(unsupported)}", should_retry=False
        )


def _egress(network: dict[str, Any], allow_internet: bool = True) -> Egress:
    try:
        allow = parse_list(network.get("allowOut"), "allowOut")
        deny = parse_list(network.get("denyOut"), "denyOut")
        rewrites = parse_header_rules(network.get("rules"))
        proxy = parse_egress_proxy(network.get("egressProxy"))
        dns = parse_dns_servers(network.get("dnsServers"))
    except InvalidRules as e:
        raise ApiError(400, str(e)) from None
    except UnsupportedRule as e:
        raise ApiError(501, str(e), should_retry=False) from None
    return Egress(allow_internet, allow, deny, rewrites, proxy, dns_servers=dns)


def create_options(network: dict[str, Any] | None) -> CreateNetwork:
    """A create's ``network``, checked: 400 for bad input, 501 for what we cannot honour."""
    network = network or {}
    _refuse_unsupported(network, _CREATE_KEYS)
    egress = _egress(network)
    public = network.get("allowPublicTraffic")
    mask = _mask(network.get("maskRequestHost"))
    return CreateNetwork(egress.allow_out, egress.deny_out, public is not False, mask,
                         egress.rewrites, egress.proxy, egress.dns_servers)  # fmt: skip


@router.put(
    "/sandboxes/{sandbox_id}/network",
    status_code=HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={code: {"model": Error} for code in (400, 401, 404, 409, 500, 501)},
    summary="Replace a sandbox's egress rules (effective for the next packet)",
)
async def update_network(
    request: Request, who: Caller, sandbox_id: str, body: NetworkUpdate
) -> Response:
    if body.get("allowPublicTraffic") is not None:
        # (create's default, true, is let through there; here it would change nothing)
        raise ApiError(501, "allowPublicTraffic is set at create; it cannot be changed",
                       should_retry=False)  # fmt: skip
    _refuse_unsupported(body, _UPDATE_KEYS)
    egress = _egress(body, body.get("allow_internet_access") is not False)
    svc = request.app.state.network
    assert isinstance(svc, NetworkService)
    await svc.update(who, sandbox_id, egress)
    return Response(status_code=HTTP_204_NO_CONTENT)


MAX_EGRESS_PAGE = 1000


def _record(r: pb.EgressRecord) -> EgressRecord:
    def when(t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, dt.UTC)

    return EgressRecord(
        seq=r.seq,
        timestamp=when(r.at),
        endedAt=when(r.ended) if r.HasField("ended") else None,
        protocol=r.protocol,
        name=r.name or None,
        ip=r.ip or None,
        port=r.port,
        method=r.method or None,
        path=r.path or None,
        bytesOut=r.bytes_out if r.HasField("bytes_out") else None,
        bytesIn=r.bytes_in if r.HasField("bytes_in") else None,
        verdict="denied" if r.verdict == "denied" else "allowed",
        rule=r.rule,
    )


@router.get(
    "/sandboxes/{sandbox_id}/egress",
    response_model=list[EgressRecord],
    responses={code: {"model": Error} for code in (400, 401, 404, 409, 500, 501)},
    summary="The sandbox's egress audit log, oldest first (X-Next-Token for the next page)",
)
async def egress_log(
    request: Request,
    response: Response,
    who: Caller,
    sandbox_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_EGRESS_PAGE)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[EgressRecord]:
    after = 0
    if next_token is not None:
        token = whole_number(next_token)
        if token is None:
            raise ApiError(400, f"nextToken: {next_token!r} is not a token this API gave")
        after = token
    svc = request.app.state.network
    assert isinstance(svc, NetworkService)
    page = await svc.egress_log(who, sandbox_id, after, limit)
    if page.next:
        response.headers["X-Next-Token"] = str(page.next)
    return [_record(r) for r in page.records]
