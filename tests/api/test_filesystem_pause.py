"""Filesystem-only pauses through the official e2b SDK on real gVisor sandboxes: ``pause(mode=
"filesystem")``, ``on_timeout: {action: pause, mode: filesystem}``, ``connect(on_resume=
"reboot")``, and a pause while envd does not answer (``envd_unresponsive_at_pause``). What the
sandbox wrote stays, its processes do not; traffic never wakes one that must boot afresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxState

from emberbox.server.testing import ServerProcess
from emberbox.vocabulary import ENVD_PORT
from tests import background_counter
from tests.runtimes.gvisor_support import gvisor_server as start_gvisor_server

# Detached (not an SDK background command, whose stream breaking at the pause would make the
# SDK probe the sandbox: traffic), so the test alone decides what reaches the sandbox.
COUNTER = f"setsid sh -c '{background_counter.LOOP}' >/dev/null 2>&1 </dev/null &"
SLEEPER = "setsid sleep 1000 >/dev/null 2>&1 </dev/null &"


@pytest.fixture(scope="module")
def gvisor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """On a data dir of its own: this file runs next to the others (tests/lanes.py)."""
    tmp = tmp_path_factory.mktemp("filesystem-pause")
    with start_gvisor_server(tmp, own_data_dir=True) as server:
        yield server


@pytest.fixture
def api(gvisor_api: httpx.Client) -> httpx.Client:
    return gvisor_api


def counter(sbx: Sandbox) -> int:
    return int(sbx.commands.run(background_counter.READ).stdout)


def sleeping(sbx: Sandbox) -> bool:
    return sbx.commands.run("pgrep -x sleep || true").stdout.strip() != ""


def wait_state(api: httpx.Client, sid: str, state: str, within: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        detail: dict[str, object] = api.get(f"/sandboxes/{sid}").json()
        if detail["state"] == state:
            return detail
        assert time.monotonic() < deadline, f"not {state}: {detail}"
        time.sleep(0.1)


def test_a_filesystem_pause_keeps_files_and_a_connect_reboots_from_them(
    gvisor_server: ServerProcess, api: httpx.Client
) -> None:
    # (env vars given at create reach a pooled sandbox's envd at /init only: the reboot
    # must hand them over again)
    sbx = Sandbox.create(
        timeout=300, envs={"FROM_CREATE": "yes"},
        lifecycle={"on_timeout": "pause", "auto_resume": True},
    )  # fmt: skip
    try:
        sbx.commands.run(COUNTER)
        sbx.files.write("/home/user/kept.txt", "written before the pause")
        sbx.commands.run("rm /etc/issue.net && echo changed > /etc/motd", user="root")
        first = counter(sbx)
        assert sbx.pause(mode="filesystem") is True
        detail = api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        assert detail["state"] == "paused" and detail["pauseMode"] == "filesystem", detail
        assert 0 < detail["pausedBytes"] < 16 * 2**20, detail  # the changes, not the template

        # Its lifecycle lets traffic wake it, but not one that must boot afresh: the proxy
        # answers that it is paused and cannot be woken, and it stays paused.
        host = sbx.get_host(ENVD_PORT)
        r = httpx.get(f"{gvisor_server.sandbox_url}/health", headers={"Host": host}, timeout=10)
        assert r.status_code == 502 and r.json()["canAutoResume"] is False, r.text
        time.sleep(0.5)
        assert sbx.get_info().state == SandboxState.PAUSED

        back = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert back.get_info().state == SandboxState.RUNNING
        assert back.files.read("/home/user/kept.txt") == "written before the pause"
        check = "test -e /etc/issue.net || echo gone; cat /etc/motd; echo $FROM_CREATE"
        assert back.commands.run(check).stdout == "gone\nchanged\nyes\n"
        # Booted afresh: the counter's file is there, its loop is not.
        stopped = counter(back)
        assert stopped >= first
        time.sleep(0.5)
        assert counter(back) == stopped, "a process outlived a filesystem-only pause"
        assert "pauseMode" not in api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        # A reboot-resumed sandbox pauses with its memory as any other.
        back.commands.run(COUNTER)
        back.pause()
        assert api.get(f"/sandboxes/{sbx.sandbox_id}").json()["pauseMode"] == "full"
        again = Sandbox.connect(sbx.sandbox_id, timeout=300)
        moving = counter(again)
        deadline = time.monotonic() + 10
        while counter(again) == moving:
            assert time.monotonic() < deadline, "the counter did not survive a memory pause"
            time.sleep(0.1)
    finally:
        sbx.kill()


async def test_connect_with_on_resume_reboot_boots_a_memory_paused_sandbox_afresh(
    gvisor_key: str,
) -> None:
    sbx = await AsyncSandbox.create(timeout=300)
    try:
        await sbx.commands.run(SLEEPER)
        await sbx.files.write("/home/user/a.txt", "kept")
        assert (await sbx.commands.run("pgrep -x sleep")).stdout.strip()
        await sbx.pause()
        back = await AsyncSandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert await back.files.read("/home/user/a.txt") == "kept"
        assert (await back.commands.run("pgrep -x sleep || echo none")).stdout == "none\n"
        # A running sandbox: "reboot" changes nothing.
        await back.commands.run(SLEEPER)
        same = await AsyncSandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert (await same.commands.run("pgrep -x sleep || echo none")).stdout != "none\n"
    finally:
        await sbx.kill()


def test_copies_and_forks_keep_their_source_variables_when_booted_from_files(
    gvisor_key: str,
) -> None:
    """A sandbox started from a snapshot or a fork has its source's variables (they came with
    its memory), under its own; a boot from its files (a filesystem pause, then a connect)
    keeps them rather than falling back to its template's."""
    src = Sandbox.create(timeout=300, envs={"FROM_SOURCE": "yes", "SHARED": "source"})
    made: list[Sandbox] = []
    info = None
    try:
        info = src.create_snapshot()
        made.append(Sandbox.create(info.snapshot_id, timeout=120, envs={"SHARED": "copy"}))
        (fork,) = src.fork(count=1, timeout=120)
        assert isinstance(fork, Sandbox), fork
        made.append(fork)
        show = "echo $FROM_SOURCE $SHARED"
        expected = [["yes", "copy"], ["yes", "source"]]
        assert [m.commands.run(show).stdout.split() for m in made] == expected
        for sbx in made:
            sbx.pause(mode="filesystem")
        back = [Sandbox.connect(m.sandbox_id) for m in made]
        assert [b.commands.run(show).stdout.split() for b in back] == expected
    finally:
        for sbx in made:
            sbx.kill()
        src.kill()
        if info is not None:
            Sandbox.delete_snapshot(info.snapshot_id)


