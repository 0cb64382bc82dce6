"""A small async envd client for the node, template builds and tests: health, run, files.

The full user-facing surface (streams, PTYs, watchers) belongs to the SDK; this is the part the
control plane needs to drive a sandbox it just created.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from .._proto.process import process_pb2 as pb
from ..sdk._async.rpc import AsyncRpc
from ..sdk._base import basic_auth
from ..vocabulary import ENVD_TOKEN_HEADER
from .http import sandbox_http


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    status: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class EnvdClient:
    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {ENVD_TOKEN_HEADER: access_token} if access_token else {}
        self._http = http or sandbox_http(timeout=30.0)
        self._owns_http = http is None

    async def __aenter__(self) -> EnvdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _auth(self, user: str | None) -> dict[str, str]:
        return {**self._headers, **basic_auth(user)}

    async def health(self, timeout: float = 2.0, probe: bool = False) -> bool:
        """Whether envd answers. ``probe``: a HEAD, which has envd do nothing else (a GET
        also wakes its standby shells, see ``envd/system.py``)."""
        method = "HEAD" if probe else "GET"
        try:
            response = await self._http.request(method, f"{self.base_url}/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    async def detach(self, timeout: float = 1.0) -> int | None:
        """Have envd end its process output streams whole (``POST /detach``, asked before a
        checkpoint); how many it ended, None if it did not answer so (or predates it)."""
        try:
            response = await self._http.post(
                f"{self.base_url}/detach", headers=self._headers, timeout=timeout
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            streams = response.json()["streams"]
        except (ValueError, TypeError, KeyError):
            return None
        return streams if isinstance(streams, int) else None

    async def init(self, body: dict[str, object]) -> None:
        response = await self._http.post(f"{self.base_url}/init", json=body, headers=self._headers)
        response.raise_for_status()

    async def run(
        self,
        cmd: str,
        *,
        user: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = 60.0,
    ) -> CommandResult:
        """Run ``cmd`` with ``/bin/bash -l -c`` and collect its output; exit != 0 is no error."""
        config = pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", cmd], envs=envs or {})
        if cwd is not None:
            config.cwd = cwd
        stdout, stderr = bytearray(), bytearray()
        end: pb.ProcessEvent.EndEvent | None = None
        rpc = AsyncRpc(self._http, self.base_url, self._auth(user))
        async for message in rpc.server_stream(
            "process.Process/Start",
            pb.StartRequest(process=config, stdin=False),
            pb.StartResponse,
            timeout=timeout,
        ):
            event = message.event
            kind = event.WhichOneof("event")
            if kind == "data":
                stdout += event.data.stdout
                stderr += event.data.stderr
            elif kind == "end":
                end = event.end
        if end is None:
            raise RuntimeError("process stream ended without an end event")
        return CommandResult(end.exit_code, bytes(stdout), bytes(stderr), end.status)

    async def read_file(self, path: str, *, user: str | None = None) -> bytes:
        params = {"path": path, **({"username": user} if user else {})}
        response = await self._http.get(
            f"{self.base_url}/files", params=params, headers=self._headers
        )
        response.raise_for_status()
        return response.content

    async def write_file(self, path: str, data: bytes, *, user: str | None = None) -> None:
        params = {"path": path, **({"username": user} if user else {})}
        response = await self._http.post(
            f"{self.base_url}/files",
            params=params,
            content=data,
            headers={**self._headers, "Content-Type": "application/octet-stream"},
        )
        response.raise_for_status()
