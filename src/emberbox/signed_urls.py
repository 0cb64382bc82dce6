"""``v1_`` signed file URLs: the SDK signs ``path:operation:user:token[:expiry]`` with SHA-256.

envd checks them before serving a file; the proxy checks them before it wakes a paused
sandbox for one (a request envd would refuse wakes nothing). Both read the format here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

UNAUTHORIZED = (
    "unauthorized access, please provide a valid access token or method signing if supported"
)
"""envd's answer to a request with neither its access token nor a signature (E2B's words)."""

FILES_PATH = "/files"
"""envd's file route: the only one that takes a signature instead of the access token."""

OPERATIONS = {"GET": "read", "HEAD": "read", "POST": "write"}
"""What a signature on envd's ``/files`` covers, by the request's method (download, upload)."""


def sign(path: str, operation: str, username: str, token: str, expiration: int | None) -> str:
    raw = f"{path}:{operation}:{username}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).decode().rstrip("=")


def verify(
    signature: str,
    path: str,
    operation: str,
    username: str,
    token: str,
    expiration: str | None,
) -> str | None:
    """None when valid, else the reason (the SDK tests assert on these exact words)."""
    expires: int | None = None
    if expiration:
        try:
            expires = int(expiration)
        except ValueError:
            return "invalid signature expiration"
        if expires < time.time():
            return "signature is already expired"
    expected = sign(path, operation, username, token, expires)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "invalid signature"
    return None


def refusal(token: str, presented: str | None, method: str, query: Mapping[str, str]) -> str | None:
    """Why envd may not serve a ``/files`` request, or None when it may: it carries the access
    token (``presented``, from ``X-Access-Token``) or a valid signature of its path, user and
    operation (the query's ``signature``, ``path``, ``username``, ``signature_expiration``)."""
    if presented is not None and hmac.compare_digest(presented.encode(), token.encode()):
        return None
    signature = query.get("signature")
    operation = OPERATIONS.get(method)
    if not signature or operation is None:
        return UNAUTHORIZED
    path, username = query.get("path", ""), query.get("username", "")
    return verify(signature, path, operation, username, token, query.get("signature_expiration"))