def test_a_filesystem_snapshot_keeps_its_source_variables(api: httpx.Client) -> None:
    """A sandbox booted from a filesystem snapshot has its source's variables under its own,
    as one restored from memory has: those of the source's create, and those the source
    itself carried over from its own source. Each keeps its own identity."""
    src = Sandbox.create(timeout=300, envs={"FROM_SOURCE": "yes", "SHARED": "source"})
    made: list[Sandbox] = []
    snapshots: list[str] = []
    try:
        snapshots.append(src.create_snapshot().snapshot_id)
        copy = Sandbox.create(snapshots[0], timeout=120, envs={"SHARED": "copy", "OF_COPY": "c"})
        made.append(copy)
        show = "echo $FROM_SOURCE ${OF_COPY:--} $SHARED $E2B_SANDBOX_ID"
        got = []
        for parent in (src, copy):
            snapshots.append(parent.create_snapshot(mode="filesystem").snapshot_id)
            child = Sandbox.create(snapshots[-1], timeout=120, envs={"SHARED": "child"})
            made.append(child)
            got.append(child.commands.run(show).stdout.split())
            child.pause(mode="filesystem")  # and its own boot from files keeps them
            back = Sandbox.connect(child.sandbox_id)
            got.append(back.commands.run(show).stdout.split())
        ids = [m.sandbox_id for m in made[1:]]
        assert got == [
            ["yes", "-", "child", ids[0]],
            ["yes", "-", "child", ids[0]],
            ["yes", "c", "child", ids[1]],
            ["yes", "c", "child", ids[1]],
        ]
    finally:
        for sbx in made:
            sbx.kill()
        src.kill()
        for snapshot_id in snapshots:
            Sandbox.delete_snapshot(snapshot_id)


