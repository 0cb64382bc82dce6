# Generated from ../_async/secrets.py by scripts/unasync.py; edit that file instead.
"""Secrets on the control plane (E2B's ``/secrets``): values go in, never come back out; a
sandbox's header rules name them with :meth:`Secret.fill` and the node's egress gateway
puts the value into the sandbox's requests, so the sandbox never holds it."""

from __future__ import annotations

import builtins
from typing import Any

from .. import _errors
from .._config import ConnectionConfig
from ..exceptions import InvalidArgumentException
from ..models import SecretInfo
from .api import Api, _ts, http_client
from .paging import Paginator

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


def _call(
    method: str, path: str, what: str, connection: dict[str, Any], **kw: Any
) -> dict[str, Any] | None:
    """One request; None for a 404 (the caller decides what that means)."""
    with http_client() as http:
        response = Api(ConnectionConfig.create(**connection), http).request(
            method, path, what=what, **kw
        )
    if response.status_code == 404:
        return None
    if response.status_code >= 300:
        raise _errors.from_http(response, what=what)
    return dict(response.json()) if response.content else {}


def _secret(
    method: str, path: str, what: str, connection: dict[str, Any], **kw: Any
) -> SecretInfo:
    """One request answered with a secret; a 404 raises ``NotFoundException``."""
    item = _call(method, path, what, connection, **kw)
    if item is None:
        raise _errors.from_status(404, f"secret {path.removeprefix('/secrets/')} not found")
    return secret_info(item)


class Secret:
    """The team's secrets: ``create``, ``update`` (a new version), ``get_info``, ``list``,
    ``exists``, ``destroy``; ``secret`` arguments take an id (``sec_...``) or a name."""

    @staticmethod
    def fill(name: str) -> str:
        """The placeholder a header rule's value uses for this secret's current value."""
        if not name or _BAD_NAME & set(name) or any(ord(c) < 32 for c in name):
            raise InvalidArgumentException(f"{name!r} cannot name a secret in a placeholder")
        return f"${{e2b.secrets.{name}}}"

    @classmethod
    def create(
        cls, name: str, value: str, metadata: dict[str, str] | None = None, **connection: Any
    ) -> SecretInfo:
        body: dict[str, Any] = {"name": name, "value": value}
        if metadata is not None:
            body["metadata"] = metadata
        # Not retried: a lost answer would make the retry a 409 for a secret that exists.
        return _secret("POST", "/secrets", f"create secret {name}", connection,
                             json_body=body, idempotent=False)  # fmt: skip

    @classmethod
    def update(
        cls, secret: str, value: str, metadata: dict[str, str] | None = None, **connection: Any
    ) -> SecretInfo:
        body: dict[str, Any] = {"value": value}
        if metadata is not None:
            body["metadata"] = metadata
        return _secret("POST", f"/secrets/{secret}", f"update secret {secret}", connection,
                             json_body=body, idempotent=False)  # fmt: skip

    @classmethod
    def get_info(cls, secret: str, **connection: Any) -> SecretInfo:
        return _secret("GET", f"/secrets/{secret}", f"secret {secret}", connection)

    @classmethod
    def exists(cls, secret: str, **connection: Any) -> bool:
        return _call("GET", f"/secrets/{secret}", f"secret {secret}", connection) is not None

    @classmethod
    def destroy(cls, secret: str, **connection: Any) -> bool:
        """Delete the secret and its versions; False if there was none. Running sandboxes
        whose rules use it then refuse the requests those rules cover."""
        done = _call("DELETE", f"/secrets/{secret}", f"delete secret {secret}", connection)
        return done is not None

    @classmethod
    def list(
        cls, limit: int | None = None, next_token: str | None = None, **connection: Any
    ) -> SecretPaginator:
        return SecretPaginator(ConnectionConfig.create(**connection), limit, next_token)


class SecretPaginator(Paginator[SecretInfo]):
    """The team's secrets by name, a page per request (``has_next``, ``next_items()``);
    iterating it walks every remaining page."""

    what = "secrets"

    def _page(self) -> tuple[builtins.list[SecretInfo], str | None]:
        params = {k: v for k, v in {"limit": str(self.limit) if self.limit else None,
                                    "nextToken": self._next_token}.items() if v}  # fmt: skip
        with http_client() as http:
            response = Api(self._config, http).request(
                "GET", "/secrets", params=params, what="list secrets"
            )
        if response.status_code != 200:
            raise _errors.from_http(response, what="list secrets")
        items = [secret_info(item) for item in response.json()]
        return items, response.headers.get("x-next-token") or None
