"""Which sandbox and port a request is for (protocol §2.1).

If the Host is ``localhost``, an IP literal or ``sandbox.<x>`` and a routing header is present,
route by ``E2b-Sandbox-Id`` + ``E2b-Sandbox-Port``; otherwise by ``<port>-<sandboxId>.<domain>``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.datastructures import Headers

from ...vocabulary import is_sandbox_id, whole_number

ID_HEADER = "e2b-sandbox-id"
PORT_HEADER = "e2b-sandbox-port"


class RouteError(Exception):
    """The request names no sandbox, or names one badly."""


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    port: int


def hostname(host: str) -> str:
    """Host header without port; IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _port(raw: str) -> int:
    port = whole_number(raw, 5)
    if port is None or not 0 < port < 65536:
        raise RouteError(f"invalid sandbox port '{raw}'")
    return port


def _sandbox_id(raw: str) -> str:
    if not is_sandbox_id(raw):
        raise RouteError(f"invalid sandbox ID '{raw}'")
    return raw


def header_routed(name: str) -> bool:
    return name == "localhost" or name.startswith("sandbox.") or _is_ip(name)


def route(headers: Headers) -> Target:
    name = hostname(headers.get("host", ""))
    sid, port = headers.get(ID_HEADER), headers.get(PORT_HEADER)
    if header_routed(name) and (sid is not None or port is not None):
        if not sid or not port:
            raise RouteError("both E2b-Sandbox-Id and E2b-Sandbox-Port headers are required")
        return Target(_sandbox_id(sid.strip()), _port(port.strip()))
    label = name.split(".", 1)[0]
    port_s, sep, sid_s = label.partition("-")
    if not sep:
        raise RouteError(f"host '{name}' is not of the form <port>-<sandboxId>.<domain>")
    return Target(_sandbox_id(sid_s), _port(port_s))
