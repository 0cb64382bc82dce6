"""Templates from OCI images and Dockerfiles, with the official e2b SDK, built by a real server
in gVisor from images in a local registry (public and behind a login) that these tests make.

A sandbox of an image template has our conventions on top (user ``user``, envd, sudo), so the
SDK's commands and filesystem calls work; image layers are shared between images in the store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import AsyncSandbox, AsyncTemplate, BuildException, LogEntry, Sandbox, Template

from emberbox.server.testing import ServerProcess
from tests.api.oci_support import build_image, local_registry, push, require_oci_tools, tiny_rootfs
from tests.runtimes.gvisor_support import gvisor_server

pytestmark = pytest.mark.timeout(900)
LOGIN = ("alice", "s3cret-pw")


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    require_oci_tools()
    work = tmp_path_factory.mktemp("oci")
    with (
        local_registry(work / "open") as public,
        local_registry(work / "private", LOGIN) as private,
    ):
        rootfs = tiny_rootfs(work / "rootfs")
        base = build_image(work / "one", rootfs, {"etc/image-marker": "from the image\n",
                           "etc/to-delete": "deleted by a whiteout\n"},
                           env=["IMAGE_ENV=from-image"], whiteouts=["/etc/to-delete"])  # fmt: skip
        push(base, f"{public}/tiny:1")
        push(base, f"{private}/secret:1", LOGIN)
        other = build_image(work / "two", rootfs, {"etc/image-marker": "second image\n"})
        push(other, f"{public}/tiny:2")
        yield public, private


@pytest.fixture(scope="module")
def server(
    registries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {
        "EMBERBOX_INSECURE_REGISTRIES": ",".join(registries),
        "EMBERBOX_MAX_QUEUED_BUILDS": "1",  # see test_the_build_queue_is_bounded
    }
    with gvisor_server(tmp_path_factory.mktemp("oci-server"), env) as srv:
        yield srv


@pytest.fixture
def key(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    assert server.first_key
    for k, v in server.sdk_env(server.first_key).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return server.first_key


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_from_image_then_cached(registries: tuple[str, str], key: str, tmp_path: Path) -> None:
    public, _ = registries
    name = _name("img")
    (tmp_path / "data.txt").write_text("copied in\n")
    template = (
        Template(file_context_path=str(tmp_path))
        .from_image(f"{public}/tiny:1")
        .copy("data.txt", "/home/user/data.txt")
        .run_cmd("echo step-as-$(whoami) > /home/user/step")
        .run_cmd("echo root-step > /opt/root-step", user="root")
    )
    logs: list[LogEntry] = []
    Template.build(template, name, on_build_logs=logs.append)
    messages = [e.message for e in logs]
    assert any(m.startswith("pulling image") for m in messages), messages

    with Sandbox.create(name, timeout=120) as sandbox:
        result = sandbox.commands.run("whoami; pwd; cat /etc/image-marker; echo $IMAGE_ENV")
        assert result.stdout == "user\n/home/user\nfrom the image\nfrom-image\n"
        assert sandbox.commands.run("cat data.txt step /opt/root-step").stdout == (
            "copied in\nstep-as-user\nroot-step\n"
        )
        assert sandbox.commands.run("sudo id -u").stdout == "0\n"
        assert not sandbox.files.exists("/etc/to-delete")  # the image's whiteout applies
        sandbox.files.write("/home/user/notes/a.txt", "written by the SDK")
        assert sandbox.files.read("/home/user/notes/a.txt") == "written by the SDK"
        assert [e.name for e in sandbox.files.list("/home/user/notes")] == ["a.txt"]

    logs.clear()
    Template.build(template, name, on_build_logs=logs.append)
    messages = [e.message for e in logs]
    assert any("layers cached" in m for m in messages), messages
    assert not any(m.startswith("unpacking layer") for m in messages)

    # A second image sharing the rootfs layer: only its own layer is unpacked.
    logs.clear()
    Template.build(Template().from_image(f"{public}/tiny:2"), _name("img2"),
                   on_build_logs=logs.append)  # fmt: skip
    unpacked = [e.message for e in logs if e.message.startswith("unpacking layer")]
    assert len(unpacked) == 1, unpacked


def test_private_registry_needs_its_login(registries: tuple[str, str], key: str) -> None:
    _, private = registries
    name = _name("private")
    with pytest.raises(BuildException) as refused:
        Template.build(Template().from_image(f"{private}/secret:1"), name)
    assert "unauthorized" in str(refused.value) or "authentication" in str(refused.value)
    with pytest.raises(BuildException):
        Template.build(
            Template().from_image(f"{private}/secret:1", username="alice", password="wrong"), name
        )
    Template.build(
        Template().from_image(f"{private}/secret:1", username=LOGIN[0], password=LOGIN[1])
        .run_cmd("cat /etc/image-marker > /home/user/seen"),
        name,
    )  # fmt: skip
    with Sandbox.create(name, timeout=60) as sandbox:
        assert sandbox.commands.run("cat seen").stdout == "from the image\n"


def test_from_dockerfile_async(registries: tuple[str, str], key: str, tmp_path: Path) -> None:
    public, _ = registries
    name = _name("dockerfile")
    (tmp_path / "app.sh").write_text("#!/bin/sh\necho app ran\n")
    dockerfile = (
        f"FROM {public}/tiny:1\n"
        "ENV APP_MODE=docker\n"
        "RUN mkdir -p /app && echo built-as-$(whoami) > /app/built\n"
        "COPY app.sh /app/app.sh\n"
        "RUN chmod 755 /app/app.sh\n"
        "WORKDIR /app\n"
    )

    async def run() -> str:
        template = AsyncTemplate(file_context_path=str(tmp_path)).from_dockerfile(dockerfile)
        await AsyncTemplate.build(template, name)
        sandbox = await AsyncSandbox.create(name, timeout=60)
        try:
            out = await sandbox.commands.run("cat /app/built; /app/app.sh; echo $APP_MODE; whoami")
            return out.stdout
        finally:
            await sandbox.kill()

    # The SDK's Dockerfile rules: steps run as root in /, the sandbox is user's in /home/user.
    assert asyncio.run(run()) == "built-as-root\napp ran\ndocker\nuser\n"


def test_unsupported_registries_are_refused(key: str) -> None:
    with pytest.raises(BuildException) as refused:
        Template.build(
            Template().from_aws_registry("1.dkr.ecr.x.amazonaws.com/a:1", "id", "secret", "x"),
            _name("aws"),
        )
    assert "not supported" in str(refused.value)


def test_the_build_queue_is_bounded(server: ServerProcess, key: str) -> None:
    """One build queued or running at most here: a second start is refused with 429 (and
    changes nothing) until the first has finished."""
    first = Template.build_in_background(
        Template().from_base_image().run_cmd(f"sleep 3 # {uuid.uuid4().hex}"), _name("slow")
    )
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": key})
    second = api.post("/v3/templates", json={"name": _name("second")}).json()
    start = f"/v2/templates/{second['templateID']}/builds/{second['buildID']}"
    body = {"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["true"]}]}
    refused = api.post(start, json=body)
    assert (
        refused.status_code == 429 and "builds are queued or running" in refused.json()["message"]
    )
    assert refused.headers["Should-Retry"] == "false"
    deadline = time.monotonic() + 120
    while Template.get_build_status(first).status.value not in ("ready", "error"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert Template.get_build_status(first).status.value == "ready"
    assert api.post(start, json=body).status_code == 202
