"""The service's contexts: who exists, which one is each language's default, and bad input.

Domain errors only (:class:`UnknownContext`, :class:`BadRequest`); :mod:`.app` maps them to
HTTP statuses in one place.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from .budget import DEFAULT_LIMIT
from .kernels import Context
from .languages import DEFAULT_LANGUAGE, canonical, env_problem, installed_kernels


class UnknownContext(LookupError):
    def __init__(self, context_id: str) -> None:
        super().__init__(f"context {context_id!r} not found")


class BadRequest(ValueError):
    """The request cannot be served as asked (unknown language, missing cwd, ...)."""


class Contexts:
    """Every context of this service; each language's default one is created on first use.

    **Parameters:** default_cwd - where contexts naming none start; env - every kernel's
    environment; kernels - (optional) language → kernelspec, default the installed ones;
    output_limit - (optional) bytes of output one execution may send (:mod:`.budget`).
    """

    def __init__(
        self,
        default_cwd: str,
        env: Mapping[str, str],
        *,
        kernels: Mapping[str, str] | None = None,
        output_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.default_cwd = default_cwd
        self._env = dict(env)
        self.kernels = dict(installed_kernels() if kernels is None else kernels)
        self.output_limit = output_limit
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

    def check_language(self, language: str | None) -> str:
        name = canonical(language or DEFAULT_LANGUAGE)
        if name not in self.kernels:
            supported = ", ".join(self.kernels) or "none (no kernel is installed)"
            raise BadRequest(f"language {language!r} is not supported; supported: {supported}")
        return name

    @staticmethod
    def check_env(context: Context, env_vars: Mapping[str, str]) -> None:
        problem = env_problem(context.language, env_vars)
        if problem:
            raise BadRequest(problem)

    async def create(self, language: str | None, cwd: str | None) -> Context:
        name = self.check_language(language)
        directory = cwd or self.default_cwd
        if not os.path.isdir(directory):
            raise BadRequest(f"cwd {directory!r} is not a directory")
        context = Context(
            name, directory, self._env, kernel=self.kernels[name], output_limit=self.output_limit
        )
        await context.start()
        self._contexts[context.id] = context
        return context

    async def default(self, language: str | None) -> Context:
        name = self.check_language(language)
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
