"""Pause, resume, snapshot, fork, rollback and kill from several clients at once, on the same
sandboxes.

Races between stateful operations show only with concurrency: two pauses of one sandbox, a
fork or a snapshot while it is being paused, a resume from two clients, a kill in the middle of
any of them. Whatever the interleaving, every answer is a success or a clear refusal (404, 409:
never a 5xx), a sandbox that was not killed comes back with its processes and files, and once
everything is killed and every snapshot deleted the host holds what it held before (no runsc
process, mount, netns, veth, cgroup, lease, rule or directory left).
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import ServerProcess
from tests import background_counter
from tests.api.conftest import point_sdks_at
from tests.runtimes.gvisor_support import DATA_DIR, gvisor_server, inventory, settled_leaks

CLIENTS = 4
ROUNDS = 12  # operations per client
SANDBOXES = 3
# What each operation may answer when others act on the same sandbox: success, 404 once it was
# killed, 409 when it is not running (paused, or being paused). A connect waits out another
# caller's pause or resume and answers the sandbox, so it is never refused for that.
ANSWERS = {
    "pause": {204, 404, 409},
    "resume": {200, 201, 404},
    "snapshot": {201, 404, 409},
    "fork": {201, 404, 409},
    "rollback": {200, 404, 409},
}
OPS = list(ANSWERS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No warm pool: its refills would come and go under the host inventory compared below.
    tmp = tmp_path_factory.mktemp("stateful-stress")
    with gvisor_server(tmp, {"EMBERBOX_WARM_POOL": "0"}) as s:
        yield s


def _client(
    server: ServerProcess,
    key: str,
    ids: list[str],
    seed: int,
    answers: collections.Counter[tuple[str, int]],
    errors: list[str],
    snapshots: list[tuple[str, str]],
    lock: threading.Lock,
) -> None:
    rng = random.Random(seed)
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=180)
    with api:
        try:
            _operate(api, rng, ids, answers, errors, snapshots, lock)
        except Exception as e:  # a thread's exception would otherwise only be printed
            errors.append(f"client {seed}: {e!r}")


def _operate(
    api: httpx.Client,
    rng: random.Random,
    ids: list[str],
    answers: collections.Counter[tuple[str, int]],
    errors: list[str],
    snapshots: list[tuple[str, str]],
    lock: threading.Lock,
) -> None:
    for _ in range(ROUNDS):
        sid = rng.choice(ids)
        op = rng.choice([*OPS, "pause", "resume", "rollback"])
        with lock:
            own = [snap for snap, source in snapshots if source == sid]
        if op == "rollback" and not own:
            op = "snapshot"
        if op == "pause":
            r = api.post(f"/sandboxes/{sid}/pause")
        elif op == "resume":
            r = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 300})
        elif op == "snapshot":
            r = api.post(f"/sandboxes/{sid}/snapshots", json={})
            if r.status_code == 201:
                with lock:
                    snapshots.append((r.json()["snapshotID"], sid))
        elif op == "rollback":
            r = api.post(f"/sandboxes/{sid}/rollback", json={"snapshotID": rng.choice(own)})
        else:
            r = api.post(f"/sandboxes/{sid}/fork", json={"count": 1, "timeout": 60})
            if r.status_code == 201:
                for entry in r.json():
                    forked = (entry.get("sandbox") or {}).get("sandboxID")
                    if forked:  # a fork that failed is an entry with an error instead
                        kill = api.delete(f"/sandboxes/{forked}")
                        if kill.status_code != 204:
                            errors.append(f"kill fork {forked}: {kill.status_code}")
        with lock:
            answers[(op, r.status_code)] += 1
        if r.status_code not in ANSWERS[op]:
            errors.append(f"{op} {sid}: {r.status_code} {r.text[:300]}")
        elif r.status_code >= 400 and not {"code", "message"} <= set(r.json()):
            errors.append(f"{op} {sid}: refusal without code and message: {r.text[:300]}")


def _kill_everything(api: httpx.Client, snapshots: list[tuple[str, str]]) -> None:
    """Whatever a failed run left (a fork a client did not get to kill, a paused survivor):
    the next test module's server would find it on the node and call it an orphan."""
    listed = api.get("/v2/sandboxes", params={"state": ["running", "paused"], "limit": 100})
    for sandbox in listed.json() if listed.status_code == 200 else []:
        api.delete(f"/sandboxes/{sandbox['sandboxID']}")
    for snapshot_id, _ in snapshots:
        api.delete(f"/templates/{snapshot_id}")


def test_concurrent_pause_resume_snapshot_fork_and_kill(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = server.first_key
    assert key
    point_sdks_at(server, key, monkeypatch)
    config = GVisorConfig(data_dir=DATA_DIR)
    before = asyncio.run(inventory(config))
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=180)
    answers: collections.Counter[tuple[str, int]] = collections.Counter()
    errors: list[str] = []
    snapshots: list[tuple[str, str]] = []
    lock = threading.Lock()
    try:
        sandboxes = [Sandbox.create(timeout=300) for _ in range(SANDBOXES)]
        for i, sbx in enumerate(sandboxes):
            sbx.files.write("/home/user/mark.txt", f"mark {i}")
            sbx.commands.run(background_counter.LOOP, background=True)
        victim = sandboxes[-1]  # killed while the others are at work on it
        ids = [s.sandbox_id for s in sandboxes]
        threads = [
            threading.Thread(target=_client, args=(server, key, ids, seed, answers, errors,
                                                   snapshots, lock))
            for seed in range(CLIENTS)
        ]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(2)
        killed = api.delete(f"/sandboxes/{victim.sandbox_id}")
        for t in threads:
            t.join()

        assert errors == [], f"{errors}\nanswers: {dict(answers)}"
        assert killed.status_code == 204, killed.text
        # The run did what it names (which operations win their races varies from run to run).
        succeeded = {op for (op, status) in answers if status < 300}
        assert {"pause", "resume"} <= succeeded and succeeded & {"snapshot", "fork"}, answers

        for i, sbx in enumerate(sandboxes[:-1]):
            back = Sandbox.connect(sbx.sandbox_id, timeout=120)  # resumes it if it was paused
            assert back.files.read("/home/user/mark.txt") == f"mark {i}"
            assert back.commands.run("cat /etc/hostname").stdout.strip() == sbx.sandbox_id
            first = int(back.commands.run(background_counter.READ).stdout)
            time.sleep(1.2)
            assert int(back.commands.run(background_counter.READ).stdout) > first, "stopped"
    finally:
        _kill_everything(api, snapshots)
        api.close()
    assert settled_leaks(config, before) == {}
