"""Volumes end to end: the official e2b SDK's ``Volume`` (sync and async) against a real server,
real gVisor sandboxes mounting them, the content API's confinement, and what is refused."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2b import AsyncSandbox, AsyncVolume, Sandbox, Volume
from e2b.exceptions import NotFoundException, SandboxException

from emberbox.host import rootfs
from emberbox.server.testing import ServerProcess
from tests.api.conftest import point_sdks_at
from tests.api.npm import JS, needs_node, run_script
from tests.runtimes.gvisor_support import DATA_DIR

VOLUME_MB = 48  # small enough to fill in a test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server

    env = {"EMBERBOX_VOLUME_SIZE_MB": str(VOLUME_MB), "EMBERBOX_MAX_VOLUMES_PER_TEAM": "4"}
    with gvisor_server(tmp_path_factory.mktemp("volumes"), env) as started:
        yield started


@pytest.fixture
def key(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    assert server.first_key
    return point_sdks_at(server, server.first_key, monkeypatch)


def _api(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key}, timeout=60)


def _mount_point(volume_id: str) -> Path:
    return DATA_DIR / "volumes" / volume_id / "data"


def test_two_sandboxes_share_a_volume_and_the_sdk_reads_their_writes(
    server: ServerProcess, key: str
) -> None:
    vol = Volume.create("shared")
    one = two = None
    try:
        assert vol.token and vol.volume_id.startswith("vol")
        assert [v.volume_id for v in Volume.list()] == [vol.volume_id]
        assert Volume.get_info(vol.volume_id).name == "shared"

        # Written through the content API before any sandbox exists.
        entry = vol.write_file("/seed/hello.txt", "from the sdk", force=True)
        assert (entry.type.value, entry.size, entry.uid) == ("file", 12, 1000)
        assert vol.read_file("/seed/hello.txt") == "from the sdk"

        one = Sandbox.create(volume_mounts={"/mnt/data": vol}, timeout=120)
        two = Sandbox.create(volume_mounts={"/work": "shared"}, timeout=120)
        assert one.commands.run("cat /mnt/data/seed/hello.txt").stdout == "from the sdk"
        # A write in one sandbox reaches the other and the host while both run.
        one.commands.run("echo -n from-one > /mnt/data/seed/one.txt")
        assert two.commands.run("cat /work/seed/one.txt").stdout == "from-one"
        two.commands.run("mkdir -p /work/deep/er && echo -n x > /work/deep/er/f")
        assert vol.read_file("/seed/one.txt") == "from-one"
        names = sorted(e.path for e in vol.list("/", depth=3))
        assert names == ["/deep", "/deep/er", "/deep/er/f", "/seed", "/seed/hello.txt",
                         "/seed/one.txt"]  # fmt: skip
        assert (_mount_point(vol.volume_id) / "seed" / "one.txt").read_text() == "from-one"
        # The sandbox's user owns what it writes, and what the SDK wrote.
        assert one.commands.run("stat -c %U /mnt/data/seed/one.txt").stdout.strip() == "user"
        assert one.commands.run("echo more >> /mnt/data/seed/hello.txt").exit_code == 0

        # Mounted inside the home, the home stays the user's.
        three = Sandbox.create(volume_mounts={"/home/user/data": vol}, timeout=120)
        try:
            out = three.commands.run("touch ~/x && stat -c %U ~ && cat ~/data/seed/one.txt")
            assert out.stdout.splitlines() == ["user", "from-one"], out.stdout
        finally:
            three.kill()

        mounts = one.get_info()
        assert [(m["name"], m["path"]) for m in mounts.volume_mounts] == [("shared", "/mnt/data")]

        # The rest of the sandbox is unchanged: its root and /tmp stay its own.
        one.commands.run("echo mine > /tmp/t && echo mine > /home/user/h")
        theirs = two.commands.run("cat /tmp/t /home/user/h 2>&1 || true").stdout
        assert "mine" not in theirs

        updated = vol.update_metadata("/seed/hello.txt", mode=0o600)
        assert updated.mode == 0o600
        made = vol.make_dir("/made", mode=0o750)
        assert (made.type.value, made.mode) == ("directory", 0o750)
        assert vol.exists("/made") and not vol.exists("/nope")
        vol.remove("/deep")
        assert two.commands.run("test -e /work/deep || echo gone").stdout.strip() == "gone"

        # A mounted volume is not deleted.
        with _api(server, key) as api:
            r = api.delete(f"/volumes/{vol.volume_id}")
            assert r.status_code == 409 and one.sandbox_id in r.json()["message"], r.text
        assert one.commands.run("cat /mnt/data/seed/one.txt").stdout == "from-one"
    finally:
        for sbx in (one, two):
            if sbx is not None:
                sbx.kill()
        Volume.destroy(vol.volume_id)
    assert not rootfs.mounted(_mount_point(vol.volume_id))
    assert not (DATA_DIR / "volumes" / vol.volume_id).exists()
    with pytest.raises(NotFoundException):
        Volume.get_info(vol.volume_id)


def test_the_content_api_never_leaves_the_volume(server: ServerProcess, key: str) -> None:
    vol = Volume.create("confined")
    sbx = Sandbox.create(volume_mounts={"/v": vol}, timeout=120)
    try:
        # A sandbox may plant symlinks to anywhere; the content API never follows them.
        sbx.commands.run("ln -s /etc /v/etc && ln -s /etc/hostname /v/name && mkdir /v/d")
        entries = {e.name: e for e in vol.list("/")}
        assert entries["etc"].type.value == "symlink" and entries["etc"].target == "/etc"
        base = f"{server.api_url}/volumecontent/{vol.volume_id}"
        auth = {"Authorization": f"Bearer {vol.token}"}
        for method, url, params in [
            ("GET", "/file", {"path": "/name"}),  # a symlink to a host file
            ("GET", "/file", {"path": "/etc/hostname"}),  # through a symlinked directory
            ("GET", "/dir", {"path": "/etc"}),
            ("PUT", "/file", {"path": "/etc/planted"}),
            ("GET", "/file", {"path": "/d/../../x"}),
            ("PATCH", "/path", {"path": "/name"}),
        ]:
            body = {"mode": 0o777} if method == "PATCH" else None
            r = httpx.request(method, base + url, params=params, headers=auth, json=body)
            assert r.status_code == 400, (method, url, params, r.text)
            assert set(r.json()) >= {"code", "message"}
        assert not Path("/etc/planted").exists()
        # A FIFO must not hang the server's read (it is not a file); a name that is not UTF-8
        # is left out of listings rather than failing them. (gVisor keeps a FIFO made inside
        # the sandbox in its own kernel, so these are made on the host, as any other writer of
        # the volume's directory could.)
        os.mkfifo(_mount_point(vol.volume_id) / "pipe")
        os.close(os.open(bytes(_mount_point(vol.volume_id)) + b"/bad\xff", os.O_CREAT, 0o644))
        r = httpx.get(base + "/file", params={"path": "/pipe"}, headers=auth, timeout=10)
        assert r.status_code == 400 and "not a file" in r.json()["message"], r.text
        assert "pipe" in {e.name for e in vol.list("/")}
        # A file a sandbox keeps appending to downloads as long as it was when asked.
        sbx.commands.run("while :; do echo line >> /v/growing; done", background=True,
                         timeout=0)  # fmt: skip
        time.sleep(0.5)
        for _ in range(5):
            r = httpx.get(base + "/file", params={"path": "/growing"}, headers=auth, timeout=30)
            assert r.status_code == 200 and r.content.endswith(b"line\n"), r.text[-100:]
        vol.remove("/etc")  # removes the link, not what it points at
        assert Path("/etc/hostname").exists() and not vol.exists("/etc")

        # Tokens: another volume's, none, or a wrong one look like no volume at all.
        other = Volume.create("other")
        try:
            for headers in ({"Authorization": f"Bearer {other.token}"}, {},
                            {"Authorization": "Bearer nope"}):  # fmt: skip
                r = httpx.get(base + "/path", params={"path": "/"}, headers=headers)
                assert r.status_code == 404, r.text
        finally:
            Volume.destroy(other.volume_id)
    finally:
        sbx.kill()
        Volume.destroy(vol.volume_id)


def test_a_full_volume_fails_writes_inside_and_through_the_api(
    server: ServerProcess, key: str
) -> None:
    vol = Volume.create("small")
    sbx = Sandbox.create(volume_mounts={"/v": vol}, timeout=120)
    try:
        big = (VOLUME_MB + 8) * 1024 * 1024
        filled = sbx.commands.run(f"head -c {big} /dev/zero > /v/big; echo rc=$?", timeout=120)
        assert "No space left on device" in filled.stderr and "rc=1" in filled.stdout
        # The sandbox's own disk is not the volume's: it still takes writes.
        assert sbx.commands.run("head -c 1048576 /dev/zero > /home/user/ok").exit_code == 0
        with httpx.Client(timeout=60) as client:
            r = client.put(
                f"{server.api_url}/volumecontent/{vol.volume_id}/file",
                params={"path": "/more"},
                headers={"Authorization": f"Bearer {vol.token}"},
                content=b"\0" * (4 * 1024 * 1024),
            )
        assert r.status_code == 507, r.text
        assert not any(e.name.startswith(".more") for e in vol.list("/"))  # no temporary left
        # Freed where it was written: a sandbox keeps a file it wrote open in gVisor's cache,
        # so removing it through the API alone frees the space only once that sandbox ends.
        sbx.commands.run("rm /v/big")
        vol.write_file("/more", b"\0" * (4 * 1024 * 1024))
    finally:
        sbx.kill()
        Volume.destroy(vol.volume_id)


def test_bad_mounts_and_volume_requests_change_nothing(server: ServerProcess, key: str) -> None:
    vol = Volume.create("checked")
    try:
        with _api(server, key) as api:
            before = api.get("/v2/sandboxes").json()
            for mounts, status, words in [
                ([{"name": "missing", "path": "/data"}], 404, "not found"),
                ([{"name": "checked", "path": "data"}], 400, "absolute"),
                ([{"name": "checked", "path": "/data/../etc"}], 400, "normalised"),
                ([{"name": "checked", "path": "/etc/x"}], 400, "system directory"),
                ([{"name": "checked", "path": "/tmp"}], 400, "system directory"),
                ([{"name": "checked", "path": "//etc"}], 400, "normalised"),
                ([{"name": "checked", "path": "/data/"}], 400, "normalised"),
                ([{"name": "checked", "path": "/opt"}], 400, "system directory"),
                ([{"name": "checked", "path": "/a"}, {"name": "checked", "path": "/a/b"}],
                 400, "overlap"),
            ]:  # fmt: skip
                r = api.post("/sandboxes", json={"templateID": "base", "volumeMounts": mounts})
                assert r.status_code == status, (mounts, r.text)
                assert words in r.json()["message"], r.text
            assert api.get("/v2/sandboxes").json() == before

            content = f"/volumecontent/{vol.volume_id}"
            auth = {"Authorization": f"Bearer {vol.token}"}
            bad: list[dict[str, str | int]] = [
                {"path": "/x", "uid": -2},
                {"path": "/x", "gid": 2**40},
                {"path": "/x", "mode": 0o17777},
            ]
            for params in bad:
                r = api.post(content + "/dir", params=params, headers=auth)
                assert r.status_code == 400, (params, r.text)
            r = api.put(content + "/file", params={"path": "/" + "n" * 256}, headers=auth,
                        content=b"x")  # fmt: skip
            assert r.status_code == 400, r.text  # over NAME_MAX
            longest = "/" + "n" * 255
            r = api.put(content + "/file", params={"path": longest}, headers=auth, content=b"x")
            assert r.status_code == 201, r.text  # NAME_MAX itself: the upload's name is short
            assert api.delete(content + "/path", params={"path": longest}, headers=auth).is_success
            r = api.get(content + "/path", params={"path": "/"},
                        headers={b"Authorization": "Bearer ünïcode".encode()})  # fmt: skip
            assert r.status_code in (400, 404), r.text
            assert not vol.exists("/x")
            assert api.post("/volumes", json={"name": "checked"}).status_code == 409
            assert api.post("/volumes", json={"name": "../x"}).status_code == 400
            assert api.post("/volumes", json={}).status_code == 400
            names = [f"n{i}" for i in range(3)]
            made = [api.post("/volumes", json={"name": n}) for n in names]
            assert [r.status_code for r in made] == [201, 201, 201]
            assert api.post("/volumes", json={"name": "five"}).status_code == 429  # limit 4
            for r in made:
                assert api.delete(f"/volumes/{r.json()['volumeID']}").status_code == 204
            assert api.delete("/volumes/volnosuchvolume00000000").status_code == 404
            assert len(api.get("/volumes").json()) == 1
        # Another team neither sees the volume nor mounts it by name (its own namespace).
        with _api(server, server.create_key("volume-strangers")) as other:
            assert other.get("/volumes").json() == []
            assert other.get(f"/volumes/{vol.volume_id}").status_code == 404
            assert other.delete(f"/volumes/{vol.volume_id}").status_code == 404
            body = {"templateID": "base", "volumeMounts": [{"name": "checked", "path": "/v"}]}
            assert other.post("/v2/sandboxes", json=body).status_code == 404
    finally:
        Volume.destroy(vol.volume_id)


def test_sandboxes_with_volumes_are_never_paused(server: ServerProcess, key: str) -> None:
    """gVisor's restore looks up again every volume file a paused sandbox holds; one removed
    meanwhile makes the resume fail for good, so pause is refused rather than risk that."""
    vol = Volume.create("unpausable")
    sbx = Sandbox.create(volume_mounts={"/v": vol}, timeout=120)
    try:
        sbx.commands.run("echo -n 1 > /v/f && tail -f /v/f > /dev/null", background=True,
                         timeout=0)  # fmt: skip
        with _api(server, key) as api:
            refused: list[tuple[str, dict[str, object]]] = [
                ("pause", {}),
                ("snapshots", {}),
                ("fork", {"count": 1}),
                ("rollback", {"snapshotID": "snapnosuchsnapshot00000"}),
            ]
            for path, body in refused:
                r = api.post(f"/sandboxes/{sbx.sandbox_id}/{path}", json=body)
                assert r.status_code == 501, (path, r.text)
                assert "volumes" in r.json()["message"]
            r = api.post("/v2/sandboxes", json={"templateID": "base", "autoPause": True,
                         "volumeMounts": [{"name": "unpausable", "path": "/v"}]})  # fmt: skip
            assert r.status_code == 501 and "autoPause" in r.json()["message"], r.text
        vol.remove("/f")
        assert sbx.is_running()
        assert sbx.commands.run("echo -n 2 > /v/f && cat /v/f").stdout == "2"
    finally:
        sbx.kill()
        Volume.destroy(vol.volume_id)


async def test_async_sdk_and_concurrent_sandboxes(server: ServerProcess, key: str) -> None:
    vol = await AsyncVolume.create("async")
    try:
        sandboxes = await asyncio.gather(
            *[AsyncSandbox.create(volume_mounts={"/v": vol}, timeout=120) for _ in range(3)]
        )
        try:
            await asyncio.gather(
                *[s.commands.run(f"echo -n {i} > /v/{i}") for i, s in enumerate(sandboxes)]
            )
            listing = sorted(e.name for e in await vol.list("/"))
            assert listing == ["0", "1", "2"]
            assert await vol.read_file("/2") == "2"
            await vol.write_file("/all", "seen")
            outs = await asyncio.gather(*[s.commands.run("cat /v/all") for s in sandboxes])
            assert [o.stdout for o in outs] == ["seen"] * 3
        finally:
            await asyncio.gather(*[s.kill() for s in sandboxes])
    finally:
        await AsyncVolume.destroy(vol.volume_id)


def _delete_later(api: httpx.Client, volume_id: str, after_s: float) -> int:
    time.sleep(after_s)
    return api.delete(f"/volumes/{volume_id}").status_code


def test_a_delete_racing_creates_never_removes_a_mounted_volume(
    server: ServerProcess, key: str
) -> None:
    """Creates mounting a volume and its delete, all at once: either the delete waits and
    refuses (the creates hold it) or it wins and the creates are told the volume is gone."""
    for delete_after_s in (0.0, 0.3):
        with _api(server, key) as api:
            volume_id = api.post("/volumes", json={"name": "raced"}).json()["volumeID"]
            body = {"templateID": "base", "timeout": 120,
                    "volumeMounts": [{"name": "raced", "path": "/v"}]}  # fmt: skip
            with ThreadPoolExecutor(5) as pool:
                creates = [pool.submit(api.post, "/v2/sandboxes", json=body) for _ in range(4)]
                deleted = pool.submit(_delete_later, api, volume_id, delete_after_s).result()
                answers = [f.result() for f in creates]
            made = [r.json()["sandboxID"] for r in answers if r.status_code == 201]
            assert {r.status_code for r in answers} <= {201, 404}, [r.text for r in answers]
            if deleted == 204:
                assert not made, "a sandbox mounts a deleted volume"
            else:
                assert deleted == 409 and made
                for sid in made:
                    out = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60})
                    assert out.status_code == 200, out.text
                for sid in made:
                    assert api.delete(f"/sandboxes/{sid}").status_code == 204
                assert api.delete(f"/volumes/{volume_id}").status_code == 204
            assert not rootfs.mounted(_mount_point(volume_id))
            assert not (DATA_DIR / "volumes" / volume_id).exists()


def test_volumes_survive_a_server_restart(server: ServerProcess, key: str) -> None:
    vol = Volume.create("kept")
    try:
        vol.write_file("/f", "before")
        writer = Sandbox.create(volume_mounts={"/v": "kept"}, timeout=120)
        writer.commands.run("echo -n from-a-dead-sandbox > /v/g")
        writer.kill()
        server.stop()
        assert not rootfs.mounted(_mount_point(vol.volume_id))  # no sandbox held it
        server.start(timeout_s=60)
        again = Volume.connect(vol.volume_id)
        assert again.read_file("/f") == "before"
        assert rootfs.mounted(_mount_point(vol.volume_id))  # by the read: mounted when used
        sbx = Sandbox.create(volume_mounts={"/v": "kept"}, timeout=120)
        try:
            assert sbx.commands.run("cat /v/f /v/g").stdout == "beforefrom-a-dead-sandbox"
        finally:
            sbx.kill()
    finally:
        Volume.destroy(vol.volume_id)
    with pytest.raises(SandboxException):
        Sandbox.create(volume_mounts={"/v": "kept"}, timeout=120)


@needs_node
def test_the_npm_sdk_shares_a_volume_with_a_sandbox(
    server: ServerProcess, key: str, tmp_path: Path
) -> None:
    out = run_script(JS / "volume.mjs", server, key, tmp_path, 180, VOLUME_NAME="from-npm")
    assert out["seen"] == "written by js" and out["read"] == "from-sandbox"
    assert out["listed"] == ["directory:in", "file:out.txt"]
    assert out["mounts"] == [{"name": "from-npm", "path": "/data"}]
    assert out["names"] == ["from-npm"] and out["destroyed"] is True
    assert not (DATA_DIR / "volumes" / out["id"]).exists()


def test_wrong_volume_tokens_are_throttled(server: ServerProcess, key: str) -> None:
    """Last in the module: it empties loopback's bucket of wrong tokens."""
    vol = Volume.create("guarded")
    try:
        url = f"{server.api_url}/volumecontent/{vol.volume_id}/path"
        with httpx.Client(timeout=10) as client:
            answers = [
                client.get(url, params={"path": "/"}, headers={"Authorization": f"Bearer no{i}"})
                for i in range(80)  # the default burst is 60
            ]
            assert {r.status_code for r in answers} == {404, 429}
            # Not only the last: a slow machine refills the bucket (2 a second) as it asks.
            refused = [r for r in answers if r.status_code == 429]
            assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
            # The holder of the token is never throttled.
            mine = {"Authorization": f"Bearer {vol.token}"}
            ok = client.get(url, params={"path": "/"}, headers=mine)
            assert ok.status_code == 200, ok.text
    finally:
        Volume.destroy(vol.volume_id)
