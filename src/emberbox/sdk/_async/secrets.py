"""Secrets on the control plane (E2B's ``/secrets``): values go in, never come back out; a
sandbox's header rules name them with :meth:`AsyncSecret.fill` and the node's egress gateway
puts the value into the sandbox's requests, so the sandbox never holds it."""

from __future__ import annotations

import builtins
from typing import Any

from .. import _errors
from .._config import ConnectionConfig
from ..exceptions import InvalidArgumentException
from ..models import SecretInfo
from .api import AsyncApi, _ts, http_client
from .paging import AsyncPaginator

_BAD_NAME = set("{}")


def secret_info(item: dict[str, Any]) -> SecretInfo:
    return SecretInfo(
        secret_id=item["secretID"],
        name=item["name"],
        version=int(item["currentVersion"]),
        metadata=dict(item.get("metadata") or {}),
        created_at=_ts(item.get("createdAt")),
        updated_at=_ts(item.get("updatedAt")),
    )


async def _call(
    method: str, path: str, what: str, connection: dict[str, Any], **kw: Any
) -> dict[str, Any] | None:
    """One request; None for a 404 (the caller decides what that means)."""
    async with http_client() as http:
        response = await AsyncApi(ConnectionConfig.create(**connection), http).request(
            method, path, what=what, **kw
        )
    if response.status_code == 404:
        return None
    if response.status_code >= 300:
        raise _errors.from_http(response, what=what)
    return dict(response.json()) if response.content else {}


async def _secret(
    method: str, path: str, what: str, connection: dict[str, Any], **kw: Any
) -> SecretInfo:
    """One request answered with a secret; a 404 raises ``NotFoundException``."""
    item = await _call(method, path, what, connection, **kw)
    if item is None:
        raise _errors.from_status(404, f"secret {path.removeprefix('/secrets/')} not found")
    return secret_info(item)


class AsyncSecret:
    """The team's secrets: ``create``, ``update`` (a new version), ``get_info``, ``list``,
    ``exists``, ``destroy``; ``secret`` arguments take an id (``sec_...``) or a name."""

    @staticmethod
    def fill(name: str) -> str:
        """The placeholder a header rule's value uses for this secret's current value."""
        if not name or _BAD_NAME & set(name) or any(ord(c) < 32 for c in name):
            raise InvalidArgumentException(f"{name!r} cannot name a secret in a placeholder")
        return f"${{e2b.secrets.{name}}}"

    @classmethod
    async def create(
        cls, name: str, value: str, metadata: dict[str, str] | None = None, **connection: Any
    ) -> SecretInfo:
        body: dict[str, Any] = {"name": name, "value": value}
        if metadata is not None:
            body["metadata"] = metadata
        # Not retried: a lost answer would make the retry a 409 for a secret that exists.
        return await _secret("POST", "/secrets", f"create secret {name}", connection,
                             json_body=body, idempotent=False)  # fmt: skip

    @classmethod
    async def update(
        cls, secret: str, value: str, metadata: dict[str, str] | None = None, **connection: Any
    ) -> SecretInfo:
        body: dict[str, Any] = {"value": value}
        if metadata is not None:
            body["metadata"] = metadata
        return await _secret("POST", f"/secrets/{secret}", f"update secret {secret}", connection,
                             json_body=body, idempotent=False)  # fmt: skip

    @classmethod
    async def get_info(cls, secret: str, **connection: Any) -> SecretInfo:
        return await _secret("GET", f"/secrets/{secret}", f"secret {secret}", connection)

    @classmethod
    async def exists(cls, secret: str, **connection: Any) -> bool:
        return await _call("GET", f"/secrets/{secret}", f"secret {secret}", connection) is not None

    @classmethod
    async def destroy(cls, secret: str, **connection: Any) -> bool:
        """Delete the secret and its versions; False if there was none. Running sandboxes
        whose rules use it then refuse the requests those rules cover."""
        done = await _call("DELETE", f"/secrets/{secret}", f"delete secret {secret}", connection)
        return done is not None

    @classmethod
    def list(
        cls, limit: int | None = None, next_token: str | None = None, **connection: Any
    ) -> AsyncSecretPaginator:
        return AsyncSecretPaginator(ConnectionConfig.create(**connection), limit, next_token)


class AsyncSecretPaginator(AsyncPaginator[SecretInfo]):
    """The team's secrets by name, a page per request (``has_next``, ``next_items()``);
    iterating it walks every remaining page."""

    what = "secrets"

    async def _page(self) -> tuple[builtins.list[SecretInfo], str | None]:
        params = {k: v for k, v in {"limit": str(self.limit) if self.limit else None,
                                    "nextToken": self._next_token}.items() if v}  # fmt: skip
        async with http_client() as http:
            response = await AsyncApi(self._config, http).request(
                "GET", "/secrets", params=params, what="list secrets"
            )
        if response.status_code != 200:
            raise _errors.from_http(response, what="list secrets")
        items = [secret_info(item) for item in response.json()]
        return items, response.headers.get("x-next-token") or None
