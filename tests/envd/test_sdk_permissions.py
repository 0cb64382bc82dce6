"""File operations as ``user`` have exactly that user's permissions (envd itself is root).

The official SDK has no permission-denied class: envd answers HTTP 403 / Connect
``permission_denied`` and the SDK raises its plain ``SandboxException`` carrying the reason,
the class it documents for every other refusal. Each refusal is checked against the same
operation as root succeeding, so the tests fail if envd refuses everything.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import AsyncSandbox, FilesystemEventType, SandboxException
from e2b.sandbox.filesystem.filesystem import WriteEntry

from tests.conftest import EnvdProcess


@pytest.fixture
def root_dir(sandbox_user: str) -> Iterator[Path]:
    """A root-owned 0755 directory: a 0600 secret, a 0644 public file, a 0700 subdirectory."""
    if os.geteuid() != 0:
        pytest.skip("needs root: envd can only act as another user when it is root")
    path = Path(tempfile.mkdtemp(prefix="emberbox-root-"))
    path.chmod(0o755)
    (path / "secret.txt").write_text("secret")
    (path / "secret.txt").chmod(0o600)
    (path / "public.txt").write_text("public")
    (path / "public.txt").chmod(0o644)
    (path / "private").mkdir(mode=0o700)
    (path / "private" / "inner.txt").write_text("inner")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def denied(call: Callable[[], Any]) -> str:
    """``call`` must fail with the SDK's plain SandboxException saying "permission denied"."""
    with pytest.raises(SandboxException) as caught:
        call()
    assert type(caught.value) is SandboxException, repr(caught.value)
    assert "permission denied" in str(caught.value)
    return str(caught.value)


def test_reads_follow_the_users_permissions(sandbox: Any, root_dir: Path, user_dir: Path) -> None:
    assert (
        denied(lambda: sandbox.files.read("/etc/shadow")) == "403: permission denied: '/etc/shadow'"
    )
    assert sandbox.files.read("/etc/shadow", user="root").startswith("root:")
    denied(lambda: sandbox.files.read(f"{root_dir}/secret.txt"))
    assert sandbox.files.read(f"{root_dir}/secret.txt", user="root") == "secret"
    assert sandbox.files.read(f"{root_dir}/public.txt") == "public"
    denied(lambda: sandbox.files.read(f"{root_dir}/private/inner.txt"))  # no search permission
    denied(lambda: sandbox.files.read(f"{root_dir}/private/inner.txt", format="stream"))
    # a link the user owns does not lend it the target's permissions
    (user_dir / "to-secret").symlink_to(root_dir / "secret.txt")
    denied(lambda: sandbox.files.read(f"{user_dir}/to-secret"))
    assert sandbox.files.read(f"{user_dir}/to-secret", user="root") == "secret"


def test_writes_follow_the_users_permissions(sandbox: Any, root_dir: Path) -> None:
    before = sorted(p.name for p in root_dir.iterdir())
    probes = [Path(f"{top}/emberbox-probe-{uuid.uuid4().hex}") for top in ("/etc", "/root")]
    try:
        for probe in probes:
            assert not probe.exists()
            denied(functools.partial(sandbox.files.write, str(probe), "x"))
            assert not probe.exists()
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)  # a broken envd must not leave the next run a file
    denied(lambda: sandbox.files.write(f"{root_dir}/new.txt", "x"))
    denied(lambda: sandbox.files.write(f"{root_dir}/new.bin", b"x", use_octet_stream=True))
    denied(lambda: sandbox.files.write(f"{root_dir}/gz.bin", b"x", gzip=True))
    denied(lambda: sandbox.files.write(f"{root_dir}/sub/deep.txt", "x"))  # no parents either
    denied(lambda: sandbox.files.write(f"{root_dir}/public.txt", "overwritten"))
    denied(
        lambda: sandbox.files.write_files(
            [
                WriteEntry(path=f"{root_dir}/a.txt", data="a"),
                WriteEntry(path=f"{root_dir}/b.txt", data="b"),
            ]
        )
    )
    assert sorted(p.name for p in root_dir.iterdir()) == before
    assert (root_dir / "public.txt").read_text() == "public"
    sandbox.files.write(f"{root_dir}/public.txt", "by root", user="root")
    assert (root_dir / "public.txt").read_text() == "by root"


