"""The files API's permission rule inside a real gVisor sandbox, through the official SDK.

gVisor has its own kernel: it must honour the per-thread credential switch envd relies on
(it has no ``setfsuid``), and its procfs must stream whole. Uses the runtime suite's
``make_sandbox`` (a ``base`` sandbox with envd handed its identity); skipped without root/runsc.
"""

from __future__ import annotations

import asyncio

import pytest
from e2b import AsyncSandbox, SandboxException
from e2b.exceptions import InvalidArgumentException

from tests.runtimes.conftest import (  # noqa: F401  (fixtures)
    SandboxFactory,
    base_template,
    gvisor_config,
    make_sandbox,
    runtime,
)


async def _denied(call: object) -> None:
    with pytest.raises(SandboxException) as caught:
        await call  # type: ignore[misc]
    assert type(caught.value) is SandboxException, repr(caught.value)
    assert "permission denied" in str(caught.value)


async def test_files_as_user_have_the_users_permissions_in_gvisor(
    make_sandbox: SandboxFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = await make_sandbox()
    monkeypatch.setenv("E2B_DEBUG", "true")  # no control plane: the SDK talks to envd directly
    monkeypatch.setenv("E2B_SANDBOX_URL", sandbox.envd_url)
    sbx = await AsyncSandbox.create()
    files = sbx.files

    await _denied(files.read("/etc/shadow"))
    assert (await files.read("/etc/shadow", user="root")).startswith("root:")
    await _denied(files.write("/root/probe.txt", "x"))
    await _denied(files.write("/etc/probe.txt", "x"))
    await _denied(files.list("/root"))
    await _denied(files.make_dir("/root/probe-dir"))
    probe = await sbx.commands.run(
        "test ! -e /root/probe.txt && test ! -e /etc/probe.txt && test ! -e /root/probe-dir",
        user="root",
    )
    assert probe.exit_code == 0

    await files.write("/home/user/mine/file.txt", "mine")
    for path in ("/home/user/mine", "/home/user/mine/file.txt"):
        info = await files.get_info(path)
        assert (info.owner, info.group) == ("user", "user"), path
    await sbx.commands.run("ln -s /etc/shadow /home/user/shadow-link")
    await _denied(files.read("/home/user/shadow-link"))

    async def attempt(user: str) -> str:
        try:
            return (await files.read("/etc/shadow", user=user))[:5]
        except SandboxException as exc:
            return "denied" if "permission denied" in str(exc) else repr(exc)

    users = ["root", "user"] * 20
    results = await asyncio.gather(*(attempt(u) for u in users))
    assert results == ["root:" if u == "root" else "denied" for u in users]

    status = await files.read("/proc/self/status")
    assert status.startswith("Name:") and "\nUid:" in status
    assert "processor" in await files.read("/proc/cpuinfo")

    # Remove('//') as root passed the check for '/' (normpath keeps two slashes) and ran
    # rmtree('//'). Checked here, in gVisor: against an envd on the host, a regression would
    # remove the host's files (it did, once: /etc).
    for root in ("/", "//", "///", "/./", "//.."):
        with pytest.raises(InvalidArgumentException):
            await files.remove(root, user="root")
    assert (await sbx.commands.run("ls /etc/passwd", user="root")).stdout == "/etc/passwd\n"
