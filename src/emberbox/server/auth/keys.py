"""API key format: ``e2b_`` + 40 lowercase hex, the shape older SDKs validate before sending.

Only a SHA-256 of the key is stored. Keys carry 160 random bits, so a plain hash (no salt, no slow
KDF) is enough and lets a lookup stay a single indexed query on the first characters.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "e2b_"
_KEY_RE = re.compile(r"^e2b_[0-9a-f]{40}$")
LOOKUP_PREFIX_LEN = 12


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(20)


def is_well_formed(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def lookup_prefix(key: str) -> str:
    return key[:LOOKUP_PREFIX_LEN]


def new_id() -> str:
    return secrets.token_hex(8)
