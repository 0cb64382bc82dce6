"""envd's mutable configuration: what ``POST /init`` and the command line set."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime

from ..vocabulary import ENVD_VERSION, STANDBY_SHELLS

__all__ = ["ENVD_VERSION", "EnvdState"]


@dataclass
class EnvdState:
    access_token: str | None = None
    default_user: str | None = None
    default_workdir: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    last_init: datetime | None = None
    max_upload_bytes: int | None = None
    sync_clock: bool = False
    standby_shells: int = STANDBY_SHELLS  # per (user, cwd, stdin); 0: every command afresh
    home: str | None = None  # every user's home, when set (``--home``)

    def token_ok(self, presented: str | None) -> bool:
        """True when no token is required or the presented one matches (constant time)."""
        if not self.access_token:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.access_token.encode()
        )

    def process_env(self) -> dict[str, str]:
        """Sandbox-global variables every process gets, before its own request envs."""
        return dict(self.env_vars)


def default_path() -> str:
    return os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
