"""A client that stops reading a process's output, then leaves: what envd had not yet sent
waits in the process's backlog for the next ``Connect`` (docs/envd.md), instead of piling up
in the stream's own buffer (without bound) and going with it."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import EnvdProcess

MIB = 1 << 20


def test_output_a_client_never_read_reaches_the_next_connect(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    envd = envd_factory("--standby-shells", "0")
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", envd.url)
    sandbox = Sandbox.create()
    done = f"/tmp/emberbox-slow-reader-{time.monotonic_ns()}"
    # 7 MiB of numbered 1 KiB lines, then it waits: nobody reads them meanwhile.
    lines = "[sys.stdout.write('%08d%s\\n' % (i, 'x' * 1015)) for i in range(7 * 1024)]"
    cmd = f'python3 -c "import sys; {lines}"; touch {done}; sleep 60'
    # A client that reads the start event, then nothing: the socket's buffers take what
    # they can (the SDK's own client reads ahead into memory, which a raw one does not).
    body = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}}).encode()
    with httpx.stream(
        "POST",
        f"{envd.url}/process.Process/Start",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": "application/connect+json",
                 "Authorization": "Basic " + base64.b64encode(b"user:").decode()},
        timeout=30,
    ) as stream:  # fmt: skip
        pid = _first_message(stream.iter_raw(1024))["event"]["start"]["pid"]
        deadline = time.monotonic() + 30
        while sandbox.commands.run(f"test -e {done} && echo y || echo n").stdout.strip() != "y":
            assert time.monotonic() < deadline, "the process never finished printing"
            time.sleep(0.2)
        time.sleep(2)  # (envd has long read it all: it waits for this client meanwhile)
    time.sleep(0.5)  # (the stream has ended: its client left)

    again = sandbox.commands.connect(pid, timeout=0)
    got: list[str] = []
    deadline = time.monotonic() + 20
    for stdout, _, _ in again:
        if stdout:
            got.append(stdout)
        if sum(map(len, got)) >= MIB or time.monotonic() > deadline:
            break
    again.kill()
    text = "".join(got)
    # What the socket buffers held is gone with the connection; the rest, in order, comes to
    # the next Connect.
    assert len(text) >= MIB, f"only {len(text)} bytes of the unread output came back"
    numbers = [int(line[:8]) for line in text.splitlines() if len(line) == 1023]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers[-1] < 7 * 1024


def _first_message(chunks: Iterator[bytes]) -> dict[str, Any]:
    """The first Connect envelope's JSON, read off the stream and nothing much after it."""
    seen = b""
    for chunk in chunks:
        seen += chunk
        if len(seen) >= 5 and len(seen) >= 5 + struct.unpack(">I", seen[1:5])[0]:
            message: dict[str, Any] = json.loads(seen[5 : 5 + struct.unpack(">I", seen[1:5])[0]])
            return message
    raise AssertionError("the stream ended before its first message")
