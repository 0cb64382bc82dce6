"""I/O-free pieces both faces share: request building, output decoding, result shaping."""

from __future__ import annotations

import base64
import codecs
import functools
import ssl
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx

from .._proto.process import process_pb2 as pb
from .exceptions import CommandExitException
from .models import CommandResult

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification context, built once per process and shared by every
    client: building it (certifi's bundle) costs 25-40 ms, which each new client paid, e.g.
    once per sandbox object in the SDK and per sandbox in the server's proxy. ``SSL_CERT_FILE``
    and ``SSL_CERT_DIR`` are read when it is first built."""
    return httpx.create_ssl_context(trust_env=True)


def basic_auth(user: str | None) -> dict[str, str]:
    """envd selects the Linux user from ``Authorization: Basic base64("<user>:")``."""
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def start_request(
    cmd: str,
    *,
    envs: dict[str, str] | None,
    cwd: str | None,
    stdin: bool,
    pty: tuple[int, int] | None = None,
    args: list[str] | None = None,
) -> pb.StartRequest:
    config = pb.ProcessConfig(
        cmd="/bin/bash" if args is None else cmd,
        args=["-l", "-c", cmd] if args is None else args,
        envs=envs or {},
    )
    if cwd:
        config.cwd = cwd
    request = pb.StartRequest(process=config, stdin=stdin)
    if pty is not None:
        rows, cols = pty
        request.pty.size.rows = rows
        request.pty.size.cols = cols
    return request


class OutputCollector:
    """Accumulates a process's output and decodes UTF-8 split across chunks correctly."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.end: pb.ProcessEvent.EndEvent | None = None

    def feed(self, kind: str, data: bytes) -> str:
        text: str = self._decoders[kind].decode(data)
        (self.stdout if kind == "stdout" else self.stderr).append(text)
        return text

    def result(self) -> CommandResult:
        for kind, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                (self.stdout if kind == "stdout" else self.stderr).append(tail)
        end = self.end
        exit_code = end.exit_code if end is not None else -1
        error = end.error if end is not None and end.HasField("error") else None
        return CommandResult("".join(self.stdout), "".join(self.stderr), exit_code, error)

    def checked(self) -> CommandResult:
        result = self.result()
        if result.exit_code != 0:
            raise CommandExitException(result.stdout, result.stderr, result.exit_code, result.error)
        return result


class hybridmethod(Generic[F]):
    """One name as classmethod and instance method: ``Sandbox.kill(id)`` and ``sbx.kill()``.

    The wrapped function takes ``(cls, self_or_none, *args)``.
    """

    def __init__(self, fn: F) -> None:
        self.fn = fn

    def __get__(self, instance: object, owner: type) -> Callable[..., Any]:
        return functools.partial(self.fn, owner, instance)
