"""The service's contexts: who exists, which one is each language's default, and bad input.

Domain errors only (:class:`UnknownContext`, :class:`BadRequest`); :mod:`.app` maps them to
HTTP statuses in one place.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from .kernels import SUPPORTED_LANGUAGES, Context


class UnknownContext(LookupError):
    def __init__(self, context_id: str) -> None:
        super().__init__(f"context {context_id!r} not found")


class BadRequest(ValueError):
    """The request cannot be served as asked (unknown language, missing cwd, ...)."""


def check_language(language: str | None) -> str:
    name = (language or "python").strip().lower()
    if name not in SUPPORTED_LANGUAGES:
        raise BadRequest(
            f"language {language!r} is not supported; supported: {', '.join(SUPPORTED_LANGUAGES)}"
        )
    return name


class Contexts:
    """Every context of this service; each language's default one is created on first use."""

    def __init__(self, default_cwd: str, env: Mapping[str, str]) -> None:
        self.default_cwd = default_cwd
        self._env = dict(env)
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}  # language → context id
        self._default_lock = asyncio.Lock()

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    def get(self, context_id: str) -> Context:
        try:
            return self._contexts[context_id]
        except KeyError:
            raise UnknownContext(context_id) from None

    async def create(self, language: str | None, cwd: str | None) -> Context:
        name = check_language(language)
        directory = cwd or self.default_cwd
        if not os.path.isdir(directory):
            raise BadRequest(f"cwd {directory!r} is not a directory")
        context = Context(name, directory, self._env)
        await context.start()
        self._contexts[context.id] = context
        return context

    async def default(self, language: str | None) -> Context:
        name = check_language(language)
        async with self._default_lock:
            context_id = self._defaults.get(name)
            if context_id in self._contexts:
                return self._contexts[context_id]
            context = await self.create(name, None)
            self._defaults[name] = context.id
            return context

    async def delete(self, context_id: str) -> None:
        context = self._contexts.pop(context_id, None)
        if context is None:
            raise UnknownContext(context_id)
        await context.close()

    async def close(self) -> None:
        contexts, self._contexts = list(self._contexts.values()), {}
        await asyncio.gather(*(c.close() for c in contexts), return_exceptions=True)
