"""E2B's ``/secrets``: a team's named values, write-only (no read returns a value), each
update a new version; and the resolution of ``${e2b.secrets.<name>}`` placeholders in a
sandbox's egress header rules, the only place a value is ever read back.

A name is lower-cased (E2B's canonical form) and unique in its team; another team's secrets
are 404. Values are sealed under the server key (``cipher.py``). A value goes into HTTP
headers, so it may not hold CR, LF or NUL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...egress import valid_header_value
from ...vocabulary import SECRET_ID_PREFIX, new_secret_id
from ..auth.store import Principal
from ..db import secrets as q
from ..db.models import Secret, SecretVersion, utcnow
from ..lifecycle.errors import Conflict, Invalid, NotFound, QuotaExceeded
from .cipher import SecretCipher

MAX_NAME = 128
MAX_VALUE_BYTES = 8192  # it is sent in a header: servers cap those at ~8 KiB
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 1024
MAX_METADATA_BYTES = 8192
MAX_PAGE = 100

_BAD_NAME_CHARS = re.compile(r"[{}\x00-\x1f\x7f-\x9f]")
PLACEHOLDER = re.compile(r"\$\{e2b\.secrets\.([^{}]+)\}")
"""What the SDK's ``Secret.fill(name)`` writes, and the egress gateway's header rules carry."""


@dataclass(frozen=True)
class Page:
    secrets: list[Secret]
    next_token: str | None


def _name(raw: str) -> str:
    name = raw.lower()
    if not name or len(name) > MAX_NAME or _BAD_NAME_CHARS.search(name) or name != name.strip():
        raise Invalid(
            f"secret name {raw!r}: 1-{MAX_NAME} characters, no '{{', '}}', control characters "
            "or surrounding spaces"
        )
    if name.startswith(SECRET_ID_PREFIX):
        raise Invalid(f"secret names may not start with '{SECRET_ID_PREFIX}' (secret ids do)")
    return name


def _value(value: str) -> str:
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise Invalid(f"a secret value is at most {MAX_VALUE_BYTES} bytes")
    if not valid_header_value(value):
        raise Invalid(
            "a secret value is sent in HTTP headers: no control characters (but tab) and no "
            "spaces at either end"
        )
    return value


def _metadata(metadata: Mapping[str, str]) -> str:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise Invalid(f"secret metadata has at most {MAX_METADATA_ENTRIES} entries")
    total = 0
    for key, value in metadata.items():
        if len(key.encode()) > MAX_METADATA_KEY_BYTES:
            raise Invalid(f"secret metadata keys are at most {MAX_METADATA_KEY_BYTES} bytes")
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise Invalid(f"secret metadata values are at most {MAX_METADATA_VALUE_BYTES} bytes")
        total += len(key.encode()) + len(value.encode())
    if total > MAX_METADATA_BYTES:
        raise Invalid(f"a secret's metadata is at most {MAX_METADATA_BYTES} bytes in total")
    return json.dumps(dict(metadata))


def metadata_of(row: Secret) -> dict[str, str]:
    return dict(json.loads(row.metadata_json))


def _token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _after(token: str | None) -> str:
    if not token:
        return ""
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid("nextToken is not one this server gave out") from None


class SecretService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], cipher: SecretCipher, max_secrets: int
    ) -> None:
        self.sessions = sessions
        self.cipher = cipher
        self.max_secrets = max_secrets
        # A create counts and inserts under it: two at once both counted below the limit.
        self._creating = asyncio.Lock()
        # Told (team id, secret name) after a value changed or a secret was deleted, so the
        # running sandboxes whose header rules use it get the new value (or refuse).
        self.changed: Callable[[str, str], Awaitable[object]] | None = None

    def seal_for_team(self, team_id: str, value: str) -> str:
        """A credential a team gave with a sandbox (its egressProxy password), sealed under
        the server key for the sandbox row: any of the team's sandboxes (a fork) may open it."""
        return base64.b64encode(self.cipher.seal(value, f"team:{team_id}", 0)).decode()

    def open_for_team(self, team_id: str, sealed: str) -> str:
        return self.cipher.open(base64.b64decode(sealed), f"team:{team_id}", 0)

    async def create(
        self, who: Principal, name: str, value: str, metadata: Mapping[str, str]
    ) -> Secret:
        name, value, meta = _name(name), _value(value), _metadata(metadata)
        async with self._creating, self.sessions.begin() as s:
            if await q.find(s, who.team_id, name) is not None:
                raise Conflict(f"secret '{name}' exists already")
            if await q.count(s, who.team_id) >= self.max_secrets:
                raise QuotaExceeded(
                    f"secret limit reached ({self.max_secrets} per team); delete one first"
                )
            now = utcnow()
            row = Secret(id=new_secret_id(), team_id=who.team_id, name=name, current_version=1,
                         metadata_json=meta, created_at=now, updated_at=now)  # fmt: skip
            s.add(row)
            s.add(SecretVersion(secret_id=row.id, version=1,
                                sealed=self.cipher.seal(value, row.id, 1)))  # fmt: skip
            try:
                await s.flush()
            except IntegrityError:  # the same name, created at the same moment
                raise Conflict(f"secret '{name}' exists already") from None
            return row

    async def update(
        self, who: Principal, ref: str, value: str, metadata: Mapping[str, str] | None
    ) -> Secret:
        value = _value(value)
        meta = _metadata(metadata) if metadata is not None else None
        async with self.sessions.begin() as s:
            row = await self._find(s, who, ref)
            row.current_version += 1
            row.updated_at = utcnow()
            if meta is not None:
                row.metadata_json = meta
            version = row.current_version
            sealed = self.cipher.seal(value, row.id, version)
            s.add(SecretVersion(secret_id=row.id, version=version, sealed=sealed))
            # Only the current value is ever read: a rotated-away one is not kept to leak.
            await s.execute(
                delete(SecretVersion).where(
                    SecretVersion.secret_id == row.id, SecretVersion.version < version
                )
            )
            try:
                await s.flush()
            except IntegrityError:  # another update took this version number first
                raise Conflict(f"secret '{ref}' changed meanwhile; try again") from None
        await self._tell(who.team_id, row.name)
        return row

    async def get(self, who: Principal, ref: str) -> Secret:
        async with self.sessions() as s:
            return await self._find(s, who, ref)

    async def page(self, who: Principal, limit: int | None, token: str | None) -> Page:
        size = MAX_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
        async with self.sessions() as s:
            rows = list(await q.page(s, who.team_id, _after(token), size + 1))
        more = len(rows) > size
        rows = rows[:size]
        return Page(rows, _token(rows[-1].name) if more else None)

    async def delete(self, who: Principal, ref: str) -> None:
        """Running sandboxes whose rules use it then refuse the requests those rules cover."""
        async with self.sessions.begin() as s:
            row = await self._find(s, who, ref)
            await s.delete(row)
        await self._tell(who.team_id, row.name)

    async def _tell(self, team_id: str, name: str) -> None:
        if self.changed is not None:
            await self.changed(team_id, name)

    async def _find(self, s: AsyncSession, who: Principal, ref: str) -> Secret:
        row = await q.find(s, who.team_id, ref)
        if row is None:
            raise NotFound(f"secret '{ref}' not found")
        return row

    # ---- placeholders ------------------------------------------------------------------

    @staticmethod
    def names_in(text: str) -> list[str]:
        return [m.lower() for m in PLACEHOLDER.findall(text)]

    async def check_names(self, team_id: str, names: set[str]) -> None:
        """Invalid naming the first secret the team does not have."""
        if not names:
            return
        async with self.sessions() as s:
            found = {row.name for row in await q.by_names(s, team_id, sorted(names))}
        missing = sorted(names - found)
        if missing:
            raise Invalid(f"unknown secret '{missing[0]}' (create it with Secret.create first)")

    async def resolve(self, team_id: str, texts: list[str]) -> list[str]:
        """``texts`` with every placeholder replaced by its secret's current value; Invalid
        for a name the team has no secret of. Values leave only toward the node."""
        names = sorted({n for t in texts for n in self.names_in(t)})
        if not names:
            return list(texts)
        values: dict[str, str] = {}
        async with self.sessions() as s:
            for row in await q.by_names(s, team_id, names):
                sealed = await q.sealed_value(s, row.id, row.current_version)
                if sealed is not None:
                    values[row.name] = self.cipher.open(sealed, row.id, row.current_version)
        missing = [n for n in names if n not in values]
        if missing:
            raise Invalid(f"unknown secret '{missing[0]}' (create it with Secret.create first)")
        return [PLACEHOLDER.sub(lambda m: values[m.group(1).lower()], t) for t in texts]