@pytest.mark.parametrize(
    "given",
    [
        {"HOME": "/tmp/given-home", "PATH": "/opt/given:/usr/bin:/bin", "FOO": "bar"},
        {"HOME": "/root", "LANG": "C.UTF-8", "FOO": "bar"},  # (the template's own values)
        {"FOO": "bar"},
    ],
    ids=["own values", "the template's values", "none"],
)
def test_home_and_path_a_create_gives_reach_commands_however_the_sandbox_starts(
    api: httpx.Client, given: dict[str, str]
) -> None:
    """A create's ``HOME``, ``PATH`` and ``LANG`` are handed to every command over envd's
    defaults (as E2B's envd does with ``envVars``), also when they equal the template's own:
    started from the template's snapshot or booted, from a snapshot with memory or of files
    only, and booted again from its files; a create that gives none has the user's HOME and
    no LANG. Only a warm-pool claim handed them over; every other start dropped them."""
    # (PATH as envd started the shell: a login's profile resets it; a standby shell exports
    # the rest after its start, so they are read from the shell)
    show = ("{ env | grep -E '^(HOME|LANG|FOO)='; "
            "tr '\\0' '\\n' < /proc/$$/environ | grep -E '^PATH='; } | sort")  # fmt: skip
    expected = sorted(f"{k}={v}" for k, v in {"HOME": "/home/user", **given}.items())

    def seen(sbx: Sandbox) -> list[str]:
        lines = sbx.commands.run(show).stdout.split()
        return [line for line in lines if "PATH" in given or not line.startswith("PATH=")]

    src = Sandbox.create(timeout=300, envs=given)
    made: list[Sandbox] = []
    snapshots: list[str] = []
    try:
        got = {"created": seen(src)}
        snapshots.append(src.create_snapshot().snapshot_id)
        snapshots.append(src.create_snapshot(mode="filesystem").snapshot_id)
        for how, snapshot_id in zip(("from memory", "from files"), snapshots, strict=True):
            made.append(Sandbox.create(snapshot_id, timeout=120))
            got[how] = seen(made[-1])
        src.pause(mode="filesystem")
        got["booted again"] = seen(Sandbox.connect(src.sandbox_id))
        assert got == dict.fromkeys(got, expected)
    finally:
        for sbx in made:
            sbx.kill()
        src.kill()
        for snapshot_id in snapshots:
            Sandbox.delete_snapshot(snapshot_id)


def test_the_end_time_pause_can_keep_only_files(api: httpx.Client) -> None:
    sbx = Sandbox.create(
        timeout=3, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}}
    )
    try:
        sbx.commands.run(SLEEPER)
        sbx.files.write("/home/user/a.txt", "kept")
        detail = wait_state(api, sbx.sandbox_id, "paused")
        assert detail["pauseMode"] == "filesystem", detail
        back = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert back.files.read("/home/user/a.txt") == "kept"
        assert not sleeping(back)
    finally:
        sbx.kill()


def test_a_sandbox_whose_envd_does_not_answer_comes_back_by_a_reboot(
    api: httpx.Client,
) -> None:
    """A filesystem-only pause and a strict one need envd (503); a plain memory pause goes
    ahead (envd is not asked: under load its answer was late, and busy sandboxes were taken
    for hung ones), and ``on_resume="reboot"`` brings the sandbox back with a fresh envd."""
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/home/user/a.txt", "kept")
        # envd (this shell's parent) stops answering once the command has returned.
        sbx.commands.run("setsid sh -c 'sleep 0.5; kill -STOP $0' $PPID >/dev/null 2>&1 &",
                         user="root")  # fmt: skip
        time.sleep(1.5)
        r = api.post(f"/sandboxes/{sbx.sandbox_id}/pause", json={"memory": False})
        assert r.status_code == 503, r.text
        r = api.post(f"/sandboxes/{sbx.sandbox_id}/pause", json={"requireHealthyGuest": True})
        assert r.status_code == 503, r.text
        assert sbx.get_info().state == SandboxState.RUNNING
        assert sbx.pause() is True
        assert sbx.get_info().envd_unresponsive_at_pause is None
        back = Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert back.files.read("/home/user/a.txt") == "kept"
    finally:
        sbx.kill()


