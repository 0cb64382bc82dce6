"""SIGTERM drains: work under way finishes, new requests get a JSON 503 the SDKs retry, and the
process then exits cleanly (it used to answer a plain-text 500 mid-request)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from emberbox.server.testing import ServerProcess


def test_sigterm_finishes_streams_and_refuses_new_work_with_json_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        assert server.first_key and server.proc
        for k, v in server.sdk_env(server.first_key).items():
            monkeypatch.setenv(k, v)
        sandbox = Sandbox.create(timeout=60)
        outcome: dict[str, object] = {}

        def long_command() -> None:
            try:
                outcome["stdout"] = sandbox.commands.run("sleep 2; echo done").stdout
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=long_command)
        worker.start()
        time.sleep(0.7)  # the command's stream is open through the proxy
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.get(
            f"{server.api_url}/v2/sandboxes", headers={"X-API-KEY": server.first_key}
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["code"] == 503 and refused.headers["retry-after"] == "1"
        worker.join(30)
        assert outcome == {"stdout": "done\n"}
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
        server.kill_sandboxes()
