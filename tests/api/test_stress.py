"""Create/kill cycles from several clients at once on gVisor, with the control plane's
reconciler and the node's dead-sandbox check at their fastest.

Regression for a kill race seen with a few hundred sandboxes: one kill ran two or three times
at once (reconciler orphan kill + dead check + user kill), and a stale kill deleted a *new*
sandbox's veth (creates failed with "Cannot find device"). Now: no create fails, every sandbox
answers with its own identity through the proxy, each is released and torn down exactly once
(counted from the server's log), and the host ends as it began.
"""

from __future__ import annotations

import collections
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import ServerProcess
from tests.runtimes.gvisor_support import DATA_DIR, gvisor_server, inventory

CYCLES = int(os.environ.get("EMBERBOX_STRESS_CYCLES", "200"))
CLIENTS = 4


@pytest.fixture(scope="module")
def stressed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    fast = {
        "EMBERBOX_RECONCILE_INTERVAL_S": "0.05",
        "EMBERBOX_DEAD_CHECK_INTERVAL_S": "0.05",
        "EMBERBOX_REAP_INTERVAL_S": "0.05",
        "EMBERBOX_RATE_PER_S": "1000",
        "EMBERBOX_RATE_BURST": "1000",
    }
    with gvisor_server(tmp_path_factory.mktemp("stress"), fast) as server:
        yield server


def _cycle(server: ServerProcess, key: str, n: int, created: list[str], errors: list[str]) -> None:
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=120)
    proxy = httpx.Client(base_url=server.sandbox_url, timeout=30)
    with api, proxy:
        for _ in range(n):
            r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 120})
            if r.status_code != 201:
                errors.append(f"create: {r.status_code} {r.text[:300]}")
                continue
            body = r.json()
            sid = body["sandboxID"]
            created.append(sid)
            # Through the proxy to this sandbox's envd: its network must be its own.
            got = proxy.get(
                "/files",
                params={"path": "/etc/hostname"},
                headers={
                    "E2b-Sandbox-Id": sid,
                    "E2b-Sandbox-Port": "49983",
                    "X-Access-Token": body["envdAccessToken"],
                },
            )
            if got.status_code != 200 or got.text.strip() != sid:
                errors.append(f"{sid} answered {got.status_code}: {got.text[:200]}")
            k = api.delete(f"/sandboxes/{sid}")
            if k.status_code != 204:
                errors.append(f"kill {sid}: {k.status_code} {k.text[:200]}")


def test_create_kill_cycles_race_nothing(stressed_server: ServerProcess) -> None:
    import asyncio

    key = stressed_server.first_key
    assert key
    config = GVisorConfig(data_dir=DATA_DIR)
    baseline = asyncio.run(inventory(config))
    created: list[str] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_cycle, args=(stressed_server, key, CYCLES // CLIENTS, created,
                                               errors))
        for _ in range(CLIENTS)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(created) == CYCLES // CLIENTS * CLIENTS

    log = Path(stressed_server.log_dir / "server.log").read_text()
    released = collections.Counter(re.findall(r"released sandbox (\w+) \(killed\)", log))
    teardowns = collections.Counter(re.findall(r"host teardown of (\w+)", log))
    assert {sid: released[sid] for sid in created} == dict.fromkeys(created, 1)
    assert {sid: teardowns[sid] for sid in created} == dict.fromkeys(created, 1)
    assert "killing orphan" not in log
    states = stressed_server.sandbox_states()
    assert {states[sid] for sid in created} == {("killed", "killed by user")}
    assert asyncio.run(inventory(config)).leaked_since(baseline) == {}
