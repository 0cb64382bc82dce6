"""``v1_`` signed file URLs: the SDK signs ``path:operation:user:token[:expiry]`` with SHA-256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


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