def test_filesystem_pause_bad_input_changes_nothing(api: httpx.Client) -> None:
    before = api.get("/v2/sandboxes").json()
    r = api.post("/v2/sandboxes", json={"templateID": "base", "autoPauseMemory": False})
    assert r.status_code == 400 and "autoPause" in r.json()["message"], r.text
    # (with autoResume: tests/api/test_auto_pause.py)
    assert api.get("/v2/sandboxes").json() == before
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        assert api.post(f"/sandboxes/{sid}/pause", json={"memory": False}).status_code == 204
        r = api.post(f"/sandboxes/{sid}/pause", json={"memory": False})
        assert r.status_code == 409, r.text
        assert api.get(f"/sandboxes/{sid}").json()["state"] == "paused"
    finally:
        api.delete(f"/sandboxes/{sid}")


async def test_concurrent_filesystem_pauses_and_reboots(api: httpx.Client) -> None:
    """Four sandboxes paused filesystem-only and rebooted at once, twice: each keeps its own
    files, nothing crosses over."""
    boxes = await asyncio.gather(*(AsyncSandbox.create(timeout=300) for _ in range(4)))
    try:
        for round_ in range(2):
            await asyncio.gather(
                *(b.files.write("/home/user/mine.txt", f"{b.sandbox_id} {round_}") for b in boxes)
            )
            await asyncio.gather(*(b.pause(mode="filesystem") for b in boxes))
            boxes = list(
                await asyncio.gather(
                    *(AsyncSandbox.connect(b.sandbox_id, timeout=300) for b in boxes)
                )
            )
            mine = await asyncio.gather(*(b.files.read("/home/user/mine.txt") for b in boxes))
            assert mine == [f"{b.sandbox_id} {round_}" for b in boxes]
    finally:
        await asyncio.gather(*(b.kill() for b in boxes))


def test_a_filesystem_snapshot_boots_new_sandboxes_and_its_source_runs_on(
    api: httpx.Client,
) -> None:
    sbx = Sandbox.create(timeout=300)
    child: Sandbox | None = None
    try:
        sbx.commands.run(COUNTER)
        sbx.files.write("/home/user/a.txt", "from the source")
        ticks = "for i in $(seq 30); do echo tick $i; sleep 0.1; done"
        streaming = sbx.commands.run(ticks, background=True)  # through the proxy, held open
        snap = sbx.create_snapshot(name=f"fs-{sbx.sandbox_id}", mode="filesystem")
        # A snapshot of files leaves connections alone (one of memory closes them first).
        assert streaming.wait().stdout == "".join(f"tick {i}\n" for i in range(1, 31))
        moving = counter(sbx)
        deadline = time.monotonic() + 10
        while counter(sbx) == moving:  # the source's processes were let go after the save
            assert time.monotonic() < deadline, "the source's counter stopped"
            time.sleep(0.1)
        listed = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [snap.snapshot_id]

        child = Sandbox.create(snap.snapshot_id, timeout=120)
        assert child.sandbox_id != sbx.sandbox_id
        assert child.files.read("/home/user/a.txt") == "from the source"
        stopped = counter(child)
        time.sleep(0.5)
        assert counter(child) == stopped, "a process came along with a filesystem snapshot"
        child.files.write("/home/user/a.txt", "the child's")
        assert sbx.files.read("/home/user/a.txt") == "from the source"

        r = api.post(f"/sandboxes/{sbx.sandbox_id}/rollback", json={"snapshotID": snap.snapshot_id})
        assert r.status_code == 501 and "only files" in r.json()["message"], r.text
        assert sbx.commands.run("echo still").stdout == "still\n"
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        assert child.files.read("/home/user/a.txt") == "the child's"
    finally:
        sbx.kill()
        if child is not None:
            child.kill()


def test_a_filesystem_pause_survives_a_server_and_node_restart(
    gvisor_server: ServerProcess, api: httpx.Client
) -> None:
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/home/user/kept.txt", "across restarts")
        sbx.commands.run(SLEEPER)
        assert sbx.pause(mode="filesystem") is True
        gvisor_server.stop()
        gvisor_server.start()
        detail = api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        assert (detail["state"], detail["pauseMode"]) == ("paused", "filesystem"), detail
        back = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert back.files.read("/home/user/kept.txt") == "across restarts"
        assert not sleeping(back)
    finally:
        sbx.kill()
