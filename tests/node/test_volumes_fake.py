"""The node's volume calls with real volume disks (a sparse ext4 each, loop-mounted, as root)
and the fake runtime: what a sandbox mounts stays mounted and cannot be deleted; content calls
mount on demand; uploads in chunks appear whole; the node unmounts idle volumes when it stops.
The gVisor tests run the same calls with real sandboxes, embedded and remote."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.host import rootfs
from emberbox.node.client import (
    EmbeddedNode,
    NodeBadRequest,
    NodeError,
    NodeSandboxNotFound,
    NodeUnsupported,
)
from emberbox.node.volumes import service as volume_service
from emberbox.runtimes.base import Capabilities
from emberbox.vocabulary import new_sandbox_id, new_volume_id

from .fake_runtime import FakeRuntime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting volume disks needs root")


class VolumeRuntime(FakeRuntime):
    capabilities = Capabilities(pause=True, volumes=True)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[EmbeddedNode]:
    node = EmbeddedNode(VolumeRuntime(), tmp_path / "node", dead_check_every_s=0,
                        data_dir=tmp_path)  # fmt: skip
    await node.start()
    try:
        yield node
    finally:
        await node.close()
        for mounted in (tmp_path / "volumes").glob("*/data"):
            await rootfs.unmount(mounted)


def _data(tmp_path: Path, volume_id: str) -> Path:
    return tmp_path / "volumes" / volume_id / "data"


async def test_a_sandbox_holds_its_volume(node: EmbeddedNode, tmp_path: Path) -> None:
    vid = new_volume_id()
    await node.create_volume(vid, 16)
    assert (await node.info()).capabilities.volumes
    spec = pb.SandboxSpec(sandbox_id=new_sandbox_id(), template_id="base", cpu_count=1,
                          memory_mb=128, disk_mb=64, access_token="t",
                          volume_mounts=[pb.VolumeMount(volume_id=vid, path="/data")])  # fmt: skip
    await rootfs.unmount(_data(tmp_path, vid))  # as after a reboot: the create mounts it
    await node.create(spec)
    assert rootfs.mounted(_data(tmp_path, vid))
    with pytest.raises(NodeError) as busy:
        await node.delete_volume(vid)
    assert busy.value.code == "failed_precondition"
    await node.kill(spec.sandbox_id)
    await node.delete_volume(vid)
    assert not (tmp_path / "volumes" / vid).exists()
    with pytest.raises(NodeSandboxNotFound):  # NOT_FOUND
        await node.volume_stat(vid, "/")


async def test_content_calls_and_chunked_writes(node: EmbeddedNode, tmp_path: Path) -> None:
    vid = new_volume_id()
    await node.create_volume(vid, 16)
    await rootfs.unmount(_data(tmp_path, vid))
    made = await node.volume_make_dir(pb.VolumeChangeRequest(
        volume_id=vid, path="/a/b", parents=True, owner=pb.VolumeOwner(mode=0o750)))  # fmt: skip
    assert (made.type, made.path, made.mode) == ("directory", "/a/b", 0o750)
    assert rootfs.mounted(_data(tmp_path, vid)), "a content call mounts the volume"
    with pytest.raises(NodeBadRequest):
        await node.volume_stat(vid, "/../etc")
    with pytest.raises(NodeError) as exists:
        await node.volume_make_dir(pb.VolumeChangeRequest(volume_id=vid, path="/a"))
    assert exists.value.code == "already_exists"
    with pytest.raises(NodeBadRequest, match="depth"):
        await node.volume_list(vid, "/", 0)

    write = pb.VolumeWriteRequest(volume_id=vid, path="/a/b/f", write_id="w1", data=b"hello ")
    assert not (await node.volume_write(write)).HasField("entry")
    assert not (_data(tmp_path, vid) / "a/b/f").exists(), "nothing visible before the end"
    write.offset, write.data, write.last = 6, b"world", True
    done = (await node.volume_write(write)).entry
    assert (done.size, done.uid) == (11, 1000)
    # A read keeps the file it opened: a replacement meanwhile is not mixed in.
    read = pb.VolumeReadRequest(volume_id=vid, path="/a/b/f", read_id="r1", length=6)
    assert (await node.volume_read(read)).data == b"hello "
    replace = pb.VolumeWriteRequest(volume_id=vid, path="/a/b/f", write_id="w9",
                                    data=b"HELLO WORLD!", last=True)  # fmt: skip
    await node.volume_write(replace)
    read.offset = 6
    rest = await node.volume_read(read)
    assert (rest.data, rest.size) == (b"world", 11)
    with pytest.raises(NodeBadRequest, match="not open"):  # it ended with the file's end
        await node.volume_read(read)
    read.read_id, read.offset = "r2", 0
    assert (await node.volume_read(read)).data == b"HELLO "
    with pytest.raises(NodeError) as busy:
        await node.delete_volume(vid)  # an open read holds the volume
    assert busy.value.code == "failed_precondition"
    read.done = True
    await node.volume_read(read)

    late = pb.VolumeWriteRequest(volume_id=vid, path="/x", write_id="w2", offset=5, data=b"x")
    with pytest.raises(NodeBadRequest, match="not open"):
        await node.volume_write(late)
    first = pb.VolumeWriteRequest(volume_id=vid, path="/x", write_id="w3", data=b"abc")
    await node.volume_write(first)
    first.offset = 99
    with pytest.raises(NodeBadRequest, match="out of order"):
        await node.volume_write(first)
    abort = pb.VolumeWriteRequest(volume_id=vid, path="/y", write_id="w4", data=b"abc")
    await node.volume_write(abort)
    abort.abort = True
    await node.volume_write(abort)
    names = sorted(e.name for e in await node.volume_list(vid, "/", 3))
    assert names == ["a", "b", "f"], "no temporary left behind by the dropped writes"
    # An open upload holds the volume; its drop frees it.
    held = pb.VolumeWriteRequest(volume_id=vid, path="/z", write_id="w5", data=b"z")
    await node.volume_write(held)
    with pytest.raises(NodeError):
        await node.delete_volume(vid)
    held.abort = True
    await node.volume_write(held)
    await node.delete_volume(vid)

    with pytest.raises(NodeBadRequest):
        await node.volume_stat("../../etc", "/")


async def test_an_upload_aborted_while_its_chunk_fails_frees_the_volume(
    node: EmbeddedNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort while a chunk is being written leaves the closing to that chunk; when the
    chunk then failed, nothing closed the file and the volume stayed held (undeletable)
    until the node restarted."""
    vid = new_volume_id()
    await node.create_volume(vid, 16)
    write = pb.VolumeWriteRequest(volume_id=vid, path="/f", write_id="w1", data=b"abc")
    await node.volume_write(write)
    writing, fail = asyncio.Event(), asyncio.Event()

    async def failing(fn: Callable[..., Any], *args: Any) -> Any:
        writing.set()
        await fail.wait()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(volume_service, "run_in_threadpool", failing)
    write.offset, write.data = 3, b"def"
    chunk = asyncio.create_task(node.volume_write(write))
    await writing.wait()
    await node.volume_write(pb.VolumeWriteRequest(volume_id=vid, path="/f", write_id="w1",
                                                  abort=True))  # fmt: skip
    fail.set()
    with pytest.raises(NodeError):
        await chunk
    monkeypatch.undo()
    await node.delete_volume(vid)  # nothing holds it


