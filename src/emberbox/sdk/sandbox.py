"""The public sync ``Sandbox``: the generated twin, plus E2B's ``Sandbox(...)`` constructor form."""

from __future__ import annotations

from typing import Any

from ._config import DEFAULT_SANDBOX_TIMEOUT
from ._sync.sandbox import Sandbox as _GeneratedSandbox
from .models import NetworkOptions


class Sandbox(_GeneratedSandbox):
    """A running sandbox: ``Sandbox(template="base")`` or ``Sandbox.create(...)``.

    Used as a context manager it is killed on exit. See :class:`AsyncSandbox` for parameters.
    """

    def __init__(
        self,
        template: str = "base",
        timeout: int = DEFAULT_SANDBOX_TIMEOUT,
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        allow_internet_access: bool = True,
        network: NetworkOptions | None = None,
        **connection: Any,
    ) -> None:
        data, config, http = self._provision(
            template, timeout, metadata, envs, allow_internet_access, network, **connection
        )
        self._setup_from_api(data, config, http)
