"""``emberbox node`` on the wire: the node's handlers as Connect unary calls, with either of
Connect's codecs: ``application/proto`` (binary: what :class:`RemoteNode` sends, so file
pieces travel as bytes) or ``application/json`` (for people and curl).

Small on purpose: every node call is unary, so no stream framing is needed here. A shared
secret (``Authorization: Bearer``) keeps anything but the control plane out.
"""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._connect.codec import decode_json, decode_proto, encode_json
from .._connect.errors import Code, ConnectError
from .service import NodeService

MAX_REQUEST_BYTES = 1 << 20
PROTO, JSON = "application/proto", "application/json"


def _error(err: ConnectError) -> Response:
    return JSONResponse(err.to_dict(), status_code=err.http_status)


def node_app(service: NodeService, token: str = "") -> Starlette:
    async def call(request: Request) -> Response:
        sent = request.headers.get("authorization", "").encode("latin-1", "replace")
        if token and not hmac.compare_digest(sent, f"Bearer {token}".encode()):
            return _error(ConnectError(Code.UNAUTHENTICATED, "missing or wrong node token"))
        entry = service.handlers.get(request.url.path)
        if entry is None:
            return _error(ConnectError(Code.NOT_FOUND, f"no such method {request.url.path}"))
        content_type = request.headers.get("content-type", "")
        binary = content_type.startswith(PROTO)
        if not binary and not content_type.startswith(JSON):
            return _error(ConnectError(Code.UNIMPLEMENTED, f"send {PROTO} or {JSON}"))
        body = await request.body()
        if len(body) > MAX_REQUEST_BYTES:
            return _error(ConnectError(Code.RESOURCE_EXHAUSTED, "request too large"))
        try:
            message = decode_proto(body, entry[0]) if binary else decode_json(body, entry[0])
            response = await service.call(request.url.path, message)
        except ConnectError as err:
            return _error(err)
        if binary:
            return Response(response.SerializeToString(), media_type=PROTO)
        return Response(encode_json(response), media_type=JSON)

    async def health(request: Request) -> Response:
        return Response(status_code=204)

    routes = [Route(path, call, methods=["POST"]) for path in service.handlers]
    routes.append(Route("/health", health, methods=["GET"]))
    return Starlette(routes=routes)