async def test_the_node_unmounts_idle_volumes_when_it_stops(tmp_path: Path) -> None:
    runtime = VolumeRuntime()
    node = EmbeddedNode(runtime, tmp_path / "node", dead_check_every_s=0, data_dir=tmp_path)
    await node.start()
    idle, used = new_volume_id(), new_volume_id()
    for vid in (idle, used):
        await node.create_volume(vid, 16)
    spec = pb.SandboxSpec(sandbox_id=new_sandbox_id(), template_id="base", cpu_count=1,
                          memory_mb=128, disk_mb=64, access_token="t",
                          volume_mounts=[pb.VolumeMount(volume_id=used, path="/v")])  # fmt: skip
    await node.create(spec)
    await node.close()
    try:
        assert not rootfs.mounted(_data(tmp_path, idle))
        assert rootfs.mounted(_data(tmp_path, used)), "a live sandbox keeps its volume"
    finally:
        await runtime.kill(spec.sandbox_id)
        await rootfs.unmount(_data(tmp_path, used))


async def test_a_runtime_without_volumes_refuses_them(tmp_path: Path) -> None:
    node = EmbeddedNode(FakeRuntime(), tmp_path / "node", dead_check_every_s=0, data_dir=tmp_path)
    await node.start()
    try:
        assert not (await node.info()).capabilities.volumes
        with pytest.raises(NodeUnsupported, match="gVisor"):
            await node.create_volume(new_volume_id(), 16)
    finally:
        await node.close()
