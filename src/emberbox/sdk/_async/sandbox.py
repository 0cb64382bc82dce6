"""``AsyncSandbox``: one sandbox, its commands, PTYs, files and code interpreter, and the
class-level API calls."""

from __future__ import annotations

import builtins
from types import TracebackType
from typing import Any, Self

import httpx

from ...vocabulary import ENVD_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER
from .._base import hybridmethod
from .._code import INTERPRETER_PORT
from .._config import DEFAULT_SANDBOX_TIMEOUT, ENVD_PORT, ConnectionConfig
from ..exceptions import SandboxException
from ..models import (
    Lifecycle,
    NetworkOptions,
    OnResume,
    PauseMode,
    SandboxInfo,
    SandboxMetrics,
    SnapshotInfo,
)
from . import snapshots
from .api import AsyncApi, http_client
from .code import AsyncCodeInterpreter
from .commands import AsyncCommands, AsyncPty
from .egress import AsyncEgressPaginator
from .filesystem import AsyncFilesystem
from .rpc import AsyncRpc
from .snapshots import AsyncSnapshotPaginator

DEBUG_SANDBOX_ID = "debug_sandbox_id"


class AsyncSandbox(AsyncCodeInterpreter):
    """A running sandbox. Create with ``await AsyncSandbox.create(...)``; kill on exit of
    ``async with``.

    **Parameters** of :meth:`create`: ``template`` (default ``"base"``), ``timeout`` seconds to
    live (default 300), ``metadata`` and ``envs`` (maps of strings), ``allow_internet_access``,
    ``network`` (:class:`~emberbox.sdk.models.NetworkOptions`);
    connection: ``api_key``, ``api_url``, ``sandbox_url``, ``domain``, ``debug``,
    ``request_timeout`` — each defaults to ``EMBERBOX_*`` then ``E2B_*`` variables.

    In a ``code-interpreter`` sandbox, ``run_code`` and the code-context methods (from
    :class:`AsyncCodeInterpreter`) run notebook cells.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create a sandbox with `await AsyncSandbox.create(...)`")

    def _setup(
        self,
        sandbox_id: str,
        config: ConnectionConfig,
        http: httpx.AsyncClient,
        *,
        envd_access_token: str | None = None,
        template_id: str | None = None,
        domain: str | None = None,
        traffic_access_token: str | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        # Needed on requests to its ports when it was created with allow_public_traffic False
        # (header ``e2b-traffic-access-token``).
        self.traffic_access_token = traffic_access_token
        self.template_id = template_id
        self._config = config
        self._http = http
        self._domain = domain
        headers = dict(config.routing_headers(sandbox_id))
        if envd_access_token:
            headers[ENVD_TOKEN_HEADER] = envd_access_token
        self._envd_access_token = envd_access_token
        rpc = AsyncRpc(http, config.envd_url(sandbox_id, domain), headers)
        self.commands = AsyncCommands(rpc)
        self.pty = AsyncPty(rpc)
        self.files = AsyncFilesystem(rpc)
        self._api = AsyncApi(config, http)
        self._interpreter_url = config.port_url(sandbox_id, INTERPRETER_PORT, domain)
        self._interpreter_headers = {
            **config.routing_headers(sandbox_id, INTERPRETER_PORT),
            **({ENVD_TOKEN_HEADER: envd_access_token} if envd_access_token else {}),
            # The interpreter's port is not envd's: a private sandbox's needs its traffic token.
            **({TRAFFIC_TOKEN_HEADER: traffic_access_token} if traffic_access_token else {}),
        }

    def _setup_from_api(
        self, data: dict[str, Any], config: ConnectionConfig, http: httpx.AsyncClient
    ) -> None:
        self._setup(
            data["sandboxID"],
            config,
            http,
            envd_access_token=data.get("envdAccessToken"),
            template_id=data.get("templateID"),
            domain=data.get("domain"),
            traffic_access_token=data.get("trafficAccessToken"),
        )

    @classmethod
    def _from_api(
        cls, data: dict[str, Any], config: ConnectionConfig, http: httpx.AsyncClient
    ) -> Self:
        sandbox = cls.__new__(cls)
        sandbox._setup_from_api(data, config, http)
        return sandbox

    @classmethod
    async def _provision(
        cls,
        template: str,
        timeout: int,
        metadata: dict[str, str] | None,
        envs: dict[str, str] | None,
        allow_internet_access: bool,
        network: NetworkOptions | None = None,
        lifecycle: Lifecycle | None = None,
        **connection: Any,
    ) -> tuple[dict[str, Any], ConnectionConfig, httpx.AsyncClient]:
        config = ConnectionConfig.create(**connection)
        http = http_client()
        if config.debug:
            return {"sandboxID": DEBUG_SANDBOX_ID, "templateID": template}, config, http
        try:
            data = await AsyncApi(config, http).create(
                template, timeout, metadata, envs, allow_internet_access, network, lifecycle
            )
        except BaseException:
            await http.aclose()
            raise
        return data, config, http

    @classmethod
    async def create(
        cls,
        template: str = "base",
        timeout: int = DEFAULT_SANDBOX_TIMEOUT,
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        allow_internet_access: bool = True,
        network: NetworkOptions | None = None,
        lifecycle: Lifecycle | None = None,
        **connection: Any,
    ) -> Self:
        """``lifecycle``: what the end time does (:class:`~emberbox.sdk.models.Lifecycle`)."""
        data, config, http = await cls._provision(
            template, timeout, metadata, envs, allow_internet_access, network, lifecycle,
            **connection,
        )  # fmt: skip
        return cls._from_api(data, config, http)

    @classmethod
    def _handle(cls, sandbox_id: str, **connection: Any) -> Self:
        """A handle for control-plane calls on a sandbox by id, without ``connect`` (which
        would resume a paused one); envd calls through it lack the access token."""
        config = ConnectionConfig.create(**connection)
        return cls._from_api({"sandboxID": sandbox_id}, config, http_client())

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        timeout: int | None = None,
        on_resume: OnResume = "restore",
        **connection: Any,
    ) -> Self:
        """Attach to a running (or resume a paused) sandbox by id. ``on_resume="reboot"``
        boots a paused one afresh from its files instead of restoring its memory."""
        config = ConnectionConfig.create(**connection)
        http = http_client()
        if config.debug:
            return cls._from_api({"sandboxID": sandbox_id}, config, http)
        try:
            data = await AsyncApi(config, http).connect(sandbox_id, timeout, on_resume)
        except BaseException:
            await http.aclose()
            raise
        return cls._from_api(data, config, http)

    @classmethod
    async def list(
        cls,
        metadata: dict[str, str] | None = None,
        state: builtins.list[str] | None = None,
        limit: int | None = None,
        **connection: Any,
    ) -> builtins.list[SandboxInfo]:
        async with http_client() as http:
            return await AsyncApi(ConnectionConfig.create(**connection), http).list(
                metadata, state, limit
            )

    @hybridmethod
    async def kill(
        cls, self: AsyncSandbox | None, sandbox_id: str | None = None, **connection: Any
    ) -> bool:
        """Kill this sandbox (``sbx.kill()``) or one by id (``AsyncSandbox.kill(id)``)."""
        if self is not None:
            if self._config.debug:
                return True
            return await self._api.kill(self.sandbox_id)
        if sandbox_id is None:
            raise SandboxException("AsyncSandbox.kill needs a sandbox id")
        async with http_client() as http:
            return await AsyncApi(ConnectionConfig.create(**connection), http).kill(sandbox_id)

    async def set_timeout(self, timeout: int) -> None:
        """The sandbox now ends ``timeout`` seconds from now (shorter or longer than before)."""
        if not self._config.debug:
            await self._api.set_timeout(self.sandbox_id, timeout)

    async def update_network(self, network: NetworkOptions) -> None:
        """Replace the sandbox's egress rules (``allow_out``, ``deny_out``,
        ``allow_internet_access``; omitted ones are cleared), effective for the next packet."""
        if not self._config.debug:
            await self._api.update_network(self.sandbox_id, network)

    async def get_info(self) -> SandboxInfo:
        return await self._api.get(self.sandbox_id)

    async def get_metrics(self) -> builtins.list[SandboxMetrics]:
        return await self._api.metrics(self.sandbox_id)

    async def get_logs(self, start: int = 0) -> builtins.list[dict[str, Any]]:
        """Lifecycle events and the processes envd ran, from ``start`` (ms since 1970) on;
        entries of one millisecond are told apart by ``fields["seq"]``."""
        return await self._api.logs(self.sandbox_id, start)

    def egress_log(
        self, limit: int | None = None, next_token: str | None = None
    ) -> AsyncEgressPaginator:
        """The connections this sandbox opened to the outside (and its DNS questions the
        node answered), oldest first, with what the rules decided: a paginator
        (``next_items()`` per page, or iterate over all of them)."""
        return AsyncEgressPaginator(self._config, self.sandbox_id, limit, next_token)

    async def pause(self, mode: PauseMode = "full") -> bool:
        """Pause: ``"full"`` keeps memory and files (a resume continues where it was),
        ``"filesystem"`` only the files (a resume boots afresh). False if already paused."""
        return await self._api.pause(self.sandbox_id, mode)

    async def resume(self, timeout: int | None = None, on_resume: OnResume = "restore") -> None:
        await self._api.connect(self.sandbox_id, timeout, on_resume)

    # ---- snapshots, fork, rollback ------------------------------------------------------------

    async def create_snapshot(
        self, name: str | None = None, mode: PauseMode = "full"
    ) -> SnapshotInfo:
        """Save this sandbox's memory and files (``mode="filesystem"``: only its files, from
        which sandboxes boot); it keeps running. Its ``snapshot_id`` (the name, when given; a
        newer snapshot takes a name over) is a template for ``create``."""
        return await snapshots.create_snapshot(self._api, self.sandbox_id, name, mode)

    @hybridmethod
    def list_snapshots(
        cls,
        self: AsyncSandbox | None,
        sandbox_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        **connection: Any,
    ) -> AsyncSnapshotPaginator:
        """This sandbox's snapshots (``sbx.list_snapshots()``) or the team's
        (``AsyncSandbox.list_snapshots(sandbox_id=None, name=None)``), newest first: a
        paginator (``next_items()`` per page, or iterate over all of them)."""
        if self is not None:
            config = self._config
            sandbox_id = sandbox_id or self.sandbox_id
        else:
            config = ConnectionConfig.create(**connection)
        return AsyncSnapshotPaginator(
            config, sandbox_id=sandbox_id, name=name, limit=limit, next_token=next_token
        )

    @classmethod
    async def delete_snapshot(cls, snapshot_id: str, **connection: Any) -> bool:
        """Delete a snapshot by id or name and free its disk; False if there was none."""
        async with http_client() as http:
            api = AsyncApi(ConnectionConfig.create(**connection), http)
            return await snapshots.delete_snapshot(api, snapshot_id)

    async def fork(
        self, count: int = 1, timeout: int | None = None
    ) -> builtins.list[Self | SandboxException]:
        """``count`` (1-100) new sandboxes from one checkpoint of this one, which keeps running
        with its id and end time. One entry per fork: a connected sandbox (its own client, to
        close or kill) or the exception saying why that fork failed. ``timeout``: seconds the
        forks live (the server's default, 15 s, when None)."""
        entries = await snapshots.fork(self._api, self.sandbox_id, count, timeout)
        return [
            entry
            if isinstance(entry, SandboxException)
            else type(self)._from_api(entry, self._config, http_client())
            for entry in entries
        ]

    async def rollback(self, snapshot: str | SnapshotInfo) -> None:
        """Put this sandbox back to one of its own snapshots (id, name or
        :class:`SnapshotInfo`) in place: same id, address and object, the snapshot's memory,
        processes and files. Emberbox's extension of E2B's API. A :class:`SnapshotInfo` means
        that very snapshot, even once a newer one took its name over."""
        if isinstance(snapshot, SnapshotInfo):
            ref = snapshot.id or snapshot.snapshot_id
        else:
            ref = snapshot
        await snapshots.rollback(self._api, self.sandbox_id, ref)

    def get_host(self, port: int) -> str:
        """``<port>-<id>.<domain>``: where a server listening on ``port`` inside is reached."""
        return self._config.host(self.sandbox_id, port, self._domain)

    @property
    def envd_port(self) -> int:
        return ENVD_PORT

    async def is_running(self) -> bool:
        try:
            response = await self._http.get(
                f"{self._config.envd_url(self.sandbox_id, self._domain)}/health",
                headers=self._config.routing_headers(self.sandbox_id),
                timeout=5.0,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    async def close(self) -> None:
        """Release this client's connections (the sandbox keeps running)."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()