def test_filesystem_rpcs_follow_the_users_permissions(sandbox: Any, root_dir: Path) -> None:
    private = f"{root_dir}/private"
    message = denied(lambda: sandbox.files.list(private))
    assert message.startswith("Code.PERMISSION_DENIED: ")  # the SDK's rendering of the code
    denied(lambda: sandbox.files.get_info(f"{private}/inner.txt"))
    denied(lambda: sandbox.files.exists(f"{private}/inner.txt"))
    denied(lambda: sandbox.files.make_dir(f"{root_dir}/made"))
    denied(lambda: sandbox.files.make_dir(f"{private}/made"))
    denied(lambda: sandbox.files.rename(f"{root_dir}/public.txt", f"{root_dir}/moved.txt"))
    denied(lambda: sandbox.files.remove(f"{root_dir}/public.txt"))
    denied(lambda: sandbox.files.remove(private))
    denied(lambda: sandbox.files.watch_dir(private))
    denied(lambda: sandbox.files.list("/root"))
    assert (root_dir / "public.txt").read_text() == "public"
    assert (root_dir / "private" / "inner.txt").exists()
    assert not (root_dir / "made").exists()
    # the same calls as root succeed
    assert [e.name for e in sandbox.files.list(private, user="root")] == ["inner.txt"]
    assert sandbox.files.get_info(f"{private}/inner.txt", user="root").size == 5
    assert sandbox.files.make_dir(f"{root_dir}/made", user="root") is True
    sandbox.files.remove(private, user="root")
    assert not (root_dir / "private").exists()


def test_what_the_user_creates_is_its_own(sandbox: Any, user_dir: Path, sandbox_user: str) -> None:
    sandbox.files.make_dir(f"{user_dir}/a/b")
    sandbox.files.write(f"{user_dir}/c/d/file.txt", "x", use_octet_stream=True)
    sandbox.files.write(f"{user_dir}/e.txt", "e")
    sandbox.files.rename(f"{user_dir}/e.txt", f"{user_dir}/f/g/e.txt")
    for relative in ("a", "a/b", "c", "c/d", "c/d/file.txt", "f", "f/g", "f/g/e.txt"):
        info = sandbox.files.get_info(f"{user_dir}/{relative}")
        assert (info.owner, info.group) == (sandbox_user, sandbox_user), relative
    sandbox.files.write(f"{user_dir}/by-root.txt", "r", user="root")
    assert sandbox.files.get_info(f"{user_dir}/by-root.txt").owner == "root"


def test_group_permissions_are_the_users_groups(sandbox: Any, root_dir: Path) -> None:
    """The group id must change too: a worker keeping root's group would read ``root-group``."""
    shared = root_dir / "user-group.txt"
    shared.write_text("for the user group")
    shutil.chown(shared, "root", "user")
    shared.chmod(0o640)
    root_group = root_dir / "root-group.txt"
    root_group.write_text("for the root group")
    shutil.chown(root_group, "nobody", "root")
    root_group.chmod(0o040)
    assert sandbox.files.read(str(shared)) == "for the user group"
    denied(lambda: sandbox.files.read(str(root_group)))


async def test_concurrent_users_never_share_credentials(
    e2b_debug_env: EnvdProcess, root_dir: Path
) -> None:
    """Many interleaved requests as root and as user: each keeps exactly its own rights."""
    sandbox = await AsyncSandbox.create()
    secret = f"{root_dir}/secret.txt"

    async def attempt(user: str) -> str:
        try:
            if user == "root":
                return str(await sandbox.files.read(secret, user=user))
            return str(len(await sandbox.files.list(f"{root_dir}/private", user=user)))
        except SandboxException as exc:
            return "denied" if "permission denied" in str(exc) else repr(exc)

    users = ["root", "user"] * 40
    results = await asyncio.gather(*(attempt(u) for u in users))
    assert results == ["secret" if u == "root" else "denied" for u in users]


def test_watch_shows_only_what_the_user_may_list(sandbox: Any, user_dir: Path) -> None:
    """inotify checks read permission when a watch is added; adopting a new subdirectory of a
    recursive watch must happen as the user too, or root's private files would show up."""
    as_user = sandbox.files.watch_dir(str(user_dir), recursive=True)
    as_root = sandbox.files.watch_dir(str(user_dir), recursive=True, user="root")
    try:
        sandbox.commands.run(
            f"mkdir -m 700 {user_dir}/hidden && sleep 0.3 && echo x > {user_dir}/hidden/in.txt"
            f" && echo y > {user_dir}/after.txt",
            user="root",
        )
        root_events: list[Any] = []
        user_events: list[Any] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            any(e.name == "hidden/in.txt" for e in root_events)
            and any(e.name == "after.txt" for e in user_events)
        ):
            root_events += as_root.get_new_events()
            user_events += as_user.get_new_events()
            time.sleep(0.05)
        assert any(e.name == "hidden/in.txt" for e in root_events)
        assert any(e.name == "after.txt" for e in user_events)
        assert any(e.name == "hidden" and e.type == FilesystemEventType.CREATE for e in user_events)
        assert not [e for e in user_events if e.name.startswith("hidden/")]
    finally:
        as_user.stop()
        as_root.stop()
