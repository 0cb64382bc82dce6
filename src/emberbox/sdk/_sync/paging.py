# Generated from ../_async/paging.py by scripts/unasync.py; edit that file instead.
"""E2B's paginator shape, once: ``has_next``, ``next_token``, ``next_items()`` for one page,
and iteration over every remaining page. Subclasses fetch a page in ``_page``."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Generic, TypeVar

from .._config import ConnectionConfig
from ..exceptions import SandboxException

T = TypeVar("T")


class Paginator(Generic[T]):
    what = "items"  # for the error once there is nothing left

    def __init__(
        self, config: ConnectionConfig, limit: int | None = None, next_token: str | None = None
    ) -> None:
        self._config = config
        self.limit = limit
        self._next_token = next_token
        self._has_next = True

    @property
    def has_next(self) -> bool:
        return self._has_next

    @property
    def next_token(self) -> str | None:
        return self._next_token

    def _page(self) -> tuple[builtins.list[T], str | None]:
        """One page from ``next_token`` and the token of the next (None: this was the last)."""
        raise NotImplementedError

    def next_items(self) -> builtins.list[T]:
        """The next page; raises :class:`SandboxException` once ``has_next`` is False."""
        if not self._has_next:
            raise SandboxException(f"no more {self.what} to fetch (has_next is False)")
        items, self._next_token = self._page()
        self._has_next = self._next_token is not None
        return items

    def __iter__(self) -> Iterator[T]:
        while self._has_next:
            for item in self.next_items():
                yield item
