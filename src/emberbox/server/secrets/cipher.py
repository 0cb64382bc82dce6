"""The server key that seals secret values at rest (AES-256-GCM, from ``cryptography``).

The key comes from ``EMBERBOX_SECRETS_KEY`` (32 bytes, URL-safe base64) or, by default, from
``<data dir>/secrets.key``, made on first use with mode 0600: a database copied elsewhere
without that key reveals no value. Each value is bound to its secret and version (associated
data), so a sealed value moved to another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...host.files import write_atomic

KEY_FILE = "secrets.key"
NONCE_BYTES = 12


class SecretKeyError(Exception):
    """The key is malformed, or a value does not open with it (wrong key, altered row)."""


def _decode(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as e:
        raise SecretKeyError("the secrets key is not URL-safe base64") from e
    if len(key) != 32:
        raise SecretKeyError(f"the secrets key must be 32 bytes, got {len(key)}")
    return key


def load_key(data_dir: Path, configured: str = "") -> bytes:
    """``configured`` if given, else the data dir's key file (created on first use)."""
    if configured:
        return _decode(configured)
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        write_atomic(path, text + "\n", private=True)
    if path.stat().st_mode & 0o077:  # readable by others: no longer a secret's key
        os.chmod(path, 0o600)
    return _decode(path.read_text())


class SecretCipher:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, value: str, secret_id: str, version: int) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), _bound(secret_id, version))

    def open(self, sealed: bytes, secret_id: str, version: int) -> str:
        try:
            plain = self._aead.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _bound(secret_id, version)
            )
        except InvalidTag as e:
            raise SecretKeyError(
                f"secret {secret_id} v{version} does not open with this server's key"
            ) from e
        return plain.decode()


def _bound(secret_id: str, version: int) -> bytes:
    return f"{secret_id}:{version}".encode()
