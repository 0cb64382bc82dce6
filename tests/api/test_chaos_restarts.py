"""Several clients create, pause, resume, snapshot, fork and kill sandboxes while the server (its
node inside it), or a separate node behind a server that stays up, is SIGKILLed and restarted
at once, twice, under them.

A crash lands wherever it lands: mid-create, mid-checkpoint (runsc carries on, orphaned, while
the new server adopts the sandbox), mid-fork, mid-kill. What must hold whatever it cut: every
answer the server gives is a success or a clear refusal (a 503 only for a node out of room, a
502 only while a separate node is down), no row is left switching once the restarted server
has reconciled, paused sandboxes show the disk they hold, every sandbox the database calls
running or paused comes back with its files, and once everything is killed and every snapshot
deleted the host holds what it held before.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import NodeProcess, ServerProcess
from tests.api.conftest import point_sdks_at
from tests.node.support import data_dir_sharing_templates, server_in_front_of
from tests.runtimes.gvisor_support import DATA_DIR, gvisor_server, inventory, settled_leaks

CLIENTS = 3
PER_CLIENT = 2  # sandboxes a client keeps at most
CHAOS_S = 12.0  # how long clients work between two crashes
CRASHES = 2
MARK = "/home/user/mark.txt"
# What each operation may answer: success, 404 once the sandbox was killed, 409 when it is not
# in the state asked for (a crash can leave it pausing until the restarted server reconciles),
# 429 for the key's rate limit and 503 for a node out of room (clients do not pace themselves,
# and a crash cuts forks whose sandboxes then hold their room until the test ends).
ANSWERS = {
    "create": {201, 429, 503},
    "pause": {204, 404, 409, 429},
    "resume": {200, 201, 404, 429, 503},
    "snapshot": {201, 404, 409, 429},
    "fork": {201, 404, 409, 429},
    "kill": {204, 404, 429},
}
FULL = "sandbox_capacity_unavailable"  # the only 503 allowed
NODE_DOWN = 502  # a separate node that does not answer (allowed only around its outages)
SETTLE_S = 3.0  # after a node is back, calls that began before may still end in a 502


@dataclass
class Setup:
    server: ServerProcess
    data_dir: Path  # the node's, whose host objects are compared
    crash: Callable[[], None]  # SIGKILL the crashing process and start it again at once


@pytest.fixture(params=["server", "node"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    # No warm pool: its refills would come and go under the host inventory compared below.
    if request.param == "server":
        with gvisor_server(tmp_path, {"EMBERBOX_WARM_POOL": "0"}) as server:

            def restart_server() -> None:
                server.sigkill()
                server.start(timeout_s=120)  # at once, as a supervisor restarts it

            yield Setup(server, DATA_DIR, restart_server)
        return
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "node", DATA_DIR), "gvisor")
    node.start()
    try:
        server = server_in_front_of(node, tmp_path / "server")
        try:

            def restart_node() -> None:
                node.sigkill()
                node.start(timeout_s=120)

            yield Setup(server, node.data_dir, restart_node)
        finally:
            server.stop()
    finally:
        node.stop()


class Client(threading.Thread):
    """One caller doing random operations on its own sandboxes until told to stop; a refused
    connection (the server is down) is waited out, a cut-off call is forgotten."""

    def __init__(
        self, server: ServerProcess, key: str, seed: int, stop: threading.Event,
        outages: list[tuple[float, float]],
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.outages = outages  # (down, up) of each crash, monotonic
        self.mark_failures: list[tuple[float, float, str]] = []
        self.api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=120)
        self.rng = random.Random(seed)
        self.stop = stop
        self.mine: list[str] = []
        self.marked: dict[str, str] = {}  # sandbox id → what its mark file holds
        self.snapshots: list[str] = []
        self.answers: collections.Counter[tuple[str, int]] = collections.Counter()
        self.node_down: list[tuple[float, float, str]] = []  # 502s, checked at the end
        self.errors: list[str] = []
        self.cut = 0  # calls the crash cut off

    def run(self) -> None:
        with self.api:
            while not self.stop.is_set():
                try:
                    self.step()
                except httpx.TransportError:
                    self.cut += 1
                    time.sleep(0.3)
                except Exception as e:  # a thread's exception would otherwise only be printed
                    self.errors.append(f"{type(e).__name__}: {e}")

    def step(self) -> None:
        if len(self.mine) < PER_CLIENT:
            op = "create"
        elif len(self.mine) > PER_CLIENT:
            op = "kill"  # (forks added to it)
        else:
            op = self.rng.choice(["pause", "resume", "resume", "snapshot", "fork", "kill"])
        sid = self.rng.choice(self.mine) if self.mine else ""
        started = time.monotonic()
        if op == "create":
            r = self.api.post("/sandboxes", json={"templateID": "base", "timeout": 600})
            if r.status_code == 201:
                sid = r.json()["sandboxID"]
                self.mine.append(sid)
                self._mark(sid)
        elif op == "pause":
            r = self.api.post(f"/sandboxes/{sid}/pause")
        elif op == "resume":
            r = self.api.post(f"/sandboxes/{sid}/connect", json={"timeout": 600})
        elif op == "snapshot":
            r = self.api.post(f"/sandboxes/{sid}/snapshots", json={})
            if r.status_code == 201:
                self.snapshots.append(r.json()["snapshotID"])
        elif op == "fork":
            r = self.api.post(f"/sandboxes/{sid}/fork", json={"count": 1, "timeout": 600})
            if r.status_code == 201:
                for entry in r.json():
                    forked = (entry.get("sandbox") or {}).get("sandboxID")
                    if forked:  # its own from now on: killed by a later step or at the end
                        self.mine.append(forked)
                        if sid in self.marked:
                            self.marked[forked] = self.marked[sid]
        else:
            r = self.api.delete(f"/sandboxes/{sid}")
            if r.status_code in (204, 404):
                self.mine.remove(sid)
                self.marked.pop(sid, None)
        self.answers[(op, r.status_code)] += 1
        if r.status_code == NODE_DOWN:
            self.node_down.append((started, time.monotonic(), f"{op} {sid}: {r.text[:300]}"))
        elif r.status_code not in ANSWERS[op]:
            self.errors.append(f"{op} {sid}: {r.status_code} {r.text[:300]}")
        elif r.status_code >= 400 and not {"code", "message"} <= set(r.json()):
            self.errors.append(f"{op} {sid}: refusal without code and message: {r.text[:300]}")
        elif r.status_code == 503 and r.json().get("error_code") != FULL:
            self.errors.append(f"{op} {sid}: 503 that is not a full node: {r.text[:300]}")
        if r.status_code in (429, 503):
            time.sleep(0.5)  # as a client backs off

    def _mark(self, sid: str) -> None:
        """A file in the new sandbox, through the proxy. A crash may cut this too, and the SDK
        then raises its own errors: those must overlap an outage (checked at the end)."""
        text = f"mark of {sid}"
        started = time.monotonic()
        try:
            sbx = Sandbox.connect(sid, timeout=600)
            sbx.files.write(MARK, text)
        except Exception as e:
            self.mark_failures.append((started, time.monotonic(), f"{sid}: {e!r}"))
            return
        self.marked[sid] = text

    def unexplained(self) -> list[str]:
        """502s and failed marks that overlap no outage."""
        return [
            what
            for started, ended, what in self.mark_failures + self.node_down
            if not any(started <= up + SETTLE_S and ended >= down for down, up in self.outages)
        ]


def _no_row_switching(server: ServerProcess, timeout_s: float = 60) -> dict[str, str]:
    """Rows still pausing or resuming once reconciliation had its time."""
    deadline = time.monotonic() + timeout_s
    while True:
        switching = {
            sid: state
            for sid, (state, _) in server.sandbox_states().items()
            if state in ("pausing", "resuming")
        }
        if not switching or time.monotonic() > deadline:
            return switching
        time.sleep(0.5)


def test_clients_at_work_through_two_crashes(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    server = setup.server
    key = server.first_key
    assert key
    point_sdks_at(server, key, monkeypatch)
    config = GVisorConfig(data_dir=setup.data_dir)
    before = asyncio.run(inventory(config))
    stop = threading.Event()
    outages: list[tuple[float, float]] = []
    clients = [Client(server, key, seed, stop, outages) for seed in range(CLIENTS)]
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=180)
    try:
        for client in clients:
            client.start()
        for _ in range(CRASHES):
            time.sleep(CHAOS_S)
            down = time.monotonic()
            setup.crash()
            outages.append((down, time.monotonic()))
        time.sleep(CHAOS_S)
        stop.set()
        for client in clients:
            client.join(timeout=300)
            assert not client.is_alive(), "a client hung"

        errors = [e for c in clients for e in c.errors + c.unexplained()]
        answers = sum((c.answers for c in clients), collections.Counter())
        assert errors == [], f"{errors}\nanswers: {dict(answers)}"
        cut = sum(c.cut + len(c.node_down) + len(c.mark_failures) for c in clients)
        assert cut > 0, "no call was cut: the crashes hit nothing"
        succeeded = {op for (op, status) in answers if status < 300}
        assert {"create", "pause", "resume"} <= succeeded, answers

        assert _no_row_switching(server) == {}
        # Each paused one shows the disk its pause saved, a pause the crash cut after the node
        # had done it included.
        paused = api.get("/v2/sandboxes", params={"state": ["paused"], "limit": 100}).json()
        assert [p["sandboxID"] for p in paused if not p.get("pausedBytes")] == []
        states = server.sandbox_states()
        marked = {sid: text for c in clients for sid, text in c.marked.items()}
        kept = {sid: state for sid, (state, _) in states.items() if state in ("running", "paused")}
        # Those no client marked (a crash cut the create or fork answer) are killed first, and
        # each checked one after its check, running ones before paused ones: the node may be
        # full, and a resume must find room.
        for sid in kept.keys() - marked.keys():
            assert api.delete(f"/sandboxes/{sid}").status_code in (204, 404), sid
        for sid in sorted(kept.keys() & marked.keys(), key=lambda sid: kept[sid] == "paused"):
            back = Sandbox.connect(sid, timeout=120)  # resumes it if it was paused
            assert back.files.read(MARK) == marked[sid], sid
            assert back.commands.run("cat /etc/hostname").stdout.strip() == sid
            back.kill()
    finally:
        stop.set()
        listed = api.get("/v2/sandboxes", params={"state": ["running", "paused"], "limit": 100})
        for sandbox in listed.json() if listed.status_code == 200 else []:
            api.delete(f"/sandboxes/{sandbox['sandboxID']}")
        # (and those whose answer a crash cut off, which no client knows)
        snapshots = api.get("/snapshots", params={"limit": 100})
        known = {s["snapshotID"] for s in snapshots.json()} if snapshots.is_success else set()
        for snapshot_id in known | {s for c in clients for s in c.snapshots}:
            api.delete(f"/templates/{snapshot_id}")
        api.close()
    assert settled_leaks(config, before) == {}
