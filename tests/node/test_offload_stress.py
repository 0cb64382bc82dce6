"""Idle sandboxes being moved to swap while several clients pause, resume, snapshot, fork,
roll back, claim and kill them.

The offloader lowers a running sandbox's memory limit for each of its steps and takes the
sandbox's lock to do it (``node/offload.py``); every operation must find the limit whole and
the sandbox intact whatever step it arrived in. Each client owns one sandbox, so every answer
must be a success: the races under test are the offloader's against each client, not the
clients' against each other (``tests/api/test_stateful_stress.py`` has those). Between its
operations a client waits long enough for its sandbox to go idle and be offloaded, often in
the middle of the offload; the test checks that this happened, and afterwards that each
survivor keeps its processes, files and whole memory limit and that the host ends as it began.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from emberbox.host import cgroups
from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import NodeProcess
from emberbox.templates.store import Template
from tests import background_counter
from tests.api.conftest import point_sdks_at
from tests.runtimes.gvisor_support import DATA_DIR

from .support import data_dir_sharing_templates, served_leaving_nothing

CLIENTS = 3
ROUNDS = 2  # each client makes each operation this many times, in a random order
IDLE_S = 0.4  # how long a sandbox stays idle before it is offloaded
SWAPPED = 8 << 20  # a sandbox with more than this in swap counts as offloaded
# A counter that leaves its sandbox idle (background_counter.LOOP's 10 a second is not: each
# ``mv`` is a process start in gVisor); written like it, read with background_counter.READ.
SLOW_COUNTER = background_counter.LOOP.replace("sleep 0.1", "sleep 1")


def _whole_limit(group: str) -> int:
    """Its memory limit: the highest of a few reads, since an offload step may already be
    lowering it for a moment."""
    seen = []
    for _ in range(10):
        usage = cgroups.usage(group)
        assert usage is not None, f"{group} is gone"
        seen.append(usage.mem_limit)
        time.sleep(0.05)
    return max(seen)


class _Client:
    """One client and the sandbox it owns; every operation it makes must succeed."""

    def __init__(self, api: httpx.Client, config: GVisorConfig, index: int) -> None:
        self.api, self.config, self.index = api, config, index
        self.rng = random.Random(index)
        self.sandbox = Sandbox.create("base", timeout=300)
        self.snapshots: list[str] = []  # the current sandbox's
        self.made: list[str] = []  # every snapshot made, deleted at the end
        self.ops_on_offloaded: list[str] = []  # operations that began with it in swap (shown)
        self._prepare()
        self.booted_limit = _whole_limit(self.group)

    @property
    def sid(self) -> str:
        return self.sandbox.sandbox_id

    @property
    def group(self) -> str:
        return f"{self.config.cgroup_base}/{self.sid}"

    def _prepare(self) -> None:
        self.sandbox.files.write("/home/user/mark.txt", f"mark {self.index}")
        self.sandbox.commands.run(SLOW_COUNTER, background=True)

    def run(self) -> None:
        ops: dict[str, Callable[[], None]] = {
            "command": self.command,
            "pause": self.pause_and_resume,
            "snapshot": self.snapshot,
            "fork": self.fork,
            "rollback": self.rollback,
            "claim": self.claim,
            "replace": self.replace,
        }
        order = list(ops) * ROUNDS
        self.rng.shuffle(order)
        for round_, op in enumerate(order):
            if round_ % 2 == 0:  # on its memory in swap, often in the middle of the offload
                self._wait_offloaded()
            else:  # at a random point of its idleness: before, during or after an offload
                time.sleep(self.rng.uniform(0, IDLE_S + 2.0))
            if cgroups.swapped(self.group) > SWAPPED:
                self.ops_on_offloaded.append(op)
            ops[op]()

    def _wait_offloaded(self, timeout_s: float = 30) -> None:
        """Until more than ``SWAPPED`` of its memory is in swap: at once where an earlier
        offload left it there, else as soon as the next offload has moved that much."""
        deadline = time.monotonic() + timeout_s
        while cgroups.swapped(self.group) <= SWAPPED:
            assert time.monotonic() < deadline, f"{self.sid} was never offloaded"
            time.sleep(0.01)

    def _expect(self, r: httpx.Response, status: int, what: str) -> httpx.Response:
        assert r.status_code == status, f"{what} of {self.sid}: {r.status_code} {r.text[:300]}"
        return r

    def command(self) -> None:
        assert self.sandbox.files.read("/home/user/mark.txt") == f"mark {self.index}"
        check = f"echo {self.index} > /tmp/own && cat /tmp/own"
        assert self.sandbox.commands.run(check).stdout.strip() == str(self.index)

    def pause_and_resume(self) -> None:
        self._expect(self.api.post(f"/sandboxes/{self.sid}/pause"), 204, "pause")
        resumed = self.api.post(f"/sandboxes/{self.sid}/connect", json={"timeout": 300})
        self._expect(resumed, 201, "resume")
        self.command()

    def snapshot(self) -> None:
        made = self.api.post(f"/sandboxes/{self.sid}/snapshots", json={})
        snapshot_id = self._expect(made, 201, "snapshot").json()["snapshotID"]
        self.snapshots.append(snapshot_id)
        self.made.append(snapshot_id)

    def rollback(self) -> None:
        if not self.snapshots:  # (none yet, or its sandbox was replaced since)
            self.snapshot()
        body = {"snapshotID": self.rng.choice(self.snapshots)}
        self._expect(self.api.post(f"/sandboxes/{self.sid}/rollback", json=body), 200, "rollback")
        self.command()

    def fork(self) -> None:
        body = {"count": 1, "timeout": 60}
        made = self._expect(self.api.post(f"/sandboxes/{self.sid}/fork", json=body), 201, "fork")
        (entry,) = made.json()
        forked = Sandbox.connect(entry["sandbox"]["sandboxID"])
        try:
            assert forked.files.read("/home/user/mark.txt") == f"mark {self.index}"
        finally:
            forked.kill()

    def claim(self) -> None:
        """A create, which claims a pooled sandbox (often an offloaded one)."""
        claimed = Sandbox.create("base", timeout=60)
        try:
            assert claimed.commands.run("echo $HOME").stdout.strip() == "/home/user"
        finally:
            claimed.kill()

    def replace(self) -> None:
        """Kill the sandbox, offloaded or not, and start a new one in its place."""
        assert self.sandbox.kill()
        self.sandbox = Sandbox.create("base", timeout=300)
        self.snapshots.clear()  # (rollback takes this sandbox's own)
        self._prepare()

    def check_survived(self) -> None:
        """Its processes, files and whole memory limit, once it is busy (never offloaded)."""
        assert self.sandbox.files.read("/home/user/mark.txt") == f"mark {self.index}"
        first = int(self.sandbox.commands.run(background_counter.READ).stdout)
        # Busy, so no offload step starts: one under way ends within a step.
        self.sandbox.commands.run("timeout 4 sh -c 'while :; do :; done'", background=True)
        time.sleep(1.5)
        assert int(self.sandbox.commands.run(background_counter.READ).stdout) > first, "stopped"
        usage = cgroups.usage(self.group)
        assert usage is not None and usage.mem_limit == self.booted_limit, "left lowered"
        if cgroups.is_v1():  # memory plus swap held to the same limit
            memsw = cgroups.CGROUP_ROOT / "memory" / self.group / "memory.memsw.limit_in_bytes"
            assert int(memsw.read_text()) == self.booted_limit
        hold = "python3 -c 'b = bytearray(400 << 20); print(len(b))'"
        assert self.sandbox.commands.run(hold).stdout.split() == [str(400 << 20)]

    def clean_up(self) -> None:
        self.sandbox.kill()
        for snapshot_id in self.made:
            self.api.delete(f"/templates/{snapshot_id}")


def test_operations_racing_offloads_find_their_sandboxes_whole(
    tmp_path: Path, base_template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cgroups.swap_in_ram():
        pytest.skip("the host has no swap in RAM (scripts/setup adds a compressed one, zram)")
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "data", DATA_DIR), "gvisor",
                       env={"EMBERBOX_WARM_POOL": "2",
                            "EMBERBOX_OFFLOAD_IDLE_S": str(IDLE_S)})  # fmt: skip
    config = GVisorConfig(data_dir=node.data_dir)
    with served_leaving_nothing(node, tmp_path / "server") as server:
        assert server.first_key
        point_sdks_at(server, server.first_key, monkeypatch)
        api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key},
                           timeout=180)  # fmt: skip
        clients: list[_Client] = []
        errors: list[str] = []
        try:
            clients = [_Client(api, config, i) for i in range(CLIENTS)]

            def run(client: _Client) -> None:
                try:
                    client.run()
                except BaseException as e:  # a thread's failure would otherwise only print
                    errors.append(f"client {client.index}: {e!r}")

            threads = [threading.Thread(target=run, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            caught = [op for c in clients for op in c.ops_on_offloaded]
            print(f"operations that began on a sandbox in swap: {caught}")
            for client in clients:
                client.check_survived()
        finally:
            for client in clients:
                client.clean_up()
            api.close()
